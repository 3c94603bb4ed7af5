from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from django.db import connection
from django.test import Client

from moderation import services
from moderation.accounts import create_user
from moderation.imm import inbox
from moderation.models import Image, NotificationInboxMessage

from .api_helpers import ApiCaller, make_key
from .factories import image_bytes

PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _fresh_cache():
    # The review queue caches its counts; each test starts from nothing.
    from django.core.cache import cache

    from reviews.exposure import limits

    cache.clear()
    # Nor what a process last saw of a reviewer's exposure limits (user ids are reused).
    limits.forget()


@pytest.fixture
def admin_user(db):
    return create_user(username="ada", role="admin", password=PASSWORD, validate=False)


@pytest.fixture
def reviewer_user(db):
    return create_user(username="rex", role="reviewer", password=PASSWORD, validate=False)


@pytest.fixture
def admin_client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def reviewer_client(reviewer_user) -> Client:
    client = Client()
    client.force_login(reviewer_user)
    return client


@pytest.fixture
def make_image(db, admin_user) -> Callable[..., Image]:
    """Store a generated image through the real intake; each call makes distinct content."""
    counter = iter(range(1, 10_000))

    def make(status: str = Image.Status.RECEIVED, fmt: str = "PNG", **kwargs) -> Image:
        n = next(counter)
        data = image_bytes(fmt, color=(n % 256, (n // 256) % 256, 77), **kwargs)
        result = services.ingest(
            fp=io.BytesIO(data), filename=f"generated-{n}.{fmt.lower()}", actor=admin_user
        )
        assert result.image is not None, result.reason
        if status != result.image.status:
            Image.objects.filter(pk=result.image.pk).update(status=status)
            result.image.refresh_from_db()
        return result.image

    return make


postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs PostgreSQL: run with DATABASE_URL=postgres://... (CI does)",
)


def apply_inbox() -> list[str]:
    """Run the inbox applier as the poller does, until nothing is due; returns what
    record_result made of each message that was waiting, oldest first ("" if another applier
    holds it still)."""
    waiting = list(NotificationInboxMessage.objects.waiting().values_list("pk", flat=True))
    while inbox.apply_waiting().handled:
        pass
    return list(
        NotificationInboxMessage.objects.filter(pk__in=waiting)
        .order_by("id")
        .values_list("outcome", flat=True)
    )


@pytest.fixture
def api(db) -> ApiCaller:
    return ApiCaller(make_key())


@pytest.fixture
def api_for(db) -> Callable[..., ApiCaller]:
    def make(name: str, scopes: tuple[str, ...] = ("submit", "read")) -> ApiCaller:
        return ApiCaller(make_key(name, scopes))

    return make


@pytest.fixture
def receiver():
    """A real HTTP server on 127.0.0.1 that records webhook requests (tests/webhook_receiver.py)."""
    from .webhook_receiver import Receiver

    server = Receiver().start()
    yield server
    server.stop()
