# Two commands on a fresh machine: `make run` (the demo) and `make test` (everything).
# `make run` needs only Python: the demo's packages in the venv. `make test` adds the
# test toolchain (the whole test extra, npm's oidc-provider, system packages).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
STAMP   := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# Airflow (for the example DAG's test) in a virtualenv of its own: it pins much of
# what it depends on, and Gatehouse itself never imports it.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
# Real peers some tests start (redis-server; nginx, caddy and haproxy as
# decision-mode data planes and as make bench's references; chromium for the
# access page) or use (promtool), from the system package manager when missing;
# tests that need one fail, saying so, if it cannot be had.
SYSTEM_PACKAGES := redis-server:redis-server promtool:prometheus nginx:nginx caddy:caddy \
	haproxy:haproxy chromium:chromium

.PHONY: run test lint fmt bench clean deps system-deps

run: $(RUN_STAMP)
	$(BIN)/gatehouse demo

test: deps lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench deploy/examples
	$(BIN)/ruff format --check proxy tests bench deploy/examples
	$(BIN)/mypy --strict
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format proxy tests bench deploy/examples
	$(BIN)/ruff check --fix proxy tests bench deploy/examples

bench: deps
	$(BIN)/python -m bench

deps: $(STAMP) $(NODE_STAMP) $(AIRFLOW_STAMP) system-deps

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${pair%%:*} ] \
	    || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null || echo "could not install:$$missing"; \
	  else echo "missing system packages (install them for the full suite):$$missing"; fi; \
	fi

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo,speed]'
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(RUN_STAMP)

$(AIRFLOW_STAMP): deploy/examples/airflow/requirements.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PY) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r deploy/examples/airflow/requirements.txt
	touch $(AIRFLOW_STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
