# Quick start: `make demo`, then `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# No pip cache: torch with its CUDA libraries is ~5.7 GB in .venv; a cached copy would double that.
PIP_INSTALL := $(PY) -m pip install -q --no-cache-dir

.PHONY: venv dev test test-fast lint format demo bench clean

$(VENV)/.installed: requirements.txt
	@free_mb=$$(df -Pm . | awk 'NR==2 {print $$4}'); if [ "$$free_mb" -lt 6500 ]; then \
		echo "warning: $$free_mb MB free in $(CURDIR); .venv needs about 6 GB (torch with CUDA libraries)" >&2; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.installed requirements-dev.txt requirements-solvers.txt
	$(PIP_INSTALL) -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed
dev: $(VENV)/.dev

# The whole suite (CPU, no network): what CI runs, on two worker processes (pytest-xdist).
test: dev
	$(PY) -m pytest -q -n 2

# The edit loop: everything but the tests that start scripts in subprocesses or several processes.
test-fast: dev
	$(PY) -m pytest -q -n 2 -m "not slow"

lint: dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: dev
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Synthetic NYUv2 + Adience + Phototriage in the official formats; reproduce.py's protocol at toy scale on
# CPU (every method of every family), evaluation against the majority-class baseline, TensorBoard runs and
# plots under demo/ (docs/reproducing.md).
demo: venv
	$(PY) tools/demo.py --out demo

# Training-step and input-pipeline speed on this machine (docs/speed.md; python bench.py --help for more).
bench: venv
	$(PY) bench.py --batch-size 8 2 --modes fp32 bf16+cl --pipeline

clean:
	rm -rf $(VENV) demo runs
