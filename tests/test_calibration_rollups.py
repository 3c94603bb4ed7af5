"""The calibration rollups: the figures and the backtest read from them equal the direct count
(tests/calibration_oracle.py) on random data, after late decisions, undos and IMM re-reports."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import transaction

from moderation.audit import log as audit
from moderation.models import Image, ImageCategory
from moderation.routing import Thresholds
from reviews.calibration import backtest, figures, rollups
from reviews.calibration.models import CalibrationState, DecidedDay, UploadedDay
from reviews.dashboard import rollups as dashboard
from reviews.models import Decision

from . import calibration_oracle as oracle

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 2, 30, tzinfo=UTC)
CATEGORIES = ["porn", "sexy", "bloody"]
STATUSES = [
    Image.Status.APPROVED,
    Image.Status.REJECTED,
    Image.Status.AWAITING_REVIEW,
    Image.Status.ESCALATED,
    Image.Status.FAILED,
]
THRESHOLDS = [
    Thresholds(30.0, 95.0),
    Thresholds(None, 50.0),
    Thresholds(20.0, None),
    Thresholds(12.25, 60.5),
    Thresholds(10.0, 10.0),
    Thresholds(0.0, 100.0),
    Thresholds(99.99, 100.0),
]


def random_rate(rng: random.Random) -> float | None:
    return rng.choice(
        [None, round(rng.uniform(0, 100), 2), float(rng.randint(0, 100)), 10.0, 100.0, 12.25]
    )


def image(rng: random.Random, *, uploaded_at: datetime) -> Image:
    digest = uuid.uuid4().hex * 2
    suggestion = rng.choice(["pass", "block", "review"])
    made = Image.objects.create(
        file=f"images/{digest[:2]}/{digest}.png",
        sha256=digest,
        format="PNG",
        width=300,
        height=300,
        byte_size=1000,
        original_filename="x.png",
        status=rng.choice(STATUSES),
        imm_suggestion=suggestion,
        human_decided_at=uploaded_at if rng.random() < 0.5 else None,
    )
    Image.objects.filter(pk=made.pk).update(uploaded_at=uploaded_at)
    for category in rng.sample(CATEGORIES, rng.randint(0, 2)):
        ImageCategory.objects.create(
            image=made, category=category, rate=random_rate(rng), suggestion=suggestion
        )
    return made


def decide(rng: random.Random, img: Image, reviewer, *, at: datetime) -> Decision:
    verdict = rng.choice(["approve", "reject", "escalate", "override"])
    after = {
        "approve": Image.Status.APPROVED,
        "reject": Image.Status.REJECTED,
        "escalate": Image.Status.ESCALATED,
        "override": rng.choice([Image.Status.APPROVED, Image.Status.REJECTED]),
    }[verdict]
    with transaction.atomic():
        made = Decision.objects.create(
            image=img,
            reviewer=reviewer,
            verdict=verdict,
            status_before=img.status,
            status_after=after,
            created_at=at,
        )
        Image.objects.filter(pk=img.pk).update(status=after, human_decided_at=at)
        audit.record(action="review.decided", actor=reviewer, image=img, state_after=after)
    img.refresh_from_db()
    return made


def undo(original: Decision, *, at: datetime) -> Decision:
    with transaction.atomic():
        made = Decision.objects.create(
            image=original.image,
            reviewer=original.reviewer,
            verdict=Decision.Verdict.UNDO,
            undoes=original,
            status_before=original.status_after,
            status_after=original.status_before,
            created_at=at,
        )
        Image.objects.filter(pk=original.image_id).update(status=original.status_before)
        audit.record(action="review.undone", actor=original.reviewer, image=original.image)
    return made


def re_report(rng: random.Random, img: Image) -> None:
    """IMM's result arriving again: new category rows (rates, suggestion), as _remember_verdict."""
    suggestion = rng.choice(["pass", "block", "review"])
    with transaction.atomic():
        audit.record(action="imm.result_received", actor=None, image=img)
        ImageCategory.objects.filter(image=img).delete()
        for category in rng.sample(CATEGORIES, rng.randint(1, 3)):
            ImageCategory.objects.create(
                image=img, category=category, rate=random_rate(rng), suggestion=suggestion
            )
        Image.objects.filter(pk=img.pk).update(imm_suggestion=suggestion)


def as_counts(tables: list[figures.CategoryFigures]) -> dict:
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


