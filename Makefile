# A newcomer's two commands: `make demo` and `make test`. Each installs what it needs in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/harvester demo
	$(BIN)/harvester report output/demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 -m "not timing"
	$(BIN)/python -m pytest -q -m timing

lint: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check harvester tests
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run.py $(ARGS)
	$(BIN)/python benchmarks/nights.py
	$(BIN)/python benchmarks/hostile_memory.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
