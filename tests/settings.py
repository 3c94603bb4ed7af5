"""The project's settings with what a test run needs and nothing else changed."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret")

from moderation.settings import *  # noqa: F403

# Hashing passwords slowly is the point in production and a waste in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
