"""In Chromium: the queue's response-time column (due, overdue marked), ordering by due time,
the break reminder dismissed from the keyboard, and the README screenshots of the targets and
exposure pages.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright against pytest-django's
live_server; never downloads a browser. Skipped when Chromium is not installed.

README screenshots: `SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_queue_limits_browser.py
-k screenshot` writes docs/sla.png and docs/exposure.png (nothing is written otherwise).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from moderation.accounts import create_user
from moderation.models import Image, ImageCategory
from reviews.exposure import counting
from reviews.exposure.models import ExposureCap
from reviews.models import Claim, Decision
from reviews.sla import due
from reviews.sla.models import SlaTarget

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS, VIEWPORT
from .conftest import PASSWORD


@pytest.fixture
def signed_in(browser, live_server) -> Iterator[Callable[[str], Page]]:
    contexts = []
    errors: list[str] = []

    def open_as(username: str) -> Page:
        context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
        context.on("page", lambda tab: tab.on("pageerror", lambda error: errors.append(str(error))))
        contexts.append(context)
        page = context.new_page()
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        return page

    yield open_as
    for context in contexts:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def waiting(make_image, *items: tuple[str, timedelta]) -> list[Image]:
    """Waiting images, one per (category, how long it has waited), with their due rows."""
    images = []
    for category, age in items:
        image = make_image(status=Image.Status.AWAITING_REVIEW)
        Image.objects.filter(pk=image.pk).update(
            imm_suggestion="review",
            imm_categories=[category],
            imm_rate=88.0,
            status_changed_at=timezone.now() - age,
        )
        ImageCategory.objects.create(image=image, category=category)
        image.refresh_from_db()
        due.sync(image)
        images.append(image)
    return images


def first_row_link(page: Page):
    return page.locator("table.queue tbody tr").first.get_by_role("link", name=re.compile("^Image"))


def test_the_queue_shows_due_times_marks_the_overdue_and_orders_by_due(
    signed_in, reviewer_user, make_image
):
    SlaTarget.objects.create(category="", minutes=600)
    SlaTarget.objects.create(category="porn", minutes=30)
    oldest, overdue, fresh = waiting(
        make_image,
        ("sexy", timedelta(hours=3)),  # due in a little under 7 h
        ("porn", timedelta(hours=2, minutes=40)),  # overdue by 2 h 10 min
        ("porn", timedelta(minutes=5)),  # due in 25 min
    )
    page = signed_in("rex")
    page.goto("/reviews/")

    expect(page.get_by_role("columnheader", name="Response")).to_be_visible()
    late = page.locator("table.queue .overdue")
    expect(late).to_have_count(1)
    expect(late).to_have_text("overdue by 2 h 10 min")
    # Marked, calmly: the warning tone, not the error red.
    assert late.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(246, 237, 214)"
    expect(page.get_by_text("due in 24 min").or_(page.get_by_text("due in 25 min"))).to_be_visible()
    expect(page.get_by_text("due in 6 h", exact=True)).to_be_visible()  # 6 h 59 min
    expect(first_row_link(page)).to_have_text(f"Image {oldest.pk}")

    page.get_by_label("Most urgent first").check()  # saves and reloads (data-autosubmit)
    expect(page.get_by_label("Most urgent first")).to_be_checked()
    expect(first_row_link(page)).to_have_text(f"Image {overdue.pk}")
    rows = page.locator("table.queue tbody tr")
    expect(rows.nth(1)).to_contain_text(f"Image {fresh.pk}")

    page.get_by_role("button", name="Start reviewing").click()
    page.wait_for_url(re.compile(rf"/reviews/{overdue.pk}/$"))
    expect(page.locator("#pane .due-line")).to_have_text("Overdue by 2 h 10 min")
    assert Claim.objects.get(reviewer=reviewer_user).image_id == overdue.pk


def test_the_break_reminder_is_dismissed_from_the_keyboard(signed_in, reviewer_user, make_image):
    [image] = waiting(make_image, ("sexy", timedelta(minutes=5)))
    now = timezone.now()
    for minutes in range(0, 56, 5):
        Decision.objects.create(
            image=image,
            reviewer=reviewer_user,
            verdict=Decision.Verdict.APPROVE,
            status_before=Image.Status.AWAITING_REVIEW,
            status_after=Image.Status.APPROVED,
            created_at=now - timedelta(minutes=55) + timedelta(minutes=minutes),
        )
    page = signed_in("rex")
    page.goto("/reviews/")
    notice = page.get_by_role("status").filter(has_text="Time for a short break?")
    expect(notice).to_be_visible()

    dismiss = notice.get_by_role("button", name="Dismiss")
    dismiss.focus()
    page.keyboard.press("Enter")

    expect(notice).to_have_count(0)
    page.reload()
    expect(page.get_by_text("Time for a short break?")).to_have_count(0)


@pytest.mark.skipif(
    os.environ.get("SCREENSHOTS") != "1",
    reason="writes docs/sla.png and docs/exposure.png only with SCREENSHOTS=1",
)
def test_readme_screenshot(signed_in, admin_user, reviewer_user, make_image):
    SlaTarget.objects.create(category="", minutes=240, updated_by=admin_user)
    SlaTarget.objects.create(category="porn", minutes=30, updated_by=admin_user)
    SlaTarget.objects.create(category="bloody", minutes=60, updated_by=admin_user)
    ExposureCap.objects.create(category="", images=300, updated_by=admin_user)
    ExposureCap.objects.create(category="porn", images=150, updated_by=admin_user)
    images = waiting(
        make_image,
        ("porn", timedelta(hours=2, minutes=10)),
        ("bloody", timedelta(minutes=50)),
        ("sexy", timedelta(hours=1, minutes=5)),
        ("porn", timedelta(minutes=12)),
        ("weapon", timedelta(minutes=3)),
    )
    rita = create_user(username="rita", role="reviewer", password=PASSWORD, validate=False)
    for who, shows in ((reviewer_user, [0, 0, 1, 2, 3]), (rita, [1, 1, 4]), (admin_user, [2])):
        for index in shows:
            counting.count(image=images[index], user=who, variant="preview")
    counting.count(image=images[0], user=admin_user, variant="original")
    DOCS.mkdir(exist_ok=True)

    page = signed_in("rex")
    page.get_by_role("link", name="Review queue").click()
    page.get_by_label("Most urgent first").check()
    expect(page.get_by_label("Most urgent first")).to_be_checked()
    page.screenshot(path=DOCS / "sla.png", full_page=True)

    admin = signed_in("ada")
    admin.goto("/reviews/sla/")
    admin.screenshot(path=DOCS / "sla-targets.png", full_page=True)
    admin.goto("/reviews/exposure/")
    admin.screenshot(path=DOCS / "exposure.png", full_page=True)


def test_at_a_limit_the_queue_says_why_and_start_reviewing_hands_another_category(
    signed_in, reviewer_user, make_image, tmp_path
):
    """A reviewer at today's porn limit who opted out of gore: the queue says both, Start
    reviewing hands them the newer ad item (the older porn and gore ones stay for others), and
    their own page shows the limit reached and the opt-out ticked."""
    porn, _gore, ad = waiting(
        make_image,
        ("porn", timedelta(hours=3)),
        ("gore", timedelta(hours=2)),
        ("ad", timedelta(minutes=5)),
    )
    ExposureCap.objects.create(category="porn", images=2)
    for _ in range(2):
        counting.count(image=porn, user=reviewer_user, variant="preview")
    from reviews.exposure.models import OptOut

    OptOut.objects.create(reviewer=reviewer_user, category="gore")
    page = signed_in(reviewer_user.username)
    page.goto("/reviews/")
    notice = page.get_by_text("You have reached today's limit for porn (2 images)")
    expect(notice).to_be_visible()
    expect(page.get_by_text("You have opted out of gore")).to_be_visible()
    shots = os.environ.get("SHOTS_DIR")
    if shots:
        page.screenshot(path=f"{shots}/queue-at-limit.png", full_page=True)
    page.get_by_role("button", name=re.compile("Start reviewing")).first.click()
    expect(page).to_have_url(re.compile(rf"/reviews/{ad.pk}/$"))
    assert Claim.objects.get(reviewer=reviewer_user).image_id == ad.pk

    page.goto("/reviews/exposure/mine/")
    expect(page.get_by_text("You have reached today's limit for porn (2 images)")).to_be_visible()
    expect(page.get_by_role("checkbox", name="gore")).to_be_checked()
    if shots:
        page.screenshot(path=f"{shots}/exposure-mine.png", full_page=True)
