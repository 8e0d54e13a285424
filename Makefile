.DEFAULT_GOAL := all
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONDONTWRITEBYTECODE := 1
SOURCES := orchestrator tests $(wildcard benchmarks)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install
install: $(VENV)/.installed

.PHONY: format
format: install
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

.PHONY: lint
lint: install
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

.PHONY: mypy
mypy: install
	$(BIN)/mypy

.PHONY: pytest
pytest: install
	$(BIN)/pytest -n 2

.PHONY: test
test: lint mypy pytest

.PHONY: demo
demo: install
	$(BIN)/cgc-rerun demo

.PHONY: bench
bench: install
	$(BIN)/python -m benchmarks.run

.PHONY: all
all: test

.PHONY: clean
clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist
