# Developer and CI entry points. `make test` is the project's test command
# (README); .ci/run calls it on a fresh machine.
#
#   make venv         create .venv and install the package + dev tools
#   make up / down    start / stop the local Kafka, Redis, Prometheus, Alertmanager
#   make status       show which stack services are up
#   make lint         ruff (lint rules and formatting)
#   make typecheck    mypy (strict, configured in pyproject.toml)
#   make test         venv + stack up + lint + typecheck + pytest (leaves the stack
#                     running for the next run; .ci/run takes it down)
#   make demo         the end-to-end demo (`detector demo`)
#   make bench-smoke  a quick benchmark run (~2 min; bench/README.md)
#   make bench        the full benchmark, writes bench/results/perf.json

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV  := .venv
PY    := $(VENV)/bin/python
STACK := deploy/local/stack.sh
# Reinstall only when the dependency list changes; the editable install picks
# up source changes by itself.
STAMP := $(VENV)/.installed

.PHONY: help venv up down status lint typecheck test demo bench-smoke bench

help:
	@sed -n '4,16s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

up: venv
	$(STACK) up

down:
	$(STACK) down

status:
	$(STACK) status

lint: venv
	$(VENV)/bin/ruff check detector tests bench
	$(VENV)/bin/ruff format --check detector tests bench

typecheck: venv
	$(VENV)/bin/mypy

# Prerequisites run left to right (no -j in CI): cheap checks fail fast
# before the long pytest run.
test: venv up lint typecheck
	$(VENV)/bin/pytest

demo: venv
	$(VENV)/bin/detector demo

bench-smoke: venv
	$(PY) -m bench.run --smoke

bench: venv
	$(PY) -m bench.run
