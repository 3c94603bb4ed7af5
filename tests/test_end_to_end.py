"""The whole path over real HTTP on loopback: upload, worker, emulator, notification, routing."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from moderation import demo
from moderation.imm import inbox
from moderation.imm.emulator import Emulator
from moderation.models import AuditEntry, Image, ModerationResult, NotificationInboxMessage

from .conftest import PASSWORD

DATABASE_TASKS = {
    "default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default", "imm_submit"]}
}


def wait_for(condition, *, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@contextmanager
def inbox_applier() -> Iterator[None]:
    """The poller's inbox loop, in a thread of its own, for as long as the block runs."""
    stop = threading.Event()

    def run() -> None:
        try:
            inbox.run(stop=stop)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def signed_in(base_url: str, username: str) -> httpx.Client:
    client = httpx.Client(base_url=base_url, follow_redirects=False, timeout=10)
    page = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/accounts/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{base_url}/accounts/login/"},
    )
    assert response.status_code == 302, response.text
    return client


@pytest.mark.django_db(transaction=True)
def test_uploaded_images_go_through_imm_and_come_back_routed(live_server, admin_user, settings):
    # Plain http on loopback: httpx, unlike a browser, keeps Secure cookies to https.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    settings.IMM_NOTIFY_TOKEN = "end-to-end-notify-token"
    notify_url = f"{live_server.url}/imm/notifications/"
    emulator = Emulator.from_settings(port=0, state=":memory:", delay=0.2, notify_url=notify_url)
    emulator.start()
    try:
        with override_settings(IMM_ENDPOINT=emulator.url, TASKS=DATABASE_TASKS):
            samples = dict(demo.samples())
            browser = signed_in(live_server.url, admin_user.get_username())
            upload = browser.get("/images/upload/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', upload.text).group(1)
            names = [
                "demo-01-meadow-pass.jpg",
                "demo-03-figure-review.jpg",
                "demo-05-figure-block.jpg",
            ]
            response = browser.post(
                "/images/upload/",
                data={"csrfmiddlewaretoken": token},
                files=[("files", (name, io.BytesIO(samples[name]))) for name in names],
                headers={"Referer": f"{live_server.url}/images/upload/"},
            )
            assert response.status_code == 200
            assert response.text.count('data-outcome="stored"') == 3
            assert set(Image.objects.values_list("status", flat=True)) == {"received"}

            # The submitter sends each image to the emulator, over HTTP, signed.
            call_command("imm_submitter", "--batch", stdout=io.StringIO())
            assert set(Image.objects.values_list("status", flat=True)) <= {
                "submitted",
                "approved",
                "awaiting_review",
                "rejected",
            }

            # The emulator notifies the web server, which stores each notification in the
            # inbox; the poller's applier routes each image.
            expected = {
                "demo-01-meadow-pass.jpg": Image.Status.APPROVED,
                "demo-03-figure-review.jpg": Image.Status.AWAITING_REVIEW,
                "demo-05-figure-block.jpg": Image.Status.REJECTED,
            }

            def routed() -> bool:
                statuses = dict(Image.objects.values_list("original_filename", "status"))
                return statuses == expected

            with inbox_applier():
                assert wait_for(routed), dict(
                    Image.objects.values_list("original_filename", "status")
                )
    finally:
        emulator.stop()

    for image in Image.objects.all():
        actions = list(
            AuditEntry.objects.filter(image=image).order_by("id").values_list("action", flat=True)
        )
        assert actions == ["image.uploaded", "imm.submitted", "imm.result_received", "imm.routed"]
        result = ModerationResult.objects.get(image=image)
        assert result.source == "notification"
        assert result.applied
    # Every delivery went through the inbox and was applied once, its arrival and routing kept.
    deliveries = NotificationInboxMessage.objects.all()
    assert not deliveries.waiting().exists()
    assert sorted(
        deliveries.filter(outcome="recorded").values_list("task_id", flat=True)
    ) == sorted(ModerationResult.objects.values_list("imm_task_id", flat=True))
    assert all(d.applied_at >= d.received_at for d in deliveries)
    blocked = ModerationResult.objects.get(image__original_filename="demo-05-figure-block.jpg")
    assert blocked.suggestion == "block"
    assert blocked.categories == ["porn"]
    call_command("verify_audit", stdout=io.StringIO())

    # The image page shows IMM's history: the request and the result.
    page = browser.get(f"/images/{blocked.image_id}/")
    assert blocked.imm_task_id in page.text
    assert "suggestion-block" in page.text
    browser.close()


@pytest.mark.django_db(transaction=True)
def test_imms_manual_review_reroutes_a_review_image_over_http(live_server, admin_user, settings):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    settings.IMM_NOTIFY_TOKEN = "end-to-end-notify-token"
    notify_url = f"{live_server.url}/imm/notifications/"
    emulator = Emulator.from_settings(
        port=0,
        state=":memory:",
        delay=0.1,
        manual_review=1.5,
        notify_url=notify_url,
        retry_backoff=0.05,
    )
    emulator.start()
    try:
        with override_settings(IMM_ENDPOINT=emulator.url, TASKS=DATABASE_TASKS):
            name = "demo-03-figure-review.jpg"
            browser = signed_in(live_server.url, admin_user.get_username())
            upload = browser.get("/images/upload/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', upload.text).group(1)
            response = browser.post(
                "/images/upload/",
                data={"csrfmiddlewaretoken": token},
                files=[("files", (name, io.BytesIO(dict(demo.samples())[name])))],
                headers={"Referer": f"{live_server.url}/images/upload/"},
            )
            assert response.text.count('data-outcome="stored"') == 1
            browser.close()
            call_command("imm_submitter", "--batch", stdout=io.StringIO())

            with inbox_applier():
                assert wait_for(lambda: ModerationResult.objects.filter(applied=True).count() == 2)
    finally:
        emulator.stop()

    first, second = ModerationResult.objects.order_by("end_time")
    assert first.suggestion == "review"
    rate = max(frame["Rate"] for frame in first.block_frames)
    assert second.suggestion == ("block" if rate >= 75 else "pass")
    image = Image.objects.get()
    assert image.status == (
        Image.Status.REJECTED if second.suggestion == "block" else Image.Status.APPROVED
    )
    routes = AuditEntry.objects.filter(image=image, action="imm.routed").order_by("id")
    assert [(e.state_before, e.state_after) for e in routes] == [
        ("submitted", "awaiting_review"),
        ("awaiting_review", image.status),
    ]
    call_command("verify_audit", stdout=io.StringIO())
