"""IMM calibration: agreement by category and rate band, the thresholds backtest, and the page."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from moderation.models import AuditEntry, Image, ImageCategory, RoutingRule
from moderation.routing import Thresholds
from reviews.calibration import backtest, figures
from reviews.dashboard.rollups import run_pass
from reviews.models import Decision

pytestmark = pytest.mark.django_db

URL = "/reviews/calibration/"
SAVE_URL = "/reviews/calibration/thresholds/"


def bare_image(
    *,
    status: str = Image.Status.APPROVED,
    suggestion: str = "review",
    categories: dict[str, float | None] | None = None,
    uploaded_days_ago: float = 1,
    by_person: bool = False,
) -> Image:
    """An image row as the pipeline leaves it, without pixels (the figures never read them)."""
    digest = uuid.uuid4().hex * 2
    image = Image.objects.create(
        file=f"images/{digest[:2]}/{digest}.png",
        sha256=digest,
        format="PNG",
        width=300,
        height=300,
        byte_size=1000,
        original_filename="x.png",
        status=status,
        imm_suggestion=suggestion,
        human_decided_at=timezone.now() if by_person else None,
    )
    Image.objects.filter(pk=image.pk).update(
        uploaded_at=timezone.now() - timedelta(days=uploaded_days_ago)
    )
    for category, rate in (categories or {}).items():
        ImageCategory.objects.create(
            image=image, category=category, rate=rate, suggestion=suggestion
        )
    return image


def decision(
    image: Image, reviewer, verdict: str, *, days_ago: float = 1, after: str | None = None
) -> Decision:
    if after is None:
        after = {
            "approve": Image.Status.APPROVED,
            "reject": Image.Status.REJECTED,
            "escalate": Image.Status.ESCALATED,
        }[verdict]
    return Decision.objects.create(
        image=image,
        reviewer=reviewer,
        verdict=verdict,
        status_before=Image.Status.AWAITING_REVIEW,
        status_after=after,
        created_at=timezone.now() - timedelta(days=days_ago),
    )


def undo(original: Decision) -> Decision:
    return Decision.objects.create(
        image=original.image,
        reviewer=original.reviewer,
        verdict=Decision.Verdict.UNDO,
        undoes=original,
        status_before=original.status_after,
        status_after=original.status_before,
        created_at=original.created_at + timedelta(seconds=5),
    )


def as_counts(tables: list[figures.CategoryFigures]) -> dict[tuple[str, int | None], tuple]:
    return {
        (table.category, band.band): (
            band.decisions,
            band.rejected,
            band.imm_pass,
            band.pass_approved,
            band.imm_block,
            band.block_rejected,
            band.imm_review,
        )
        for table in tables
        for band in table.bands
    }


def test_the_figures_agree_with_a_direct_count_on_random_data(admin_user, reviewer_user):
    rng = random.Random(12)
    people = [admin_user, reviewer_user]
    since_days = 30
    made = []
    for _ in range(160):
        categories = {
            c: rng.choice([None, round(rng.uniform(0, 100), 2), 100.0, 10.0])
            for c in rng.sample(["porn", "sexy", "bloody"], rng.randint(0, 2))
        }
        image = bare_image(
            suggestion=rng.choice(["pass", "block", "review"]), categories=categories
        )
        decisions = []
        for _ in range(rng.randint(0, 3)):
            made_one = decision(
                image,
                rng.choice(people),
                rng.choice(["approve", "reject", "escalate"]),
                days_ago=rng.choice([0.5, 2, 10, 29, 31, 60]),
            )
            if rng.random() < 0.2:
                undo(made_one)
            else:
                decisions.append(made_one)
        made.append((image, categories, decisions))

    # The direct count: each image's latest standing approve or reject in the range, per category.
    since = timezone.now() - timedelta(days=since_days)
    expected: Counter = Counter()
    for image, categories, decisions in made:
        counted = [
            d for d in decisions if d.created_at >= since and d.verdict in ("approve", "reject")
        ]
        if not counted:
            continue
        latest = max(counted, key=lambda d: d.pk)
        rejected = latest.verdict == "reject"
        for category, rate in categories.items():
            band = None if rate is None else min(int(rate // 10), 9)
            key = (category, band)
            expected[key, "decisions"] += 1
            expected[key, "rejected"] += rejected
            if image.imm_suggestion == "pass":
                expected[key, "pass"] += 1
                expected[key, "pass_approved"] += not rejected
            elif image.imm_suggestion == "block":
                expected[key, "block"] += 1
                expected[key, "block_rejected"] += rejected
            else:
                expected[key, "review"] += 1
    keys = {key for key, _ in expected}
    direct = {
        key: tuple(
            expected[key, name]
            for name in (
                "decisions",
                "rejected",
                "pass",
                "pass_approved",
                "block",
                "block_rejected",
                "review",
            )
        )
        for key in keys
    }

    run_pass()
    assert as_counts(figures.agreement(since=since)) == direct
    assert len(direct) > 15  # the data reached many bands, with and without rates


def test_a_rate_of_exactly_a_band_edge_falls_in_the_upper_band(admin_user):
    for rate in (0.0, 9.99, 10.0, 89.99, 90.0, 100.0):
        image = bare_image(suggestion="block", categories={"porn": rate})
        decision(image, admin_user, "reject")
    run_pass()

    [table] = figures.agreement(since=timezone.now() - timedelta(days=30))

    assert {band.label: band.decisions for band in table.bands} == {
        "0-10": 2,
        "10-20": 1,
        "80-90": 1,
        "90-100": 2,
    }
    assert table.agreement == 100


def test_an_admin_override_replaces_the_reviewer_s_decision_in_the_figures(admin_user):
    image = bare_image(suggestion="block", categories={"porn": 55})
    decision(image, admin_user, "reject", days_ago=2)
    decision(image, admin_user, "override", days_ago=1, after=Image.Status.APPROVED)
    run_pass()

    [table] = figures.agreement(since=timezone.now() - timedelta(days=30))

    [band] = table.bands
    assert (band.decisions, band.imm_block, band.block_rejected) == (1, 1, 0)
    assert table.agreement == 0


# --- The backtest -------------------------------------------------------------------------------


@pytest.fixture
def history(db):
    """Images naming porn, one per situation the backtest tells apart (thresholds 40 and 95)."""
    A, R, W = Image.Status.APPROVED, Image.Status.REJECTED, Image.Status.AWAITING_REVIEW
    rows = [
        # (rate, status now, decided by a person)
        (10, R, True),  # would approve, a person rejected it
        (20, R, False),  # would approve, IMM rejected it
        (97, A, True),  # would reject, a person approved it
        (30, A, False),  # would approve, as IMM did
        (30, A, True),  # would approve, as a person did
        (99, R, False),  # would reject, as IMM did
        (96, R, True),  # would reject, as a person did
        (35, W, False),  # would approve one waiting for a person now
        (60, A, True),  # people band: a person decided it already
        (60, W, False),  # people band: waiting anyway
        (70, R, False),  # people band: IMM had rejected it
        (None, A, False),  # no rate: people band
    ]
    for rate, status, person in rows:
        bare_image(status=status, categories={"porn": rate}, by_person=person)
    # Not counted: another category, before the range, not settled by anything yet.
    bare_image(categories={"sexy": 10})
    bare_image(categories={"porn": 10}, uploaded_days_ago=45)
    bare_image(status=Image.Status.SUBMITTED, categories={"porn": 10})
    run_pass()  # the backtest reads the rollups the pass keeps


def test_the_backtest_counts_each_kind_of_difference(history):
    result = backtest.run(
        category="porn",
        thresholds=Thresholds(40.0, 95.0),
        since=timezone.now() - timedelta(days=30),
    )

    assert result.items == 12
    assert result.no_rate == 1
    assert result.would_approve_was_rejected == 2
    assert result.would_reject_was_approved == 1
    assert result.differently == 3
    assert result.would_approve_was_approved == 2
    assert result.would_reject_was_rejected == 2
    assert result.open_auto_decided == 1
    assert result.people_as_before == 2
    assert result.people_newly == 2
    # Decided by a person and auto-decided now: 10, 97, 30 (person), 96; waiting: 35.
    assert result.people_spared == 5


def test_a_one_sided_backtest_sends_the_other_side_to_people(history):
    result = backtest.run(
        category="porn",
        thresholds=Thresholds(None, 95.0),
        since=timezone.now() - timedelta(days=30),
    )

    assert result.would_approve_was_rejected == 0
    assert result.would_approve_was_approved == 0
    assert (result.would_reject_was_approved, result.would_reject_was_rejected) == (1, 2)
    assert result.people_spared == 2


# --- The page -------------------------------------------------------------------------------


def test_only_admins_see_the_calibration_page(client, reviewer_client, admin_client):
    assert client.get(URL).status_code == 302  # to sign in
    assert reviewer_client.get(URL).status_code == 403
    assert reviewer_client.get(URL, {"category": "porn", "reject_from": "95"}).status_code == 403
    assert (
        reviewer_client.post(SAVE_URL, {"category": "porn", "reject_from": "95"}).status_code == 403
    )
    assert not RoutingRule.objects.exists()
    response = admin_client.get(URL)
    assert response.status_code == 200
    assert b"IMM calibration" in response.content


def test_the_page_shows_each_band_with_its_count(admin_client, admin_user):
    for rate in (91, 92, 93):
        decision(bare_image(suggestion="block", categories={"porn": rate}), admin_user, "reject")
    decision(bare_image(suggestion="pass", categories={"porn": 5}), admin_user, "reject")
    run_pass()

    response = admin_client.get(URL, {"days": "7"})

    text = response.content.decode()
    assert "n = 4" in text
    assert "agreed with IMM's pass or block 75%" in text
    assert '<th scope="row">90-100</th>' in text
    assert response.context["days"] == 7


@pytest.mark.parametrize("days", ["5", "-30", "30x", "99999999999999999999"])
def test_a_range_other_than_the_offered_ones_is_refused(admin_client, days):
    response = admin_client.get(URL, {"days": days})

    assert response.status_code == 400
    assert "The range is one of 7, 30, 90 days." in response.content.decode()


def test_the_backtest_fragment_answers_htmx_with_its_counts(admin_client, history):
    response = admin_client.get(
        URL,
        {"category": "porn", "approve_below": "40", "reject_from": "95"},
        HTTP_HX_REQUEST="true",
    )

    assert response.status_code == 200
    text = response.content.decode()
    assert "<html" not in text
    assert "would have decided <strong>3</strong> of them differently" in text
    assert "People would no longer see <strong>5</strong>" in text
    assert 'name="reject_from" value="95"' in text
    assert "HX-Request" in response["Vary"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"category": "porn", "approve_below": "96", "reject_from": "95"}, "must not be higher"),
        ({"category": "porn", "approve_below": "0.4", "reject_from": "101"}, "from 0 to 100"),
        ({"category": "nudity", "reject_from": "95"}, "is not one of IMM&#x27;s categories"),
        ({"category": "porn"}, "Enter an auto-approve threshold"),
    ],
)
def test_bad_thresholds_get_a_400_with_the_reason(admin_client, query, message):
    response = admin_client.get(URL, query, HTTP_HX_REQUEST="true")

    assert response.status_code == 400
    assert message in response.content.decode()


def test_saving_thresholds_makes_the_rule_and_audits_it(admin_client, admin_user):
    response = admin_client.post(
        SAVE_URL, {"category": "sexy", "approve_below": "30", "reject_from": "90"}
    )

    assert response.status_code == 302
    rule = RoutingRule.objects.get()
    assert (rule.category, rule.approve_below, rule.reject_from) == ("sexy", 30.0, 90.0)
    entry = AuditEntry.objects.get(action="routing.thresholds_set")
    assert entry.actor == admin_user
    assert entry.detail["category"] == "sexy"
    page = admin_client.get(URL).content.decode()
    assert "people decide rates from 30 to below 90" in page


def test_a_bad_save_is_refused_and_changes_nothing(admin_client):
    response = admin_client.post(
        SAVE_URL, {"category": "sexy", "approve_below": "90", "reject_from": "30"}
    )

    assert response.status_code == 400
    assert "must not be higher than the reject threshold" in response.content.decode()
    assert not RoutingRule.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="routing.").exists()


def test_removing_a_rule_is_audited(admin_client, admin_user):
    rule = RoutingRule.objects.create(category="porn", approve_below=10, reject_from=90)

    response = admin_client.post(SAVE_URL, {"remove": str(rule.pk)})

    assert response.status_code == 302
    assert not RoutingRule.objects.exists()
    entry = AuditEntry.objects.get(action="routing.rule_removed")
    assert (entry.actor, entry.detail) == (admin_user, {"category": "porn"})


@pytest.mark.parametrize("rule_id", ["999", "x", "-1", ""])
def test_removing_a_rule_that_is_not_there_is_a_404(admin_client, rule_id):
    response = admin_client.post(SAVE_URL, {"remove": rule_id})

    assert response.status_code == 404
    assert "There is no such rule." in response.content.decode()


def test_the_save_endpoint_takes_only_posts(admin_client):
    assert admin_client.get(SAVE_URL).status_code == 405
