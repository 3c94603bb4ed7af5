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

.PHONY: install run serve test lint typecheck migrate clean bench bench-pipeline bench-api bench-webhooks bench-calibration soak

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --no-input

# The audit log's signing key: yours when AUDIT_SIGNING_KEY or AUDIT_SIGNING_KEY_FILE is set,
# else a development key that `make run` makes on its first start (git ignores the file).
AUDIT_DEV_KEY := $(CURDIR)/.audit-signing-key
AUDIT_KEY_ENV = $(if $(AUDIT_SIGNING_KEY)$(AUDIT_SIGNING_KEY_FILE),,AUDIT_SIGNING_KEY_FILE=$(AUDIT_DEV_KEY))
# The key webhook secrets are derived from: yours when WEBHOOK_SECRET_KEY or
# WEBHOOK_SECRET_KEY_FILE is set, else one made once into a file (git ignores it). Keep it: a new
# key changes every endpoint's secret.
WEBHOOK_KEY_FILE := $(CURDIR)/.webhook-secret-key
WEBHOOK_KEY_ENV = $(if $(WEBHOOK_SECRET_KEY)$(WEBHOOK_SECRET_KEY_FILE),,WEBHOOK_SECRET_KEY_FILE=$(WEBHOOK_KEY_FILE))

# Web server, task worker, IMM submitter, IMM poller, audit sequencer, webhook deliverer, the
# dashboard's rollups and (unless IMM_ENDPOINT points at a real IMM) the IMM emulator, in one
# terminal; one Ctrl-C stops them all. The first run on an empty database also seeds a dozen generated sample images
# (DEMO_SEED=0 turns that off).
PROCESSES := $(if $(IMM_ENDPOINT),web worker submitter poller sequencer webhooks rollups,)
run: migrate
	@if [ -z "$$AUDIT_SIGNING_KEY$$AUDIT_SIGNING_KEY_FILE" ] && [ ! -s "$(AUDIT_DEV_KEY)" ]; then \
	  echo "Making a development audit signing key in $(AUDIT_DEV_KEY)"; \
	  (umask 077 && DEBUG=1 $(BIN)/python manage.py audit_keygen localhost/moderation-audit \
	    > "$(AUDIT_DEV_KEY).tmp" && mv "$(AUDIT_DEV_KEY).tmp" "$(AUDIT_DEV_KEY)"); \
	fi
	@if [ -z "$$WEBHOOK_SECRET_KEY$$WEBHOOK_SECRET_KEY_FILE" ] && [ ! -s "$(WEBHOOK_KEY_FILE)" ]; then \
	  (umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(48))' \
	    > "$(WEBHOOK_KEY_FILE).tmp" && mv "$(WEBHOOK_KEY_FILE).tmp" "$(WEBHOOK_KEY_FILE)"); \
	fi
	DEBUG=$${DEBUG:-1} $(AUDIT_KEY_ENV) $(BIN)/python manage.py demo_users
	DEBUG=$${DEBUG:-1} $(AUDIT_KEY_ENV) $(BIN)/python manage.py demo_seed
	PATH="$(CURDIR)/$(BIN):$$PATH" DEBUG=$${DEBUG:-1} $(AUDIT_KEY_ENV) $(WEBHOOK_KEY_ENV) \
	  IMM_EMULATOR_NOTIFY_URL=$${IMM_EMULATOR_NOTIFY_URL:-http://127.0.0.1:$(PORT)/imm/notifications/} \
	  $(BIN)/honcho --procfile Procfile start --port $(PORT) $(PROCESSES)

# The production-like set in one terminal, with DEBUG=0; one Ctrl-C stops them all: gunicorn
# (WEB_CONCURRENCY workers, default 4; more options in GUNICORN_CMD_ARGS), TASK_WORKERS task
# workers (default 1), the IMM poller, the audit sequencer, the webhook deliverer, the dashboard's
# rollups and, unless IMM_ENDPOINT is set, the IMM emulator. Static files are collected and served by WhiteNoise.
# SECRET_KEY, AUDIT_SIGNING_KEY (the sequencer signs checkpoints with it), IMM_NOTIFY_TOKEN (which the emulator's notifications
# carry) and WEBHOOK_SECRET_KEY (webhook secrets are derived from it) come from the environment or
# a *_FILE, or are generated once into the gitignored files .secret-key, .audit-signing-key,
# .imm-notify-token and .webhook-secret-key.
TASK_WORKERS ?= 1
SERVE_PROCESSES ?= web worker submitter poller inbox sequencer webhooks rollups $(if $(IMM_ENDPOINT),,imm)
serve: install
	@set -e; umask 077; \
	if [ -z "$$SECRET_KEY$$SECRET_KEY_FILE" ]; then \
	  test -s .secret-key || $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))' > .secret-key; \
	  export SECRET_KEY_FILE="$(CURDIR)/.secret-key"; \
	fi; \
	if [ -z "$$AUDIT_SIGNING_KEY$$AUDIT_SIGNING_KEY_FILE" ]; then \
	  test -s .audit-signing-key || $(BIN)/python manage.py audit_keygen "$$(hostname)/audit" > .audit-signing-key; \
	  export AUDIT_SIGNING_KEY_FILE="$(CURDIR)/.audit-signing-key"; \
	fi; \
	if [ -z "$(IMM_ENDPOINT)$$IMM_NOTIFY_TOKEN$$IMM_NOTIFY_TOKEN_FILE" ]; then \
	  test -s .imm-notify-token || $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > .imm-notify-token; \
	  export IMM_NOTIFY_TOKEN_FILE="$(CURDIR)/.imm-notify-token"; \
	fi; \
	if [ -z "$$WEBHOOK_SECRET_KEY$$WEBHOOK_SECRET_KEY_FILE" ]; then \
	  test -s .webhook-secret-key || $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(48))' > .webhook-secret-key; \
	  export WEBHOOK_SECRET_KEY_FILE="$(CURDIR)/.webhook-secret-key"; \
	fi; \
	export DEBUG=0 PATH="$(abspath $(BIN)):$$PATH" \
	  IMM_EMULATOR_NOTIFY_URL="$${IMM_EMULATOR_NOTIFY_URL:-http://127.0.0.1:$(PORT)/imm/notifications/}"; \
	$(BIN)/python manage.py migrate --no-input; \
	$(BIN)/python manage.py collectstatic --no-input --verbosity 0; \
	exec $(BIN)/honcho --procfile Procfile.serve start --port $(PORT) \
	  --concurrency worker=$(TASK_WORKERS) $(SERVE_PROCESSES)

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

