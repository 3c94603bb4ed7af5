"""The IMM calibration page in a real browser: the thresholds' backtest previews through htmx as
the admin types, a bad value says why in place, and saving keeps exactly what was previewed.

`SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_calibration_browser.py` also writes
docs/calibration.png for the README.
"""

from __future__ import annotations

import os
import random

import pytest
from playwright.sync_api import expect

from moderation.models import AuditEntry, Image, RoutingRule
from reviews.dashboard.rollups import run_pass

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS, VIEWPORT
from .conftest import PASSWORD
from .test_calibration import bare_image, decision


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={**VIEWPORT, "height": 1500}, base_url=live_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def decided_history(admin_user, reviewer_user) -> None:
    """Some weeks of decisions: people reject more the higher IMM's rate."""
    rng = random.Random(7)
    for category, count in (("porn", 70), ("sexy", 40), ("bloody", 12)):
        for _ in range(count):
            rate = round(rng.uniform(30, 100), 2)
            rejected = rng.random() < rate / 100
            suggestion = "block" if rate >= 90 else "review" if rate >= 50 else "pass"
            image = bare_image(
                status=Image.Status.REJECTED if rejected else Image.Status.APPROVED,
                suggestion=suggestion,
                categories={category: rate},
                by_person=True,
                uploaded_days_ago=rng.uniform(1, 25),
            )
            decision(
                image,
                rng.choice([admin_user, reviewer_user]),
                "reject" if rejected else "approve",
                days_ago=rng.uniform(0.1, 20),
            )
    # Images IMM settled without a person.
    for _ in range(30):
        rate = round(rng.uniform(0, 100), 2)
        bare_image(
            status=Image.Status.REJECTED if rate >= 75 else Image.Status.APPROVED,
            suggestion="block" if rate >= 75 else "pass",
            categories={"porn": rate},
        )
    run_pass()  # the page reads the rollups the pass keeps


def test_the_backtest_previews_as_the_admin_types_and_saves_what_it_showed(
    page, admin_user, reviewer_user
):
    decided_history(admin_user, reviewer_user)

    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator("nav summary", has_text="Policy").click()
    page.get_by_role("link", name="Calibration", exact=True).click()
    expect(page.get_by_role("heading", name="IMM calibration")).to_be_visible()
    expect(page.get_by_role("heading", name="porn n = 70")).to_be_visible()
    expect(page.locator("table.calibration").first).to_contain_text("90-100")
    address = page.url
    page.evaluate("window.calibrationPageStayed = true")

    page.get_by_role("combobox", name="Category").select_option("porn")
    page.get_by_label("Auto-approve below").fill("40")
    page.get_by_label("Auto-reject from").fill("95")
    backtest = page.locator("#backtest")
    expect(backtest).to_contain_text("Backtest: porn, approve below 40; reject from 95")
    expect(backtest).to_contain_text("People would no longer see")
    expect(backtest.get_by_role("button", name="Save these thresholds for porn")).to_be_visible()
    # An htmx swap, not a page load.
    assert page.url == address
    assert page.evaluate("window.calibrationPageStayed") is True

    if os.environ.get("SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=DOCS / "calibration.png", full_page=True)

    page.get_by_label("Auto-reject from").fill("30")
    expect(backtest.get_by_role("alert")).to_contain_text(
        "the approve threshold must not be higher than the reject threshold"
    )
    expect(backtest.get_by_role("button")).to_have_count(0)

    page.get_by_label("Auto-reject from").fill("97.5")
    expect(backtest).to_contain_text("approve below 40; reject from 97.5")
    backtest.get_by_role("button", name="Save these thresholds for porn").click()

    expect(page.locator(".messages")).to_contain_text("people decide rates from 40 to below 97.5")
    expect(page.locator("table.calibration-rules")).to_contain_text("porn")
    rule = RoutingRule.objects.get()
    assert (rule.category, rule.approve_below, rule.reject_from) == ("porn", 40.0, 97.5)
    assert AuditEntry.objects.filter(action="routing.thresholds_set", actor=admin_user).count() == 1

    page.locator("nav summary", has_text="Policy").click()
    page.get_by_role("link", name="Routing", exact=True).click()
    expect(page.locator("table.plain")).to_contain_text(
        "approve below 40; reject from 97.5; a person decides rates from 40 to below 97.5"
    )
