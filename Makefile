# Two commands on a fresh machine: `make run` (the demo) and `make test` (everything).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test lint fmt bench check-policies clean deps

run: deps
	$(BIN)/gatehouse demo

test: deps lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench deploy/examples
	$(BIN)/ruff format --check proxy tests bench deploy/examples
	$(BIN)/mypy --strict

fmt: $(STAMP)
	$(BIN)/ruff format proxy tests bench deploy/examples
	$(BIN)/ruff check --fix proxy tests bench deploy/examples

bench: deps
	$(BIN)/python -m bench

deps: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
