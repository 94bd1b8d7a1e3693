# Quick start: `make demo`, then `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# No pip cache: torch with its CUDA libraries is ~5.7 GB in .venv; a cached copy would double that.
PIP_INSTALL := $(PY) -m pip install -q --no-cache-dir

.PHONY: venv test demo bench clean

$(VENV)/.installed: requirements.txt
	@free_mb=$$(df -Pm . | awk 'NR==2 {print $$4}'); if [ "$$free_mb" -lt 6500 ]; then \
		echo "warning: $$free_mb MB free in $(CURDIR); .venv needs about 6 GB (torch with CUDA libraries)" >&2; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

# Synthetic NYUv2 + Adience + Phototriage in the official formats, stage 1 and 2 for both task families
# and a series photo selection run on CPU,
# evaluation against the majority-class baseline, TensorBoard runs and PNG plots under demo/.
demo: venv
	$(PY) tools/demo.py --out demo

# Training-step and input-pipeline speed on this machine (python bench.py --help for more).
bench: venv
	$(PY) bench.py --modes fp32 bf16+cl --pipeline

clean:
	rm -rf $(VENV) demo runs
