"""The team dashboard page and its CSV downloads: who may see them, what they show, bad input."""

from __future__ import annotations

import csv
import io
import random
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from reviews.dashboard import figures, rollups
from reviews.dashboard.models import HourlyFigures, RollupState

from .dashboard_data import Seeder, direct_figures, hour_of


@pytest.fixture
def rolled(db):
    now = timezone.now()
    seeder = Seeder(random.Random(7), now=now)
    seeder.fill(images=40, moves=50, decisions=150, hours=24 * 8)
    rollups.run_pass(now=now)
    return now


def read_csv(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode()
    assert body.startswith("\ufeff")
    return list(csv.reader(io.StringIO(body[1:])))


def test_an_admin_lands_on_the_dashboard_and_sees_every_chart(admin_client, rolled):
    assert admin_client.get("/")["Location"] == reverse("dashboard")
    response = admin_client.get(reverse("dashboard"))
    assert response.status_code == 200
    html = response.content.decode()
    for name in figures.CHART_NAMES:
        assert f'id="chart-data-{name}"' in html
        assert f'data-chart="chart-data-{name}"' in html
        assert f"{reverse('dashboard_csv', args=[name])}?range=24h" in html
    assert "The numbers as a table" in html
    assert "IMM suggested review for gave no verdict to agree with" in html


def test_reviewers_keep_their_queue_and_get_403_from_the_dashboard_and_its_csv(
    reviewer_client, rolled
):
    assert reviewer_client.get("/")["Location"] == reverse("review_queue")
    assert reviewer_client.get(reverse("dashboard")).status_code == 403
    assert reviewer_client.get(reverse("dashboard_csv", args=["flow"])).status_code == 403


def test_anonymous_people_are_sent_to_sign_in(db):
    client = Client()
    for url in (reverse("dashboard"), reverse("dashboard_csv", args=["reviewers"])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("bad", ["1y", "24H", "x" * 500, "../24h"])
def test_an_unknown_range_is_a_clear_400(admin_client, db, bad):
    response = admin_client.get(reverse("dashboard"), {"range": bad})
    assert response.status_code == 400
    assert "Unknown range" in response.content.decode()
    assert "24h, 7d, 30d" in response.content.decode()
    response = admin_client.get(reverse("dashboard_csv", args=["flow"]), {"range": bad})
    assert response.status_code == 400


def test_an_unknown_chart_is_a_404(admin_client, db):
    response = admin_client.get("/dashboard/nothing.csv")
    assert response.status_code == 404
    assert "queue, flow, sla, escalations, reviewers, agreement" in response.content.decode()


def test_writing_to_the_dashboard_is_refused(admin_client, db):
    assert admin_client.post(reverse("dashboard")).status_code == 405


@pytest.mark.parametrize(("key", "rows"), [("24h", 24), ("7d", 28), ("30d", 30)])
def test_the_flow_csv_has_one_row_per_period_and_the_rollups_numbers(
    admin_client, rolled, key, rows
):
    response = admin_client.get(reverse("dashboard_csv", args=["flow"]), {"range": key})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert f"dashboard-flow-{key}.csv" in response["Content-Disposition"]
    table = read_csv(response)
    assert table[0] == ["From", "Images received", "Entered the review queue", "Decided by people"]
    assert len(table) == rows + 1
    win = figures.window(figures.RANGES[key], now=rolled)
    direct = direct_figures(win.start, win.end)
    decided = sum(c.get("decided", 0) for (h, cat), c in direct.items() if cat == "")
    received = sum(c.get("received", 0) for (h, cat), c in direct.items() if cat == "")
    assert sum(int(r[3]) for r in table[1:]) == decided
    assert sum(int(r[1]) for r in table[1:]) == received
    assert decided > 0


def test_the_reviewers_csv_names_each_reviewer_with_their_decisions(admin_client, rolled):
    table = read_csv(admin_client.get(reverse("dashboard_csv", args=["reviewers"])))
    assert table[0] == ["Reviewer", "Decisions", "Escalated", "Median seconds per item"]
    start = hour_of(rolled) + timedelta(hours=1) - timedelta(hours=24)
    direct = direct_figures(start, start + timedelta(hours=24))
    assert sum(int(r[1]) for r in table[1:]) == sum(
        c.get("decided", 0) for (h, cat), c in direct.items() if cat == ""
    )
    assert {r[0] for r in table[1:]} <= {"reviewer0", "reviewer1", "reviewer2"}


def test_a_cell_that_would_be_a_spreadsheet_formula_is_made_text(admin_client, db):
    now = timezone.now()
    HourlyFigures.objects.create(hour=hour_of(now), category="=cmd|' /C calc'!A0", agreed=2)
    table = read_csv(admin_client.get(reverse("dashboard_csv", args=["agreement"])))
    assert table[1][0] == "'=cmd|' /C calc'!A0"
    assert table[1][1:4] == ["2", "0", "100.0"]


def test_the_page_reads_a_bounded_number_of_queries(
    admin_client, rolled, django_assert_max_num_queries
):
    for key in figures.RANGES:
        with django_assert_max_num_queries(20):
            assert admin_client.get(reverse("dashboard"), {"range": key}).status_code == 200


def test_the_reviewer_totals_the_pass_stored_match_those_added_up_from_hours_and_days(rolled):
    """Each range's totals are stored by the pass; added up from day rows and the hours at the
    edges, they are the same, and they match a direct count of the decisions."""
    state = RollupState.objects.get()
    assert state.ranges_end == figures.window(figures.RANGES["24h"], now=rolled).end
    for key in figures.RANGES:
        win = figures.window(figures.RANGES[key], now=rolled)
        stored = figures.reviewers_chart(win, ranges_end=state.ranges_end)
        added_up = figures.reviewers_chart(win)
        assert stored.rows == added_up.rows
        assert stored.rows
        direct = direct_figures(win.start, win.end)
        assert sum(row[1] for row in stored.rows) == sum(
            c.get("decided", 0) for (h, cat), c in direct.items() if cat == ""
        )


def test_the_dashboard_shows_reviewer_accuracy_and_todays_exposure(
    admin_client, reviewer_user, rolled
):
    from reviews.exposure.models import ExposureCap, ExposureCount

    ExposureCap.objects.create(category="porn", images=5)
    ExposureCount.objects.create(
        reviewer=reviewer_user, day=timezone.localdate(), category="porn", previews=4, originals=1
    )
    ExposureCount.objects.create(
        reviewer=reviewer_user, day=timezone.localdate() - timedelta(days=1), category="gore"
    )
    html = admin_client.get(reverse("dashboard")).content.decode()
    assert "Reviewer accuracy" in html
    assert "Exposure today" in html
    row = html[html.index('id="exposure-today-title"') :]
    assert f'<th scope="row">{reviewer_user.username}</th>' in row
    assert "<td>porn</td>" in row
    assert "<td>5</td>" in row
    assert "(reached)" in row
    assert "gore" not in row  # yesterday's
