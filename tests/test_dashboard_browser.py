"""The team dashboard in Chromium: every chart is drawn, with the rollups' numbers."""

from __future__ import annotations

import os
import random
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from moderation.models import Image
from reviews.dashboard import figures, rollups

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS, VIEWPORT
from .conftest import PASSWORD
from .dashboard_data import Seeder


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={**VIEWPORT, "height": 1000}, base_url=live_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def seed_a_day(now) -> None:
    """A day of work, with a rollup pass every hour over a queue that grows and shrinks."""
    rng = random.Random(12)
    seeder = Seeder(rng, now=now, reviewers=4)
    seeder.fill(images=120, moves=150, decisions=400, hours=24)
    for hours_back in range(23, -1, -1):
        waiting = rng.sample(seeder.images, 20 + abs(12 - hours_back) * 3)
        Image.objects.update(status=Image.Status.APPROVED)
        Image.objects.filter(pk__in=[i.pk for i in waiting]).update(
            status=Image.Status.AWAITING_REVIEW
        )
        rollups.run_pass(now=now - timedelta(hours=hours_back))


CHART_POINTS = """canvas => {
  const chart = canvas.chart;
  const values = chart.data.datasets.flatMap(d => d.data).filter(v => v !== null);
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
  return {points: values.length, total: values.reduce((a, b) => a + b, 0), painted};
}"""


def test_the_dashboard_draws_every_chart_with_the_rollups_numbers(page, admin_user):
    now = timezone.now()
    seed_a_day(now)
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Team dashboard")).to_be_visible()
    expect(page.get_by_role("link", name="Dashboard")).to_have_attribute("aria-current", "page")

    expected = figures.dashboard(figures.RANGES["24h"])["charts"]
    for name in figures.CHART_NAMES:
        canvas = page.locator(f'canvas[data-chart="chart-data-{name}"]')
        expect(canvas).to_be_visible()
        drawn = canvas.evaluate(CHART_POINTS)
        chart = expected[name]
        values = [v for s in chart.series for v in s.values if v is not None]
        assert drawn["points"] == len(values) > 0, name
        assert drawn["total"] == pytest.approx(sum(values)), name
        # Axes, bars and lines paint a good share of the canvas, not a blank box.
        assert drawn["painted"] > 2000, name

    # The numbers are there as a table too, opened from the keyboard.
    summary = page.locator("#chart-flow summary")
    summary.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#chart-flow table")).to_be_visible()
    expect(page.locator("#chart-flow tbody tr")).to_have_count(24)

    # Another range: the page reloads with its own buckets.
    page.get_by_role("link", name="Last 7 days").click()
    expect(page.get_by_role("link", name="Last 7 days")).to_have_attribute("aria-current", "page")
    points = page.locator('canvas[data-chart="chart-data-flow"]').evaluate(
        "canvas => canvas.chart.data.labels.length"
    )
    assert points == 28

    if os.environ.get("SCREENSHOTS") == "1":
        page.get_by_role("link", name="Last 24 hours").click()
        page.locator("#chart-flow summary").click()
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=DOCS / "dashboard.png", full_page=True)
