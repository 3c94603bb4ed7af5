"""QA in a real browser: the QA pane (blurred, reveal with V, overturn by keyboard), a blind
item served by Start reviewing and answered by keyboard, and the adjudication list.

Drives Debian's Chromium through Playwright (tests/browser.py); never downloads a browser.
`SCREENSHOTS=1` also writes docs/qa.png and docs/adjudication.png.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from moderation import services as intake
from moderation.models import Image
from reviews import services as reviews
from reviews.models import Reveal
from reviews.qa import services
from reviews.qa.models import DoubleReview, ImmCheck, Rate

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS, VIEWPORT
from .test_qa import user
from .test_review_browser import sign_in, street

BLURRED = re.compile(r"blur\(")
SCREENSHOTS = os.environ.get("SCREENSHOTS") == "1"


@pytest.fixture
def signed_in(browser, live_server) -> Iterator[Callable[[str], Page]]:
    contexts = []
    errors: list[str] = []

    def open_as(username: str) -> Page:
        context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
        context.on("page", lambda tab: tab.on("pageerror", lambda error: errors.append(str(error))))
        contexts.append(context)
        page = context.new_page()
        sign_in(page, username)
        return page

    yield open_as
    for context in contexts:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def street_image(admin_user, status: str, **fields: object) -> Image:
    result = intake.ingest(fp=io.BytesIO(street()), filename="street.jpg", actor=admin_user)
    assert result.image is not None, result.reason
    Image.objects.filter(pk=result.image.pk).update(status=status, **fields)
    return Image.objects.get(pk=result.image.pk)


@pytest.mark.django_db(transaction=True)
def test_the_qa_pane_is_blurred_reveals_with_v_and_overturns_by_keyboard(signed_in, admin_user):
    image = street_image(
        admin_user,
        Image.Status.APPROVED,
        imm_suggestion="pass",
        imm_categories=[],
        status_changed_at=timezone.now() - timedelta(minutes=40),
    )
    ImmCheck.objects.create(
        image=image,
        suggestion="pass",
        categories=[],
        settled_as=Image.Status.APPROVED,
        sampled_at=timezone.now() - timedelta(minutes=39),
    )
    user("rex")
    page = signed_in("rex")
    page.goto("/reviews/qa/imm/")
    page.get_by_role("button", name="Start QA").click()
    pane = page.locator("#qa-pane")
    expect(pane.get_by_role("heading", name=re.compile("IMM said pass"))).to_be_visible()
    stage = pane.locator("figure.sensitive img")
    expect(stage).to_have_css("filter", BLURRED)
    page.wait_for_function(
        "() => [...document.images].every((img) => img.complete && img.naturalWidth > 0)"
    )
    if SCREENSHOTS:
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=DOCS / "qa.png")
    page.keyboard.press("v")
    expect(pane.locator("figure.sensitive")).to_have_class(re.compile("revealed"))
    expect(stage).to_have_attribute("src", re.compile(r"/preview$"))
    page.wait_for_function("() => document.querySelector('#qa-pane img').naturalWidth > 0")
    assert Reveal.objects.filter(image=image, variant="preview").exists()
    # O goes to the reason; Enter there overturns (never confirms).
    page.keyboard.press("o")
    reason = pane.locator("[data-overturn-reason]")
    expect(reason).to_be_focused()
    reason.fill("a weapon in the corner")
    reason.press("Enter")
    expect(page.get_by_text(f"Overturned: image {image.pk} is now rejected.")).to_be_visible()
    image.refresh_from_db()
    assert image.status == Image.Status.REJECTED
    assert ImmCheck.objects.get(image=image).state == ImmCheck.State.OVERTURNED


@pytest.mark.django_db(transaction=True)
def test_a_blind_item_comes_through_start_reviewing_and_is_answered_by_keyboard(
    signed_in, admin_user
):
    first = user("firstperson")
    waiting = street_image(admin_user, Image.Status.AWAITING_REVIEW, imm_suggestion="review")
    Rate.objects.create(kind="double", percent=100)
    claim = reviews.claim_next(reviewer=first)
    assert claim is not None
    reviews.decide(image_id=claim.image_id, reviewer=first, verdict="reject", reason="gore")
    Rate.objects.all().delete()
    user("rex")
    page = signed_in("rex")
    page.goto("/reviews/")
    page.get_by_role("button", name="Start reviewing").first.click()
    # Start reviewing is a plain form: the blind pane comes as a new page, and a key pressed
    # before its scripts ran would be lost (as the review browser tests wait, wait for load).
    page.wait_for_url(re.compile(r"/reviews/qa/item/$"), wait_until="load")
    pane = page.locator("#pane")
    expect(pane).to_have_attribute("data-image", str(waiting.pk))
    expect(pane.locator("figure.sensitive img")).to_have_css("filter", BLURRED)
    assert "firstperson" not in page.content()
    assert "gore" not in page.content()
    if SCREENSHOTS:  # looked at, not kept: the blind pane must look like the review pane
        page.screenshot(path="/tmp/qa-blind-pane.png")
    page.keyboard.press("a")
    expect(page.get_by_text(f"Image {waiting.pk} approved.")).to_be_visible()
    double = DoubleReview.objects.get()
    assert (double.state, double.second_verdict) == (DoubleReview.State.DISPUTED, "approve")
    assert Image.objects.get(pk=waiting.pk).status == Image.Status.REJECTED

    admin = signed_in("ada")
    admin.goto("/reviews/qa/adjudication/")
    expect(admin.get_by_text("firstperson")).to_be_visible()
    if SCREENSHOTS:
        admin.wait_for_function(
            "() => [...document.images].every((img) => img.complete && img.naturalWidth > 0)"
        )
        admin.screenshot(path=DOCS / "adjudication.png")
    admin.get_by_label("Reason").fill("the second reviewer is right")
    admin.get_by_role("button", name="Rule approve").click()
    expect(admin.get_by_text("No disagreements are waiting.")).to_be_visible()
    if SCREENSHOTS:
        for path in ("/reviews/qa/", "/reviews/qa/gold/", "/reviews/qa/imm/"):
            admin.goto(path)
            admin.screenshot(path=f"/tmp/qa-{path.strip('/').replace('/', '-')}.png")
    assert Image.objects.get(pk=waiting.pk).status == Image.Status.APPROVED
    assert services.claim_blind(first) is None
