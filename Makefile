# Quick start: `make demo`, then `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install -q

.PHONY: venv test demo bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

# Synthetic NYUv2 + Adience in the official formats, stage 1 and 2 for both task families on CPU,
# evaluation against the majority-class baseline, TensorBoard runs and PNG plots under demo/.
demo: venv
	$(PY) tools/demo.py --out demo

# Training-step and input-pipeline speed on this machine (python bench.py --help for more).
bench: venv
	$(PY) bench.py --modes fp32 bf16+cl --pipeline

clean:
	rm -rf $(VENV) demo runs
