# Two commands do everything on a fresh machine with python3 and make: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed

# Settings from .env (see .env.example), exported to every command below.
ifneq (,$(wildcard .env))
include .env
export
endif

.PHONY: install run test lint typecheck migrate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --no-input

# Web server, task worker (and, from the IMM issue on, the emulator) in one terminal; Ctrl-C stops all.
run: migrate
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py demo_users
	PATH="$(CURDIR)/$(BIN):$$PATH" DEBUG=$${DEBUG:-1} $(BIN)/honcho --procfile Procfile start --port $(PORT)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	DEBUG=1 $(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
