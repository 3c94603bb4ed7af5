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

.PHONY: install run test lint typecheck migrate clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --no-input

# Web server, task worker, IMM submitter, IMM poller and (unless IMM_ENDPOINT points at a real
# IMM) the IMM emulator, in one terminal; one Ctrl-C stops them all. The first run on an empty
# database also seeds a dozen generated sample images (DEMO_SEED=0 turns that off).
PROCESSES := $(if $(IMM_ENDPOINT),web worker submitter poller,)
run: migrate
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py demo_users
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py demo_seed
	PATH="$(CURDIR)/$(BIN):$$PATH" DEBUG=$${DEBUG:-1} \
	  IMM_EMULATOR_NOTIFY_URL=$${IMM_EMULATOR_NOTIFY_URL:-http://127.0.0.1:$(PORT)/imm/notifications/} \
	  $(BIN)/honcho --procfile Procfile start --port $(PORT) $(PROCESSES)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	DEBUG=1 $(BIN)/mypy

# Seeds a PostgreSQL database of its own (emptied first) with 1,000,000 images and times the
# review queue, the admin changelist and 16 concurrent reviewers: about 6 minutes on 2 cores.
# BENCH_ARGS="--images 20000 --waiting 2000 --seconds 5" for a quick run (--help lists them).
bench: install
	@case "$$DATABASE_URL" in postgres://*|postgresql://*) ;; *) \
	  echo "make bench needs DATABASE_URL=postgres://... naming a database of its own (it is" \
	    "emptied), e.g. postgres://postgres@127.0.0.1:5432/moderation_bench" >&2; exit 2;; esac
	$(BIN)/python bench/queue.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
