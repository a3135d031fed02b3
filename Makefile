# Two commands for a newcomer: `make demo` runs the product, `make test` runs the suite.
# Both need only Python 3.11+; PostgreSQL and Redis are embedded unless DATABASE_URL / REDIS_URL
# are set.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
ENGINES ?= 3
# Parallel test workers; each gets its own test database and Redis database.
TEST_WORKERS ?= 2
# The suite's embedded servers live apart from the demo's (own folder, own ports), so
# `make test` can run while `make demo` is up.
TEST_DATA_DIR ?= $(CURDIR)/.data/test
TEST_PG_PORT ?= 54339
TEST_REDIS_PORT ?= 63809

.PHONY: demo test lint format install lock clean-data help secrets

help:
	@echo "make demo   run the control plane with 3 simulated engines (http://localhost:$(PORT)/)"
	@echo "make test   run the whole test suite"
	@echo "make lint   ruff check + format check + the layers' import contracts"
	@echo "make secrets  random secrets into ./secrets/ for docker compose (docs/operations.md)"

# Every package from the lockfile, each checked against its hashes; then the SDK (on no index) and
# the control plane themselves, editable, with nothing more (--no-deps): the lock holds it all.
$(BIN)/.installed: pyproject.toml engine_sdk/pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; found " + sys.version.split()[0])'
	@echo "==> Environment: a virtual environment in $(VENV) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	@echo "==> Packages: installing the control plane and the SDK (the first time takes a few minutes)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e ./engine_sdk -e '.[embedded,dev]'
	@touch $@

# The real trading frameworks the adapter tests drive (NautilusTrader, Freqtrade) live in a virtual
# environment of their own, beside the SDK only: as an engine developer installs them, with no
# Django, and without their pins moving the control plane's.
ENGINES_VENV := .venv-engines
$(ENGINES_VENV)/.installed: engine_sdk/pyproject.toml tests/engines/requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; found " + sys.version.split()[0])'
	@echo "==> Packages: NautilusTrader and Freqtrade for the adapter tests, in $(ENGINES_VENV)"
	$(PYTHON) -m venv $(ENGINES_VENV)
	$(ENGINES_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ENGINES_VENV)/bin/python -m pip install --quiet --require-hashes -r tests/engines/requirements.lock
	$(ENGINES_VENV)/bin/python -m pip install --quiet --no-deps -e ./engine_sdk
	@touch $@

install: $(BIN)/.installed $(ENGINES_VENV)/.installed

demo: $(BIN)/.installed
	CONTROLPLANE_ENV=$${CONTROLPLANE_ENV:-demo} $(BIN)/python manage.py up --demo --port $(PORT) --engines $(ENGINES)

test: $(BIN)/.installed $(ENGINES_VENV)/.installed
	@# The browser tests need Chromium: stop here, with one line saying what to install, rather
	@# than fail a score of them after minutes.
	@$(BIN)/python -m controlplane.chromium >/dev/null
	CONTROLPLANE_ENV=test CONTROLPLANE_DATA_DIR=$(TEST_DATA_DIR) EMBEDDED_PG_PORT=$(TEST_PG_PORT) \
	EMBEDDED_REDIS_PORT=$(TEST_REDIS_PORT) $(BIN)/python -m controlplane.config.embedded run -- \
		$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# After a change of a pyproject.toml or tests/engines/requirements.txt: every transitive
# dependency pinned with its hashes (requirements/lock.py).
lock: $(BIN)/.installed
	$(BIN)/python requirements/lock.py

# The files docker-compose.yml reads its secrets from; existing ones are kept.
secrets:
	$(PYTHON) deploy/make_secrets.py

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean-data:
	$(BIN)/python -m controlplane.config.embedded stop
	rm -rf .data