def assert_same_as_direct(now: datetime) -> None:
    for days in (7, 30, 90):
        since = rollups.range_start(days, now=now)
        rolled = figures.agreement(since=since)
        direct = oracle.agreement(since=since)
        assert as_counts(rolled) == as_counts(direct)
        assert [t.category for t in rolled] == [t.category for t in direct]
        for category in CATEGORIES:
            for thresholds in THRESHOLDS:
                assert backtest.run(category=category, thresholds=thresholds, since=since) == (
                    oracle.run(category=category, thresholds=thresholds, since=since)
                ), (days, category, thresholds)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_rollups_equal_the_direct_count_through_late_decisions_undos_and_re_reports(
    admin_user, reviewer_user, seed
):
    rng = random.Random(seed)
    people = [admin_user, reviewer_user]
    with time_machine.travel(NOW, tick=False) as clock:
        images = []
        for _ in range(90):
            # Upload times straddle the ranges' first days (midnights) and the kept 90 days.
            uploaded = NOW - timedelta(days=rng.choice([0.1, 1, 6.6, 7.2, 29.5, 30.4, 60, 92]))
            images.append(image(rng, uploaded_at=uploaded - timedelta(hours=rng.uniform(0, 3))))
        made: list[Decision] = []
        for img in images:
            # Times in any order of ids: a later id may carry an earlier time.
            for _ in range(rng.randint(0, 3)):
                days_ago = rng.choice([0.05, 0.5, 2, 6.9, 7.1, 29, 31, 60, 95])
                made.append(decide(rng, img, rng.choice(people), at=NOW - timedelta(days=days_ago)))
        for old in rng.sample(made, len(made) // 6):
            undo(old, at=old.created_at + timedelta(seconds=5))

        assert not rollups.is_ready()
        report = dashboard.run_pass(now=NOW)
        assert report.calibration is not None
        assert report.calibration.decided_days == rollups.KEPT_DAYS + 1
        assert rollups.is_ready()
        assert_same_as_direct(NOW)

        # A quarter of an hour later: decisions on old images, undos of old decisions, IMM
        # reporting again on images people decided long ago.
        clock.shift(timedelta(minutes=15))
        now = NOW + timedelta(minutes=15)
        standing = [d for d in made if not hasattr(d, "undone_by") and d.verdict != "undo"]
        for img in rng.sample(images, 12):
            img.refresh_from_db()
            made.append(decide(rng, img, rng.choice(people), at=now))
        for old in rng.sample(standing, min(8, len(standing))):
            if not Decision.objects.filter(undoes=old).exists():
                undo(old, at=now)
        for img in rng.sample(images, 10):
            re_report(rng, img)
        report = dashboard.run_pass(now=now)
        assert report.calibration is not None
        # Only today and the touched images' days: not the whole 90 days again.
        assert report.calibration.decided_days < rollups.KEPT_DAYS
        assert_same_as_direct(now)


def test_a_late_decision_on_an_old_image_moves_it_out_of_its_old_day(admin_user):
    rng = random.Random(7)
    with time_machine.travel(NOW, tick=False) as clock:
        img = image(rng, uploaded_at=NOW - timedelta(days=40))
        ImageCategory.objects.filter(image=img).delete()
        ImageCategory.objects.create(image=img, category="porn", rate=42.0, suggestion="pass")
        first = Decision.objects.create(
            image=img,
            reviewer=admin_user,
            verdict="approve",
            status_before="awaiting_review",
            status_after="approved",
            created_at=NOW - timedelta(days=20),
        )
        dashboard.run_pass(now=NOW)
        old_day = first.created_at.date()
        assert DecidedDay.objects.get(day=old_day).n == 1
        since = rollups.range_start(7, now=NOW)
        assert figures.agreement(since=since) == []

        clock.shift(timedelta(minutes=10))
        now = NOW + timedelta(minutes=10)
        decide_reject = Decision.objects.create(
            image=img,
            reviewer=admin_user,
            verdict="override",
            status_before="approved",
            status_after="rejected",
            created_at=now,
        )
        dashboard.run_pass(now=now)
        # The old day's +1 became a -1 on the new decision's day... for the 30 days' range the
        # image counts once, rejected; for 7 days too.
        assert not DecidedDay.objects.filter(day=old_day).exists()
        for days in (7, 30):
            [table] = figures.agreement(since=rollups.range_start(days, now=now))
            assert (table.decisions, table.bands[0].rejected) == (1, 1)
        assert decide_reject.created_at.date() == now.date()


def test_an_undo_brings_back_the_decision_it_had_replaced(admin_user):
    with time_machine.travel(NOW, tick=False) as clock:
        img = image(random.Random(3), uploaded_at=NOW - timedelta(days=50))
        ImageCategory.objects.filter(image=img).delete()
        ImageCategory.objects.create(image=img, category="sexy", rate=95.5, suggestion="block")
        Decision.objects.create(
            image=img,
            reviewer=admin_user,
            verdict="reject",
            status_before="awaiting_review",
            status_after="rejected",
            created_at=NOW - timedelta(days=45),
        )
        later = Decision.objects.create(
            image=img,
            reviewer=admin_user,
            verdict="override",
            status_before="rejected",
            status_after="approved",
            created_at=NOW - timedelta(hours=1),
        )
        dashboard.run_pass(now=NOW)
        since = rollups.range_start(90, now=NOW)
        [table] = figures.agreement(since=since)
        assert table.bands[0].rejected == 0

        clock.shift(timedelta(minutes=5))
        undo(later, at=NOW + timedelta(minutes=5))
        dashboard.run_pass(now=NOW + timedelta(minutes=5))
        [table] = figures.agreement(since=since)
        [band] = table.bands
        assert (table.decisions, band.rejected, band.block_rejected) == (1, 1, 1)
        assert as_counts(figures.agreement(since=since)) == as_counts(oracle.agreement(since=since))


def test_imm_reporting_again_moves_an_old_image_to_its_new_rate(admin_user):
    with time_machine.travel(NOW, tick=False) as clock:
        img = image(random.Random(5), uploaded_at=NOW - timedelta(days=20))
        Image.objects.filter(pk=img.pk).update(status="approved", human_decided_at=None)
        ImageCategory.objects.filter(image=img).delete()
        ImageCategory.objects.create(image=img, category="porn", rate=20.0, suggestion="pass")
        dashboard.run_pass(now=NOW)
        since = rollups.range_start(30, now=NOW)
        assert backtest.run(category="porn", thresholds=Thresholds(30.0, 90.0), since=since) == (
            backtest.Backtest("porn", Thresholds(30.0, 90.0), items=1, would_approve_was_approved=1)
        )

        clock.shift(timedelta(minutes=5))
        with transaction.atomic():
            audit.record(action="imm.result_received", actor=None, image=img)
            ImageCategory.objects.filter(image=img).update(rate=96.0, suggestion="block")
        dashboard.run_pass(now=NOW + timedelta(minutes=5))
        assert UploadedDay.objects.get(category="porn").rate_floor == 96
        assert backtest.run(category="porn", thresholds=Thresholds(30.0, 90.0), since=since) == (
            backtest.Backtest("porn", Thresholds(30.0, 90.0), items=1, would_reject_was_approved=1)
        )


def test_the_page_says_the_figures_are_being_prepared_until_the_first_pass(
    admin_client, admin_user
):
    img = image(random.Random(9), uploaded_at=NOW)
    ImageCategory.objects.create(image=img, category="weapon", rate=55.0, suggestion="pass")
    Decision.objects.create(
        image=img,
        reviewer=admin_user,
        verdict="approve",
        status_before="awaiting_review",
        status_after="approved",
        created_at=datetime.now(UTC) - timedelta(hours=1),
    )
    page = admin_client.get("/reviews/calibration/")
    assert page.status_code == 200
    assert "The figures are being prepared" in page.content.decode()
    assert "weapon" not in page.content.decode().split("agreement-heading")[1]
    fragment = admin_client.get(
        "/reviews/calibration/?category=porn&approve_below=30&reject_from=95",
        HTTP_HX_REQUEST="true",
    )
    assert "The backtest is being prepared" in fragment.content.decode()
    assert not CalibrationState.objects.filter(first_day__isnull=False).exists()

    dashboard.run_pass()
    page = admin_client.get("/reviews/calibration/")
    assert "being prepared" not in page.content.decode()
    assert "<code>weapon</code>" in page.content.decode()


def test_a_pass_after_a_gap_longer_than_the_dashboard_looks_back_fills_every_day_again(
    admin_user,
):
    rng = random.Random(11)
    with time_machine.travel(NOW, tick=False) as clock:
        img = image(rng, uploaded_at=NOW - timedelta(days=3))
        dashboard.run_pass(now=NOW)
        later = NOW + timedelta(days=40)
        clock.move_to(later)
        # Changed while no pass ran, and stamped before the month the dashboard looks back.
        decide(rng, img, admin_user, at=NOW + timedelta(days=2))
        report = dashboard.run_pass(now=later)
        assert report.calibration is not None
        assert report.calibration.decided_days == rollups.KEPT_DAYS + 1
        assert_same_as_direct(later)
