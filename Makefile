# avfuse: `make demo` and `make test` are the two commands a newcomer needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the ge2e_lstm weights ship inside this PyPI package (resemblyzer/pretrained.pt);
# installed with --no-deps, never imported
RESEMBLYZER := resemblyzer==0.1.4
DEMO_DIR ?= demo_run

.PHONY: help demo test test-quality install install-dev bench gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)

# the stamp is keyed on pyproject.toml: a second call skips the install
$(VENV)/.stamp-install: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(RESEMBLYZER)
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-install
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.stamp-install  ## create .venv and install avfuse into it

install-dev: $(VENV)/.stamp-dev  ## install with the dev extra (pytest)

demo: install  ## synthesise the toy corpus and run the whole pipeline end to end
	$(BIN)/avfuse demo --out $(DEMO_DIR)

test: install-dev  ## run the test suite (CPU only, no network)
	$(BIN)/python -m pytest -q

test-quality: install-dev  ## the fusion quality gates with their EER table, the masking gate on a second corpus included
	AVFUSE_SLOW_GATES=1 $(BIN)/python -m pytest -q -s tests/fusion/test_quality.py

bench: install  ## run the CPU benchmarks (see docs/BENCHMARKS.md); benchmarks/*_speed.py, decode_floor.py and extract_*.py
	for b in benchmarks/*_speed.py benchmarks/decode_floor.py benchmarks/extract_*.py; do $(BIN)/python $$b || exit 1; done

gpu-check: install  ## the prepared GPU check (docs/gpu-check.md); without CUDA its dry mode on the CPU
	$(BIN)/python benchmarks/gpu_check.py --out bench_out/gpu_check

clean:  ## remove the venv and demo outputs
	rm -rf $(VENV) $(DEMO_DIR)
