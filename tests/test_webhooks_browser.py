"""The Webhooks page in a real browser: add an endpoint (secret shown once), the banner for a
disabled endpoint, and resending a failed delivery through htmx.

`SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_webhooks_browser.py` also writes
docs/webhooks.png for the README.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from playwright.sync_api import expect

from moderation.events.models import Event
from moderation.events.outbox import emit
from moderation.webhooks import schedule, services, signing
from moderation.webhooks.models import Delivery, Endpoint
from moderation.webhooks.worker import Deliverer

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS, VIEWPORT
from .conftest import PASSWORD
from .webhook_receiver import Receiver


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={**VIEWPORT, "height": 1400}, base_url=live_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
def gone():
    server = Receiver(status=410, reply=b"Gone: this integration was removed").start()
    yield server
    server.stop()


def run_worker(clock) -> None:
    Deliverer(concurrency=4, worker_id="browser-test", clock=clock, rng=random.Random(5)).run(
        batch=True
    )


def test_the_webhooks_page_adds_an_endpoint_and_resends_a_failed_delivery(
    page, admin_user, make_image, receiver, gone
):
    platform = services.add_endpoint(
        url=receiver.url("/hooks/moderation"), description="Platform backend", actor=admin_user
    ).endpoint
    services.add_endpoint(
        url=gone.url("/old-integration"),
        event_types=["image.rejected"],
        description="Old integration",
        actor=admin_user,
    )
    images = [make_image(), make_image()]
    with transaction.atomic():
        emit(image=images[0], type=Event.Type.APPROVED, data={"image_id": images[0].pk})
        emit(image=images[1], type=Event.Type.REJECTED, data={"image_id": images[1].pk})
    now = [timezone.now()]
    run_worker(lambda: now[0])
    # One event the platform kept failing on, through every attempt.
    receiver.status, receiver.reply = 500, b'{"error": "database unavailable"}'
    with transaction.atomic():
        emit(image=images[0], type=Event.Type.UNDONE, data={"image_id": images[0].pk})
    now[0] = timezone.now()
    for _ in range(schedule.MAX_ATTEMPTS):
        run_worker(lambda: now[0])
        # Past the longest wait the jitter can make (10 h stretched by 20%).
        now[0] += max(schedule.RETRY_DELAYS) * (1 + schedule.JITTER) + timedelta(minutes=1)
    failed = Delivery.objects.get(state=Delivery.State.FAILED)
    receiver.status, receiver.reply = 200, b"ok"
    assert not Endpoint.objects.get(url__contains="old-integration").enabled

    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator("nav summary", has_text="Platform").click()
    page.get_by_role("link", name="Webhooks", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("Webhooks are not being delivered")
    expect(page.locator(f"#endpoint-{platform.pk}")).to_contain_text("Failing")
    expect(page.get_by_role("cell", name="410").first).to_be_visible()

    # Resend the failed delivery: htmx swaps its row.
    row = page.locator(f"#delivery-{failed.pk}")
    row.get_by_role("button", name="Resend").click()
    expect(row).to_contain_text("Queued again")
    expect(row.get_by_role("button", name="Resend")).to_have_count(0)
    failed.refresh_from_db()
    assert failed.state == Delivery.State.PENDING
    now[0] += schedule.ENDPOINT_PAUSE_CAP
    run_worker(lambda: now[0])
    failed.refresh_from_db()
    assert failed.state == Delivery.State.DELIVERED

    # Add an endpoint: the secret is shown once, and it is the one that signs.
    page.get_by_label("URL").fill(receiver.url("/hooks/analytics"))
    page.get_by_label("Description").fill("Analytics")
    page.get_by_label("image.approved").check()
    page.get_by_role("button", name="Add endpoint").click()
    added = Endpoint.objects.get(description="Analytics")
    expect(page.locator("#new-secret")).to_have_text(signing.secret(added))
    assert added.event_types == ["image.approved"]
    expect(page.locator(f"#endpoint-{platform.pk}")).to_contain_text("Enabled")
    expect(page.locator(f"#delivery-{failed.pk}")).to_contain_text("Delivered")

    if os.environ.get("SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=DOCS / "webhooks.png", full_page=True)
