"""The dashboard's rollups agree with a direct count of the raw tables, on seeded random data,
including rows committed late into an hour a pass had already rolled up."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from moderation.models import Image
from reviews.dashboard import histogram, rollups
from reviews.dashboard.models import (
    HourlyFigures,
    QueueHour,
    ReviewerDay,
    ReviewerHour,
    RollupState,
)
from reviews.models import Decision

from .conftest import postgres_only
from .dashboard_data import Seeder, direct_figures, direct_queue, direct_reviewers, hour_of

NOW = datetime(2026, 11, 20, 12, 2, 30, tzinfo=UTC)
FIELDS = (
    "received",
    "entered_queue",
    "decided",
    "escalated",
    "decided_late",
    "agreed",
    "disagreed",
    "imm_unsure",
)


def rolled_figures() -> dict:
    out = {}
    for row in HourlyFigures.objects.all():
        counts = {f: getattr(row, f) for f in FIELDS if getattr(row, f)}
        if counts:
            out[(row.hour, row.category)] = counts
    return out


def rolled_reviewers() -> dict:
    return {
        (row.hour, row.reviewer_id): {
            "decided": row.decided,
            "escalated": row.escalated,
            "median": histogram.median(row.seconds),
        }
        for row in ReviewerHour.objects.all()
    }


def assert_rollups_agree(now: datetime) -> None:
    start = hour_of(now - rollups.KEPT)
    end = hour_of(now) + timedelta(hours=1)
    assert rolled_figures() == direct_figures(start, end)
    assert rolled_reviewers() == direct_reviewers(start, end)
    # The day rows are the hour rows added up.
    days: dict = {}
    for row in ReviewerHour.objects.all():
        day = days.setdefault((row.hour.date(), row.reviewer_id), [0, 0, {}])
        day[0] += row.decided
        day[1] += row.escalated
        histogram.add(day[2], row.seconds)
    assert {
        (row.day, row.reviewer_id): [row.decided, row.escalated, row.seconds]
        for row in ReviewerDay.objects.all()
    } == days


def assert_queue_agrees(now: datetime) -> None:
    snapshot = {
        row.category: {
            "waiting": row.waiting,
            "overdue": row.overdue,
            "oldest_since": row.oldest_since,
        }
        for row in QueueHour.objects.filter(hour=hour_of(now))
    }
    assert snapshot == direct_queue(now)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rollups_agree_with_a_direct_count_including_rows_committed_late(db, seed):
    rng = random.Random(seed)
    with time_machine.travel(NOW, tick=False):
        seeder = Seeder(rng, now=NOW)
        seeder.fill(images=60, moves=80, decisions=200, hours=72)
        # A few older than the month the page shows: never counted.
        seeder.decision(at=NOW - timedelta(days=40))

        report = rollups.run_pass(now=NOW)
        assert report.hours == 31 * 24 + 1
        assert HourlyFigures.objects.exists()
        assert_rollups_agree(NOW)
        assert_queue_agrees(NOW)
        settled = RollupState.objects.get().settled_until
        assert settled is not None
        assert settled <= NOW - rollups.MARGIN

        # Rows stamped after the horizon but committed after the pass: some into hour 11, which
        # the pass above had rolled up, some into hour 12 (in progress).
        for _ in range(15):
            at = settled + timedelta(seconds=rng.uniform(0, (NOW - settled).total_seconds()))
            seeder.decision(at=at)
            seeder.move(at=at)
        assert any(
            d.created_at < hour_of(NOW) for d in Decision.objects.filter(created_at__gte=settled)
        )
        # And the clock moves on; the queue changes.
        later = NOW + timedelta(minutes=9)
        for _ in range(20):
            seeder.decision(at=later - timedelta(seconds=rng.uniform(0, 400)))
        Image.objects.filter(pk__in=[i.pk for i in seeder.images[:10]]).update(
            status=Image.Status.AWAITING_REVIEW
        )

    with time_machine.travel(later, tick=False):
        report = rollups.run_pass(now=later)
        # Only the hours not yet final were read again: 11:00 and 12:00.
        assert report.hours == 2
        assert_rollups_agree(later)
        assert_queue_agrees(later)


def test_a_pass_is_the_same_whatever_the_passes_before_it(db):
    """Recomputing is idempotent: a second pass changes nothing, and one pass over everything
    gives what many passes gave."""
    rng = random.Random(9)
    with time_machine.travel(NOW, tick=False):
        Seeder(rng, now=NOW).fill(images=30, moves=40, decisions=120, hours=30)
        rollups.run_pass(now=NOW)
        first = rolled_figures(), rolled_reviewers()
        rollups.run_pass(now=NOW)
        assert (rolled_figures(), rolled_reviewers()) == first
        RollupState.objects.all().delete()
        HourlyFigures.objects.all().delete()
        rollups.run_pass(now=NOW)
        assert (rolled_figures(), rolled_reviewers()) == first


def test_the_median_is_the_bucket_of_the_lower_median():
    durations = [3.2, 150.0, 7.9, 8.1, 4000.0, 61.5]
    counts = histogram.count(durations)
    assert histogram.median(counts) == 8  # median_low is 8.1: the [8, 9) bucket
    assert histogram.median({}) is None
    assert histogram.lower_edge(histogram.bucket(125)) == 120
    assert histogram.lower_edge(histogram.bucket(659)) == 600
    assert histogram.bucket(10**6) == histogram.LAST


def test_the_command_makes_a_pass_and_says_what_it_did(db, capsys):
    call_command("oversight_rollups", "--batch")
    out = capsys.readouterr().out
    assert "1 rollup passes, 0 failed" in out
    assert RollupState.objects.get().last_pass_at is not None


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_decision_committed_after_a_pass_rolled_its_hour_up_is_counted_by_the_next():
    """Real concurrent connections: a reviewer's transaction stamps a decision, stays open
    while a pass (two hours later on its clock) rolls that hour up, then commits. The next pass
    counts it."""
    seeder = Seeder(random.Random(4), now=timezone.now())
    image = seeder.image(status=Image.Status.AWAITING_REVIEW)
    stamped = threading.Event()
    commit = threading.Event()
    errors: list[BaseException] = []
    stamps: list[datetime] = []

    def reviewer() -> None:
        try:
            with transaction.atomic():
                decision = seeder.decision(at=timezone.now(), image=image, verdict="approve")
                stamps.append(decision.created_at)
                stamped.set()
                assert commit.wait(30)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stamped.set()
        finally:
            connection.close()

    thread = threading.Thread(target=reviewer)
    thread.start()
    assert stamped.wait(30)
    assert errors == []
    hour = hour_of(stamps[0])
    later = hour + timedelta(hours=2)
    try:
        report = rollups.run_pass(now=later)
        # The open transaction held the horizon back to its start (less the margin).
        assert report.settled_until is not None
        assert report.settled_until < hour + timedelta(hours=1)
        assert not HourlyFigures.objects.filter(hour=hour, category="", decided__gt=0).exists()
    finally:
        commit.set()
        thread.join(30)
    assert errors == []
    assert Decision.objects.count() == 1
    rollups.run_pass(now=later + timedelta(minutes=1))
    assert HourlyFigures.objects.get(hour=hour, category="").decided == 1
