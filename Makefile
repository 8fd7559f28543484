# `make demo` and `make test` set everything up on a fresh machine (venv, deps, C++ build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the newest release these machines allow; override for other platforms.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Offline copy of MNIST beside the checkout (CI and tests); elsewhere MNIST is downloaded.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/MNIST/raw),)
export LTH_SPARSE_DATA ?= $(SHARED_DATA)
endif
export PATH := $(abspath $(VENV))/bin:$(PATH)
PYTEST_ARGS ?= -q
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h)

.PHONY: setup demo test bench bench-quick clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) numpy scipy tqdm "safetensors>=0.4" matplotlib \
	    "pybind11>=2.11" cmake setuptools wheel pytest pytest-benchmark "hypothesis>=6"
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	$(PY) -c "import lth_sparse; print('lth_sparse', lth_sparse.__version__, lth_sparse.build_info())"
	touch $@

demo: setup
	$(VENV)/bin/lth-sparse demo

# pytest's exit code 5 means it collected nothing: an empty suite is a failure, not a pass.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite must never be empty"; exit 1; fi; \
	exit $$rc

# The CPU grid (about 10 minutes on 2 cores): run it on an otherwise idle machine.
bench: setup
	$(VENV)/bin/lth-sparse bench --threads 2

bench-quick: setup
	$(VENV)/bin/lth-sparse bench --quick --out-dir /tmp/lth_sparse_bench_quick

clean:
	rm -rf build *.egg-info lth_sparse/_C*.so $(STAMP)
