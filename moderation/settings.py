"""Settings for the moderation dashboard.

One module, configured from the environment. Every variable is listed in `.env.example`; the
helpers below fail loudly on a value they cannot read rather than guessing.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}"
    )


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number; got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number; got {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_json_object(name: str) -> dict[str, object]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object, not {type(value).__name__}")
    return value


def env_secret(name: str, default: str = "") -> str:
    """A secret from NAME, or from the file named by NAME_FILE (Docker and Kubernetes secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE points at {path!r}: {exc.strerror}") from None
    return os.environ.get(name, default)


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it (or SECRET_KEY_FILE), or set DEBUG=1 for development."
        )
    SECRET_KEY = "dev-only-insecure-key-never-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "django_tasks",
    "django_tasks_db",
    "axes",
    # django-ninja: the API's docs page loads Swagger UI from ninja's static files (no CDN).
    "ninja",
    "moderation",
    "moderation.events",
    "moderation.api",
    "moderation.webhooks",
    "reviews",
    "reviews.sla",
    "reviews.qa",
    "reviews.dashboard",
    "reviews.exposure",
    "reviews.calibration",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from STATIC_ROOT (collectstatic), answered before any other middleware runs,
    # so `make serve` and a deployment need no separate file server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Outermost after security, so every answer gets the policy, the lockout page included.
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Knows who is asking, and answers before anything reads the body (CSRF's process_view does).
    "moderation.middleware.RequestBodyLimitMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    # After the sign-in and CSRF checks (process_view), before any view reads a parameter.
    "moderation.middleware.RefuseNulCharactersMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "moderation.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "moderation.context_processors.imm_status",
                "moderation.webhooks.context_processors.disabled_endpoints",
            ],
        },
    },
]

WSGI_APPLICATION = "moderation.wsgi.application"

# SQLite in the project folder by default; DATABASE_URL=postgres://... in production.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Reusing connections saves ~3 ms a request against PostgreSQL (bench/queue.py).
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE makes every transaction take SQLite's write lock when it begins, so a transaction
    # that reads then writes (the audit sequencer's batch, moderation/audit/sequencer.py) never
    # races another writer between the two.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The standalone backend only refuses locked-out sign-ins; AxesBackend would be a second
# ModelBackend and double every permission lookup.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# Sign-in throttling (django-axes), on /accounts/login/ and /admin/login/ alike. Failures are
# counted per client address and, separately, per username: the first stops one address trying
# many accounts (a password spray), the second stops many addresses trying one account. A
# combined (username, address) key would stop neither. The price: anyone can lock a named
# account for LOGIN_LOCKOUT_MINUTES; an admin lifts it at once (manage.py axes_reset_username).
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10)
LOGIN_LOCKOUT_MINUTES = env_int("LOGIN_LOCKOUT_MINUTES", 15)
if AXES_FAILURE_LIMIT < 1 or LOGIN_LOCKOUT_MINUTES < 1:
    raise ImproperlyConfigured("LOGIN_FAILURE_LIMIT and LOGIN_LOCKOUT_MINUTES must be at least 1")
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
# A success clears only the failures of that username from that address (the person's own
# typos; moderation.accounts). Axes' AXES_RESET_ON_SUCCESS would clear everything counted against
# the address or the username, so anyone with an account of their own could sign in between
# guesses at someone else's password and never be locked out.
AXES_RESET_ON_SUCCESS = False
# Attempts while locked out are refused and not counted, so a lockout ends when the page says.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# REMOTE_ADDR only, as the audit log: a BEHIND_TLS_PROXY deployment has its proxy set it.
AXES_CLIENT_IP_CALLABLE = "moderation.accounts.client_address"
AXES_USERNAME_CALLABLE = "moderation.accounts.attempted_username"
AXES_LOCKOUT_CALLABLE = "moderation.accounts.locked_out"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "staticfiles")

# Image bytes are never served from a public URL: MEDIA_URL is not routed anywhere, and every
# image goes through moderation.views.image_file, which checks the viewer's permission.
MEDIA_ROOT = Path(env_str("MEDIA_ROOT") or BASE_DIR / "media")
MEDIA_URL = "/media-not-served/"