# The IMM pipeline and the audit log end to end, as make serve runs them (gunicorn with 4 workers,
# the emulator 100 ms away), in a PostgreSQL database of its own that it drops and creates again:
# submissions/s, notifications/s, claim+decide with 16 reviewers, the sequencer. A few minutes.
# BENCH_ARGS="--quick" for a tiny run, "--baseline" to measure the code before issue 10 beside it.
bench-pipeline: install
	@case "$$DATABASE_URL" in postgres://*|postgresql://*) ;; *) \
	  echo "make bench-pipeline needs DATABASE_URL=postgres://... naming a database of its own" \
	    "(it is dropped), e.g. postgres://postgres@127.0.0.1:5432/moderation_bench_pipeline" >&2; \
	  exit 2;; esac
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/pipeline.py $(BENCH_ARGS)

# The platform API through gunicorn (4 workers) in a PostgreSQL database of its own that it drops
# and creates again: API submissions/s beside the upload page's, 16 in flight, in one run.
# BENCH_ARGS="--quick" for a tiny run.
bench-api: install
	@case "$$DATABASE_URL" in postgres://*|postgresql://*) ;; *) \
	  echo "make bench-api needs DATABASE_URL=postgres://... naming a database of its own" \
	    "(it is dropped), e.g. postgres://postgres@127.0.0.1:5432/moderation_bench_api" >&2; \
	  exit 2;; esac
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/api.py $(BENCH_ARGS)

# The IMM calibration page (agreement by rate band, the thresholds backtest) on 1,000,000 images
# with their decisions, in a PostgreSQL database of its own that it drops and creates again.
# BENCH_ARGS="--images 100000" for a quick run.
bench-calibration: install
	@case "$$DATABASE_URL" in postgres://*|postgresql://*) ;; *) \
	  echo "make bench-calibration needs DATABASE_URL=postgres://... naming a database of its" \
	    "own (it is dropped), e.g. postgres://postgres@127.0.0.1:5432/moderation_bench_calibration" >&2; \
	  exit 2;; esac
	$(BIN)/python bench/calibration.py $(BENCH_ARGS)

# Webhook deliveries/s from manage.py deliver_webhooks to a local receiver, in a PostgreSQL
# database of its own that it drops and creates again (20,000 events by default), checking none
# is lost, none sent twice and none sent to a disabled endpoint. BENCH_ARGS="--events 2000".
bench-webhooks: install
	@case "$$DATABASE_URL" in postgres://*|postgresql://*) ;; *) \
	  echo "make bench-webhooks needs DATABASE_URL=postgres://... naming a database of its own" \
	    "(it is dropped), e.g. postgres://postgres@127.0.0.1:5432/moderation_bench_webhooks" >&2; \
	  exit 2;; esac
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/webhook_delivery.py $(BENCH_ARGS)

# make serve's processes for 10 minutes under load (32 reviewers, 500 notifications/s, uploads)
# with a kill -9 every minute, then checks nothing was lost or done twice (bench/soak.py).
# SOAK_ARGS="--minutes 2 --kill-every 20" for a shorter run.
soak: install
	@case "$$DATABASE_URL" in postgres://*|postgresql://*) ;; *) \
	  echo "make soak needs DATABASE_URL=postgres://... naming a database of its own" \
	    "(it is dropped), e.g. postgres://postgres@127.0.0.1:5432/moderation_soak" >&2; \
	  exit 2;; esac
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
