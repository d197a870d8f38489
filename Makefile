# `make demo` brings up the demo plant; `make test` runs the whole test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast install services database clean

$(STAMP): requirements/base.txt requirements/dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	@touch $(STAMP)

install: $(STAMP)

services:
	@bash scripts/services.sh

database: install services
	$(BIN)/python manage.py ensure_database
	$(BIN)/python manage.py migrate_schemas
	$(BIN)/python manage.py setup_platform --domain localhost

demo: database
	@mkdir -p var
	$(BIN)/python manage.py setup_demo
	@echo "Starting simulator, web server, worker and beat; press Ctrl-C to stop them all."
	@echo "Open http://demo.localhost:8000/ and log in as admin with the password above."
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho --procfile Procfile.demo start

test: install services
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) var .pytest_cache