# The storage backend is a dotted path plus JSON options, so S3-compatible object storage (OSS)
# through django-storages is a settings change (README, "Storage").
STORAGES = {
    "default": {
        "BACKEND": env_str("STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage"),
        "OPTIONS": env_json_object("STORAGE_OPTIONS"),
    },
    # collectstatic also writes gzip copies, which WhiteNoise sends to browsers that accept them.
    # Not the manifest variant: every page would then need collectstatic first, tests included.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Request bodies. moderation.middleware refuses, from the declared Content-Length and before
# anything reads the body, a body over UPLOAD_MAX_REQUEST_MB from someone who may upload, and over
# REQUEST_MAX_KB from anyone else (anonymous clients: the sign-in form and IMM notifications,
# which are far smaller). The page's script posts one file per request; the total is sized for
# the no-JavaScript form, which posts every chosen file at once.
UPLOAD_MAX_REQUEST_MB = env_int("UPLOAD_MAX_REQUEST_MB", 100)
REQUEST_MAX_KB = env_int("REQUEST_MAX_KB", 1024)
# Fields other than files are held in memory, up to this much; file parts over
# FILE_UPLOAD_MAX_MEMORY_SIZE spill to temporary files rather than memory.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = env_int("UPLOAD_MAX_FILES", 500)

# The platform API (/api/v1/): requests a minute each client may make, counted in the database
# so every process shares the count (0: no limit). Over it, 429 with Retry-After.
API_RATE_LIMIT = env_int("API_RATE_LIMIT", 600)
if API_RATE_LIMIT < 0:
    raise ImproperlyConfigured(f"API_RATE_LIMIT must be 0 (no limit) or more; got {API_RATE_LIMIT}")

# Two queues: "default" for manage.py db_worker, which runs one task at a time, and
# "imm_submit" (submit_image) for manage.py imm_submitter, which runs many at once.
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default", "imm_submit"],
    }
}

# IMM. The default endpoint is the project's own emulator (manage.py imm_emulator), which speaks
# IMM's wire protocol, so the real client runs everywhere; real Alibaba Cloud is a change of
# IMM_ENDPOINT, IMM_REGION, IMM_PROJECT and the keys. The bucket is the one IMM reads images from:
# every image's SourceURI is oss://<IMM_OSS_BUCKET>/<storage key>.
IMM_EMULATOR_PORT = env_int("IMM_EMULATOR_PORT", 8001)
IMM_ENDPOINT = env_str("IMM_ENDPOINT", f"http://127.0.0.1:{IMM_EMULATOR_PORT}").rstrip("/")
IMM_USES_EMULATOR = "IMM_ENDPOINT" not in os.environ
IMM_REGION = env_str("IMM_REGION", "cn-hangzhou")
IMM_PROJECT = env_str("IMM_PROJECT", "moderation-local")
IMM_ACCESS_KEY_ID = env_secret("IMM_ACCESS_KEY_ID")
IMM_ACCESS_KEY_SECRET = env_secret("IMM_ACCESS_KEY_SECRET")
IMM_SECURITY_TOKEN = env_secret("IMM_SECURITY_TOKEN") or None
if not (IMM_ACCESS_KEY_ID and IMM_ACCESS_KEY_SECRET):
    if not IMM_USES_EMULATOR:
        raise ImproperlyConfigured(
            "IMM_ENDPOINT is set, so IMM_ACCESS_KEY_ID and IMM_ACCESS_KEY_SECRET must be set too."
        )
    # Development defaults that the emulator checks signatures against; not secrets.
    IMM_ACCESS_KEY_ID = IMM_ACCESS_KEY_ID or "emulator-access-key-id"
    IMM_ACCESS_KEY_SECRET = IMM_ACCESS_KEY_SECRET or "emulator-access-key-secret"
