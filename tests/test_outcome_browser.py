"""An admin overrides and reopens a settled image from its page in a real browser: htmx swaps
the outcome card, the status and the history without a page load, by keyboard too.

Drives Debian's Chromium through Playwright against live_server; never downloads a browser.
README screenshot: `SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_outcome_browser.py`
writes docs/image-outcome.png (nothing is written otherwise).
"""

from __future__ import annotations

import os

import pytest
from django.db import transaction
from playwright.sync_api import expect

from moderation.events import outbox
from moderation.events.models import Event
from moderation.models import Image

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS
from .test_review_browser import SameDocument, signed_in  # noqa: F401 - the fixture


@pytest.fixture
def approved_by_imm(make_image) -> Image:
    """An image IMM approved, with the event its routing writes."""
    image = make_image(status=Image.Status.APPROVED)
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        outbox.emit_outcome(
            image=image,
            type=Event.Type.APPROVED,
            decided_by=outbox.DecidedBy.imm(),
            verdict=Image.Status.APPROVED,
            reason="IMM said pass",
            previous_status=Image.Status.SUBMITTED,
            now=image.status_changed_at,
        )
    return image


def test_an_admin_overrides_then_reopens_an_image_from_its_page_without_a_page_load(
    signed_in,  # noqa: F811 - the fixture imported above
    admin_user,
    approved_by_imm,
):
    image = approved_by_imm
    page = signed_in("ada")
    page.goto(f"/images/{image.pk}/")
    expect(page.locator("#outcome")).to_contain_text("approved by IMM")
    same = SameDocument(page)

    # By keyboard: the reason, then Tab to the button and Enter.
    page.get_by_label("Why is it rejected after all?").fill("a knife in the corner")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Change to rejected")).to_be_focused()
    page.keyboard.press("Enter")

    expect(page.locator("#outcome")).to_contain_text(f"Image {image.pk} is now rejected.")
    expect(page.locator("#outcome")).to_contain_text("outcome overridden by ada")
    expect(page.locator("#image-status")).to_have_text("Rejected")
    expect(page.locator("#history")).to_contain_text("Outcome overridden by an admin")
    expect(page.get_by_role("button", name="Change to approved")).to_be_visible()
    same.check()
    image.refresh_from_db()
    assert image.status == Image.Status.REJECTED

    if os.environ.get("SCREENSHOTS") == "1":
        page.locator("#outcome").scroll_into_view_if_needed()
        page.screenshot(path=DOCS / "image-outcome.png", full_page=True)

    page.get_by_label("Why should a reviewer look again?").fill("ask for a second opinion")
    page.get_by_role("button", name="Reopen for review").click()

    expect(page.locator("#image-status")).to_have_text("Awaiting review")
    expect(page.locator("#outcome")).to_contain_text("sent back to review by ada")
    expect(page.get_by_role("button", name="Reopen for review")).to_have_count(0)
    same.check()
    image.refresh_from_db()
    assert image.status == Image.Status.AWAITING_REVIEW
    assert list(
        Event.objects.filter(image=image).order_by("sequence").values_list("type", flat=True)
    ) == ["image.approved", "image.overridden", "image.reopened"]


def test_a_stale_page_is_told_in_the_card_that_the_image_changed(
    signed_in,  # noqa: F811 - the fixture imported above
    admin_user,
    approved_by_imm,
):
    image = approved_by_imm
    page = signed_in("ada")
    page.goto(f"/images/{image.pk}/")
    # Another admin sends it back to review meanwhile.
    Image.objects.filter(pk=image.pk).update(status=Image.Status.REJECTED)

    page.get_by_label("Why should a reviewer look again?").fill("look again")
    page.get_by_role("button", name="Reopen for review").click()

    expect(page.get_by_role("alert")).to_contain_text(
        f"Image {image.pk} changed meanwhile: it is rejected now. Nothing was changed."
    )
    expect(page.locator("#image-status")).to_have_text("Rejected")
    assert Image.objects.get(pk=image.pk).status == Image.Status.REJECTED
