# `make demo` and `make test` work on a fresh machine: each creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU torch wheel is named in every pip call so that no dependency pulls a CUDA build.
TORCH ?= torch==2.13.0+cpu
PIP := $(BIN)/python -m pip install -qq --disable-pip-version-check

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(PIP) "$(TORCH)" -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) "$(TORCH)" -e ".[test,plots]"
	touch $@

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m hf_fnl.demo

# pytest exits 5 when it collects nothing: an empty suite is a failure, and said so
test: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests || { rc=$$?; \
	  [ $$rc -ne 5 ] || echo "make test: pytest collected no tests (exit 5); the test suite is missing" >&2; exit $$rc; }

bench: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/patch_speed.py --out benchmarks/results/patch_speed_cpu.json

clean:
	rm -rf $(VENV) *.egg-info
