# CloudNexus Keys: the commands a developer and CI use. `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
# The stamp is newer than pyproject.toml only after a successful install, so a dependency change
# (or a failed install) makes the next target reinstall.
STAMP := $(VENV)/.installed
PYTEST := $(VENV)/bin/pytest
PYTEST_ARGS ?=

.PHONY: help up test test-unit test-integration test-e2e test-faults test-fuzz lint bench clean

help: ## list the targets
	@echo "CloudNexus Keys — make targets:"
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

.venv: $(STAMP) ## create .venv and install the project with its dev tools (again when pyproject.toml changes)

$(STAMP): pyproject.toml setup.py services/validator/_fastpath.c
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

up: $(STAMP) ## run NATS, the four services, the demo API and a mail sink locally (state in .data/)
	$(VENV)/bin/cnx-keys up

test: $(STAMP) ## the whole suite, as CI runs it
	@$(PYTEST) -q tests $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); that is a failure" >&2; fi; \
	exit $$rc

# The tiers alone; an empty tier (pytest exit 5) is not an error here, only in `make test`.
test-unit: $(STAMP) ## pure functions and use cases, fakes only
	@$(PYTEST) -q tests/unit $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-integration: $(STAMP) ## a real nats-server, SQLite and PostgreSQL
	@$(PYTEST) -q tests/integration $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-e2e: $(STAMP) ## the services as processes, driven over HTTP
	@$(PYTEST) -q tests/e2e $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-faults: $(STAMP) ## kill, restart and cut off services and NATS (the 3-node cluster case too)
	@CNX_FAULTS_FULL=1 $(PYTEST) -q tests/faults $(PYTEST_ARGS) || [ $$? -eq 5 ]

# FUZZ_ARGS: e.g. `--examples 1000 --seed 42`; JUnit reports land in .data/fuzz/.
test-fuzz: $(STAMP) ## schemathesis against the issuer's and the validator's OpenAPI documents, on a real stack
	$(VENV)/bin/python -m tests.fuzz $(FUZZ_ARGS)

# mypy reads what to check and how strictly from pyproject.toml ([tool.mypy]); its cache is .mypy_cache.
lint: $(STAMP) ## ruff check, ruff format --check and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP) ## benchmarks: one table, benchmarks/results.json (BENCH_ARGS=--quick for a short run)
	@command -v wrk >/dev/null || { echo "installing wrk (Debian) for the HTTP figure"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	@command -v gcc >/dev/null || { echo "installing gcc (Debian) for the NATS load generator"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc; }
	$(VENV)/bin/python -m benchmarks $(BENCH_ARGS)

clean: ## remove .data/ (keys, NATS data, mail) and .venv/
	rm -rf .data $(VENV) .pytest_cache .ruff_cache .mypy_cache
