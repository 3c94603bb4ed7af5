"""The team dashboard at scale, a step of `make bench` (bench/queue.py calls `run`).

1. Seeds a month of history fitting the seeded images: people's decisions (one image in eight
   over the last 30 days, by the bench's reviewers, COPY), SLA targets, and the queue's hourly
   snapshots for the month before now (what a month of `oversight_rollups` passes leaves). Once:
   a database that has them keeps them (--reuse).
2. Times one rollup pass from nothing (the month's hours: what a first start does), then a
   steady-state pass (the hours not yet final, and the queue snapshot: what runs every minute).
3. Times GET /dashboard/ for each range as an admin: p50/p95 over --requests requests, and its
   queries.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

# The history decisions' reason: how a second run finds them.
HISTORY_REASON = "bench history"
TARGET_P95_MS = 100.0
SLA_TARGETS = {"": 60, "porn": 15, "bloody": 30}


def seed_history(images: int, reviewer_ids: list[int], rng: random.Random) -> str:
    """COPY a month of decisions and hourly queue snapshots (once); a line saying what it did."""
    from django.db import connection, transaction

    from reviews.dashboard.models import QueueHour
    from reviews.models import Decision
    from reviews.sla.models import SlaTarget

    for category, minutes in SLA_TARGETS.items():
        SlaTarget.objects.update_or_create(category=category, defaults={"minutes": minutes})
    if Decision.objects.filter(reason=HISTORY_REASON).exists():
        return "history decisions already seeded"
    started = time.perf_counter()
    now = time.time()
    month = 30 * 24 * 3600
    count = images // 8
    columns = [
        "image_id", "reviewer_id", "verdict", "reason", "status_before", "status_after",
        "status_changed_before", "seconds", "created_at",
    ]  # fmt: skip
    sql = "COPY {} ({}) FROM STDIN".format(Decision._meta.db_table, ", ".join(columns))
    outcomes = [("approve", "approved"), ("reject", "rejected"), ("escalate", "escalated")]

    def stamp(epoch: float) -> str:
        return datetime.fromtimestamp(epoch, UTC).isoformat()

    lines = []
    with transaction.atomic(), connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        # Distinct images: one history decision each, as a settled image has.
        for image_id in rng.sample(range(1, images + 1), count):
            decided = now - rng.random() * month
            waited = rng.expovariate(1 / 1800)  # half an hour on average: some past due
            verdict, after = rng.choices(outcomes, weights=[60, 32, 8])[0]
            seconds = min(rng.lognormvariate(3.0, 0.7), 3000)
            lines.append(
                f"{image_id}\t{rng.choice(reviewer_ids)}\t{verdict}\t"
                f"{HISTORY_REASON}\tawaiting_review\t{after}\t{stamp(decided - waited)}\t"
                f"{seconds:.1f}\t{stamp(decided)}\n"
            )
            if len(lines) >= 20_000:
                copy.write("".join(lines))
                lines.clear()
        copy.write("".join(lines))
    # The queue as a month of hourly passes would have seen it (this hour's is the real pass's).
    this_hour = datetime.fromtimestamp(now, UTC).replace(minute=0, second=0, microsecond=0)
    categories = ["", "sexy", "porn", "ad", "bloody", "weapon", "(none)"]
    snapshots = []
    for hours_back in range(1, 31 * 24):
        hour = this_hour - timedelta(hours=hours_back)
        base = 60_000 + 40_000 * rng.random()
        for category in categories:
            share = 1.0 if category == "" else rng.uniform(0.05, 0.4)
            snapshots.append(
                QueueHour(
                    hour=hour,
                    category=category,
                    taken_at=hour + timedelta(minutes=59),
                    waiting=int(base * share),
                    overdue=int(base * share * rng.uniform(0, 0.3)),
                    oldest_since=hour - timedelta(days=4),
                    escalated=int(rng.uniform(0, 500)) if category == "" else 0,
                )
            )
    QueueHour.objects.bulk_create(snapshots, batch_size=5000, ignore_conflicts=True)
    return (
        f"{count:,} decisions over 30 days and {len(snapshots):,} hourly queue snapshots "
        f"seeded in {time.perf_counter() - started:.1f} s"
    )


def time_passes() -> tuple[float, int, float, int]:
    """(seconds, hours) of a pass from nothing, then of a steady-state pass."""
    from reviews.dashboard import rollups
    from reviews.dashboard.models import (
        HourlyFigures,
        ReviewerDay,
        ReviewerHour,
        ReviewerRange,
        RollupState,
    )

    RollupState.objects.all().delete()
    for model in (HourlyFigures, ReviewerHour, ReviewerDay, ReviewerRange):
        model.objects.all().delete()
    first = rollups.run_pass()
    steady = rollups.run_pass()
    return first.seconds, first.hours, steady.seconds, steady.hours


def run(
    args: Any, admin: Any, measure_page: Any, vacuum_analyze: Any
) -> list[tuple[str, bool | None, str]]:
    """Seed, roll up, time the page; prints its report and returns its targets' lines."""
    from django.test import Client

    from moderation.models import Image
    from reviews.dashboard.figures import RANGES

    rng = random.Random(args.seed + 12)  # noqa: S311 - benchmark data, not secrets
    reviewer_ids = [u.pk for u in _reviewers()]
    images = Image.objects.count()
    print(f"  {seed_history(images, reviewer_ids, rng)}", flush=True)
    vacuum_analyze("reviews_decision", "dashboard_queuehour")
    first_s, first_h, steady_s, steady_h = time_passes()
    print(
        f"  rollup pass from nothing: {first_h} hours in {first_s:.2f} s; "
        f"steady-state pass: {steady_h} hours and the queue snapshot in {steady_s:.2f} s",
        flush=True,
    )
    vacuum_analyze("dashboard_hourlyfigures", "dashboard_reviewerhour", "dashboard_reviewerday")
    client = Client(HTTP_HOST="localhost")
    client.force_login(admin)
    runs = []
    for key in RANGES:
        run = measure_page(
            client,
            f"/dashboard/ {key}",
            f"/dashboard/?range={key}",
            requests=args.requests,
            warmup=args.warmup,
            row_link=rb'data-chart="([^"]+)"',
        )
        runs.append(run)
    print()
    print(f"Team dashboard at {images:,} images: {args.requests} timed requests per range, ms")
    print("(cpu = this process's CPU time per request, p50: the part other load does not inflate)")
    print(f"{'range':<20} {'p50':>7} {'p95':>7} {'cpu':>6} {'SQL':>4} {'charts':>6}")
    for run in runs:
        cpu = sorted(run.cpu)[len(run.cpu) // 2] if run.cpu else 0.0
        print(
            f"{run.label:<20} {run.p50 * 1000:7.1f} {run.p95 * 1000:7.1f} {cpu * 1000:6.1f} "
            f"{run.queries:>4} {run.rows:>6}"
        )
    print(f"Rollups: pass from nothing {first_s:.2f} s ({first_h} hours), steady {steady_s:.2f} s")
    worst = max(run.p95 for run in runs)
    return [
        (
            f"dashboard p95 <= {TARGET_P95_MS:g} ms, every range",
            worst * 1000 <= TARGET_P95_MS,
            f"worst p95 {worst * 1000:.1f} ms",
        )
    ]


def _reviewers() -> list[Any]:
    from django.contrib.auth import get_user_model

    return list(get_user_model().objects.filter(username__startswith="bench-reviewer-"))