IMM_SCENES = env_list("IMM_SCENES", ["porn", "terrorism", "ad"])
IMM_INTERVAL = env_int("IMM_INTERVAL", 1)
# IMM checks only the first frame by default; a moderation tool wants more of a GIF than that.
IMM_MAX_FRAMES = env_int("IMM_MAX_FRAMES", 10)
# Where IMM sends task notifications: "none", "mns:<topic>" or "rocketmq:<instance id>:<topic>".
IMM_NOTIFICATION = env_str("IMM_NOTIFICATION", "none")
# With IMM_NOTIFICATION=mns:<topic>, MNS pushes are taken only from that topic; set this to your
# Alibaba Cloud account id to also require the push's TopicOwner to be that account.
IMM_MNS_TOPIC_OWNER = env_str("IMM_MNS_TOPIC_OWNER", "").strip()
IMM_OSS_BUCKET = env_str("IMM_OSS_BUCKET", "imm-moderation-local")
# The shared secret a notification must carry in X-IMM-Notify-Token (MNS pushes are checked by
# their own signature instead, and only with IMM_NOTIFICATION=mns:<topic>). Unset: only
# MNS-signed pushes are accepted, except under DEBUG.
IMM_NOTIFY_TOKEN = env_secret("IMM_NOTIFY_TOKEN") or ("dev-notify-token" if DEBUG else "")
# Seconds after submission before polling asks IMM for a result nobody notified us of.
IMM_POLL_AFTER = env_int("IMM_POLL_AFTER", 60)
# Submission (manage.py imm_submitter): requests to IMM in flight at once in one submitter
# process (threads holding no database connection; at 100 ms an answer, 64 send up to 600 a
# second), and the most requests a second that every submitter together sends (IMM throttles
# per account; 0: no limit of our own). IMM documents no figure; Alibaba Cloud's media services
# allow 50 to 100 a second per account and operation.
IMM_SUBMIT_CONCURRENCY = env_int("IMM_SUBMIT_CONCURRENCY", 64)
if not 1 <= IMM_SUBMIT_CONCURRENCY <= 256:
    raise ImproperlyConfigured(
        f"IMM_SUBMIT_CONCURRENCY must be from 1 to 256; got {IMM_SUBMIT_CONCURRENCY}"
    )
IMM_MAX_QPS = env_int("IMM_MAX_QPS", 50)
if IMM_MAX_QPS < 0:
    raise ImproperlyConfigured(f"IMM_MAX_QPS must be 0 (no limit) or more; got {IMM_MAX_QPS}")

# The emulator (manage.py imm_emulator): where it delivers notifications, after how long, and
# switches that make deliveries misbehave on purpose.
IMM_EMULATOR_NOTIFY_URL = env_str(
    "IMM_EMULATOR_NOTIFY_URL", f"http://127.0.0.1:{env_int('PORT', 8000)}/imm/notifications/"
)
IMM_EMULATOR_DELAY = env_float("IMM_EMULATOR_DELAY", 2.0)
# Milliseconds the emulator waits before each answer, as a far region would (0: at once).
IMM_EMULATOR_LATENCY_MS = env_float("IMM_EMULATOR_LATENCY_MS", 0.0)
if not 0 <= IMM_EMULATOR_LATENCY_MS <= 60_000:
    raise ImproperlyConfigured(
        "IMM_EMULATOR_LATENCY_MS must be a number of milliseconds from 0 to 60000; got "
        f"{os.environ['IMM_EMULATOR_LATENCY_MS']!r}"
    )
# Seconds after a review verdict until IMM's own manual review sends its second notification with
# pass or block (unset or 0: off, the emulator then never revises a verdict).
IMM_EMULATOR_MANUAL_REVIEW: float | None = env_float("IMM_EMULATOR_MANUAL_REVIEW", 0.0) or None
if IMM_EMULATOR_MANUAL_REVIEW is not None and not 0 < IMM_EMULATOR_MANUAL_REVIEW < 86400:
    raise ImproperlyConfigured(
        "IMM_EMULATOR_MANUAL_REVIEW must be a number of seconds from 0 (off) to a day; got "
        f"{os.environ['IMM_EMULATOR_MANUAL_REVIEW']!r}"
    )
IMM_EMULATOR_RULES = env_str("IMM_EMULATOR_RULES", "")
IMM_EMULATOR_STATE = env_str("IMM_EMULATOR_STATE", str(BASE_DIR / ".imm-emulator.sqlite3"))

