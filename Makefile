# Two entry points, both from a fresh clone: `make bench` and `make test`. Each creates the pinned
# virtual environment in .venv, builds the C++ extension in place, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test bench build clean

$(STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace

test: build
	$(PY) -m pytest -q -n 2 tests

bench: build
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf build crm_kernels/*.so $(VENV)
