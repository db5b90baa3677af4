# Two entry points, both from a fresh clone: `make bench` and `make test`. Each creates the pinned
# virtual environment in .venv, builds the C++ extension in place, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test bench build docs asan gpu-check clean

$(STAMP): requirements-dev.txt requirements-trainers.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-trainers.txt
	touch $(STAMP)

# The package is installed in .venv in editable mode (so `import crm_kernels` works from any
# folder); build_ext --inplace then recompiles only what changed.
EDITABLE := $(VENV)/.editable
$(EDITABLE): $(STAMP) setup.py pyproject.toml
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(EDITABLE)

build: $(EDITABLE)
	$(PY) setup.py --quiet build_ext --inplace

# The documentation site (mkdocs.yml) into site/; strict: any warning fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --quiet --strict

# The docs build comes first: it is part of what the test command checks.
# The slow-marked tests (TRL GRPOTrainer end to end, 2-process DDP) run after the rest, one at a
# time: they start processes and threads of their own.
test: build docs
	$(PY) -m pytest -q -n 2 --dist loadgroup tests
	$(PY) -m pytest -q -m slow tests

# Results go to bench_out/ (untracked); BENCH_ARGS=--save writes benchmarks/results/ and the
# README's tables instead, for a run meant to be published.
bench: build
	$(PY) -m benchmarks.run $(BENCH_ARGS)
	$(PY) -m benchmarks.rl $(filter --save,$(BENCH_ARGS))

# Everything that needs a GPU, for the day one is here (a CUDA GPU, a CUDA build of torch: PyPI's
# torch==2.13.0 on Linux x86-64 is one, nvcc and compute-sanitizer on PATH): the CUDA build,
# pytest -m gpu, compute-sanitizer memcheck over the CUDA tests, make bench BENCH_ARGS="--full --save".
# One JSON: benchmarks/results/gpu_check_<device>.json.
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check

# The CPU kernels under AddressSanitizer, fed invalid input with validation off (SPEC 5: no
# out-of-bounds access whatever the input). Builds a sanitized copy in build/asan.
asan: $(STAMP)
	rm -rf build/asan && mkdir -p build/asan
	cp -r crm_kernels csrc setup.py pyproject.toml README.md LICENSE build/asan/
	find build/asan/crm_kernels -name '*.so' -delete
	cd build/asan && CRM_KERNELS_SANITIZE=address CRM_KERNELS_NO_CUDA=1 $(abspath $(PY)) setup.py --quiet build_ext --inplace
	cd build/asan && PYTHONPATH=. LD_PRELOAD=$$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		$(abspath $(PY)) $(abspath tests/sanitize/fuzz_out_of_bounds.py)

clean:
	rm -rf build site bench_out crm_kernels/*.so $(VENV)
