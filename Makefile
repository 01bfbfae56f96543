# perp-keeper: the README's commands. `make demo` and `make test` do all set-up themselves.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin

.PHONY: setup tools toolchain demo devnet test lint typecheck unit chain bench clean

setup: $(VENV)/.installed toolchain

# node and npm fetch anvil and the contract artifacts from the npm registry; the tests start a
# throwaway PostgreSQL server (the replicas' shared state), the distribution's.
tools:
	@command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing nodejs and npm with apt-get" >&2; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else \
	    echo "perp-keeper needs node and npm: install Node.js (e.g. sudo apt-get install nodejs npm)" >&2; exit 2; \
	  fi; }
	@# promtool checks the Prometheus alerting rules and the dashboard's queries (tests/test_docker.py)
	@command -v promtool >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing promtool (Debian package prometheus) with apt-get" >&2; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "the monitoring checks need promtool (e.g. sudo apt-get install prometheus)" >&2; exit 2; \
	  fi; }
	@# the PostgreSQL server the store tests start on loopback (tests/pg.py)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing the PostgreSQL server with apt-get" >&2; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "the tests need a PostgreSQL server: install it (e.g. sudo apt-get install postgresql)" >&2; exit 2; \
	  fi; }

$(VENV)/.installed: requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

toolchain: tools $(VENV)/.installed
	$(BIN)/python -m devnet.toolchain

# The embedded default: the real Perp v2 contracts on a local devnet with every kind of account,
# liquidated by the keeper. `perp-keeper demo --dry-run` is the auditors' variant.
demo: setup
	$(BIN)/perp-keeper demo

# The same devnet, left running for a keeper (or you) to use; Ctrl-C stops it.
devnet: setup
	$(BIN)/perp-keeper devnet up --scenario all-kinds

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/pytest

unit: setup
	$(BIN)/pytest -m "not chain"

chain: setup
	$(BIN)/pytest -m chain

bench: setup
	$(BIN)/python bench/devnet_startup.py
	$(BIN)/python bench/scan.py --accounts 10000 --rtt-ms 20
	$(BIN)/python bench/crash.py --accounts 50

clean:
	rm -rf $(VENV) .cache state .mypy_cache .ruff_cache .pytest_cache
