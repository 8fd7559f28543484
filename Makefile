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

.PHONY: setup system-deps demo test bench bench-quick runtime runtime-install runtime-sanitize clean

setup: system-deps $(STAMP)

# Native dependencies of the Python-free runtime (csrc/runtime): nlohmann-json (header only),
# OpenSSL's libcrypto (sha256) and pkg-config (its tests build a consumer). Installed with apt
# when missing (CI runs as root on Debian); elsewhere install them with your package manager.
system-deps:
	@test -f /usr/include/nlohmann/json.hpp && test -f /usr/include/openssl/evp.h && \
	    command -v pkg-config >/dev/null || \
	    (apt-get update && apt-get install -y nlohmann-json3-dev libssl-dev pkg-config)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) numpy scipy tqdm "safetensors>=0.4" matplotlib \
	    "pybind11>=2.11" cmake setuptools wheel pytest pytest-benchmark "hypothesis>=6"
	$(PY) -m pip install -q --no-build-isolation -e '.[dev,bench,sweep]'
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

# The runtime alone, no Python needed: liblth_ticket, lth-sparse-run, examples/classify_mnist.
RUNTIME_BUILD ?= build/runtime
PREFIX ?= /usr/local
runtime: system-deps
	cmake -S . -B $(RUNTIME_BUILD) -DLTH_SPARSE_PYTHON=OFF -DLTH_SPARSE_RUNTIME=ON \
	    -DCMAKE_BUILD_TYPE=Release
	cmake --build $(RUNTIME_BUILD) --parallel 2

runtime-install: runtime
	cmake --install $(RUNTIME_BUILD) --prefix $(PREFIX)

# ASan + UBSan debug build of the runtime running the bad-ticket corpus (minutes on 2 cores).
runtime-sanitize: setup
	LTH_SPARSE_RUNTIME_SANITIZE=1 $(PY) -m pytest -q tests/test_runtime.py -k sanitizers

clean:
	rm -rf build *.egg-info lth_sparse/_C*.so $(STAMP)