# The review queue: how long a claim lasts without activity, and how long a decision can be undone.
REVIEW_LEASE_SECONDS = env_int("REVIEW_LEASE_SECONDS", 300)
REVIEW_UNDO_SECONDS = env_int("REVIEW_UNDO_SECONDS", 10)
# Reviewer exposure (reviews.exposure): a calm break reminder after this many minutes of
# continuous reviewing, where a pause of at least the gap ends a stretch.
REVIEW_BREAK_AFTER_MINUTES = env_int("REVIEW_BREAK_AFTER_MINUTES", 50)
REVIEW_BREAK_GAP_MINUTES = env_int("REVIEW_BREAK_GAP_MINUTES", 10)

# The audit log's signing key, a C2SP signed-note signer key (PRIVATE+KEY+<name>+<key id>+<base64>,
# made by `manage.py audit_keygen NAME`), or a file holding it. Its name is the log's origin in
# every checkpoint; the sequencer refuses to run without it. Never logged or shown: pages show the
# verifier key derived from it.
AUDIT_SIGNING_KEY = env_secret("AUDIT_SIGNING_KEY").strip()
if AUDIT_SIGNING_KEY:
    from moderation.audit.note import NoteError, Signer

    try:
        Signer.from_key(AUDIT_SIGNING_KEY)
    except NoteError as exc:
        variable = (
            "AUDIT_SIGNING_KEY_FILE"
            if os.environ.get("AUDIT_SIGNING_KEY_FILE")
            else ("AUDIT_SIGNING_KEY")
        )
        raise ImproperlyConfigured(
            f"{variable} is not a signer key like PRIVATE+KEY+<name>+<key id>+<base64> "
            f"(manage.py audit_keygen NAME makes one): {exc}"
        ) from None
# /healthz says the sequencer is behind when an entry has waited longer than this for its position.
AUDIT_SEQUENCER_MAX_LAG_SECONDS = env_int("AUDIT_SEQUENCER_MAX_LAG_SECONDS", 60)

# Webhooks (moderation/webhooks). Each endpoint's signing secret is derived from this key and a
# per-endpoint salt, so no secret is stored: changing the key changes every endpoint's secret.
# At least 32 characters (`make run` and `make serve` generate one into .webhook-secret-key).
# Unset: registering endpoints and delivering refuse, saying so; nothing else needs it.
WEBHOOK_SECRET_KEY = env_secret("WEBHOOK_SECRET_KEY").strip()
if WEBHOOK_SECRET_KEY and len(WEBHOOK_SECRET_KEY) < 32:
    raise ImproperlyConfigured(
        "WEBHOOK_SECRET_KEY must be at least 32 characters (e.g. python -c 'import secrets; "
        "print(secrets.token_urlsafe(48))')"
    )
# Host names (or IP literals) that webhooks may reach over plain http and on private or loopback
# addresses: local receivers and tests. Link-local and cloud metadata addresses stay refused.
WEBHOOK_ALLOWED_HOSTS = [host.lower() for host in env_list("WEBHOOK_ALLOWED_HOSTS", [])]
# Requests in flight at once in one deliver_webhooks process (threads sharing one HTTP client).
WEBHOOK_CONCURRENCY = env_int("WEBHOOK_CONCURRENCY", 32)
if not 1 <= WEBHOOK_CONCURRENCY <= 256:
    raise ImproperlyConfigured(
        f"WEBHOOK_CONCURRENCY must be from 1 to 256; got {WEBHOOK_CONCURRENCY}"
    )

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Production over HTTPS: redirect plain HTTP (except the health check, which load balancers probe
# over HTTP) and tell browsers to use HTTPS only (HSTS). Off by default so development over
# http://127.0.0.1 works; README "Deploying" lists the production values.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

# Content-Security-Policy on every answer (django-csp): scripts, styles, images and requests from
# this origin only; no inline script or style anywhere (htmx's own indicator style is turned off
# in base.html), no eval, no framing, forms post here only.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "connect-src": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
        "base-uri": [NONE],
        "object-src": [NONE],
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # httpx logs every request URL at INFO; the IMM client logs what matters itself.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # django-axes logs every sign-in at INFO; lockouts are logged (and audited) by
        # moderation.accounts, with the username and address axes masks.
        "axes": {"level": "WARNING"},
    },
}
