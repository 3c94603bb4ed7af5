"""The project's settings with what a test run needs and nothing else changed."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret")

from moderation.settings import *  # noqa: F403

# Hashing passwords slowly is the point in production and a waste in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tasks are recorded, not run: tests run the pipeline step they are about, against the emulator.
TASKS = {
    "default": {
        "BACKEND": "django_tasks.backends.dummy.DummyBackend",
        "QUEUES": TASKS["default"]["QUEUES"],  # noqa: F405
    }
}

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not memory: threads (live_server, concurrency tests) then get their own
    # connections and SQLite's real locking, as in production.
    import tempfile

    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": os.path.join(tempfile.gettempdir(), f"moderation-test-{os.getpid()}.sqlite3")
    }

# STATIC_ROOT is filled by collectstatic (make serve), not by tests: look files up per request
# instead of warning at every start that the folder is missing.
WHITENOISE_AUTOREFRESH = True

# A fixed audit signing key, so tests can check checkpoints and receipts against a known log.
AUDIT_SIGNING_KEY = (
    "PRIVATE+KEY+tests.example/audit+d1b0cb96+AYI5p2BXFaN9Bg5jIeRH7AtnXIOHRwDOSAW3ZvyMaWAp"
)

# A fixed webhook key, so tests can derive endpoint secrets; the local receivers tests run.
WEBHOOK_SECRET_KEY = "tests-only-webhook-secret-key-not-a-secret-0123456789"
WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
