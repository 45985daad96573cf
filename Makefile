# Two commands for a fresh machine: `make demo` (the main job on a small default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared
BIN := $(VENV)/bin
export CSEKIT_DATA ?= $(SHARED)/data/senteval/downstream

.PHONY: install demo test lint
install: $(VENV)/.installed

# torch first, pinned: its CPU wheel is on local disk here, and a bare `torch` would pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(BIN)/csekit train recipes/simcse-cpu.yaml --compare-sts

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/python -m pip install -q -e ".[lint]"
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports  # the layer and no-cycle contracts of pyproject.toml
