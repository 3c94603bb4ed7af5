"""The hourly rollups behind the dashboard, kept up to date by `manage.py oversight_rollups`.

A pass recomputes whole hours from the raw tables (decisions by created_at, images by
uploaded_at, queue moves from the audit log by created_at: all indexed) and replaces their rows,
then snapshots the review queue. Nothing is counted inside the transactions that review images,
so the claim and decide paths gain no lock and no hot row.

Rows committed late: a decision stamped 10:59:59 whose transaction commits at 11:00:30 is
invisible to a pass at 11:00:10 that rolled hour 10 up. So a pass never treats an hour as final
on its own clock: before reading, it notes the start of the oldest transaction still open on
the database (PostgreSQL's pg_stat_activity), less a margin for clock skew between the web
servers and the database and for the moment between a timestamp and its transaction's first
statement. Any row the pass could not see belongs to a transaction open then or started later,
so it is stamped after that horizon; the next pass recomputes every hour from the horizon on.
SQLite has one writer at a time and no such view: the margin alone covers it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Count
from django.db.models.functions import TruncHour
from django.utils import timezone

from moderation.models import AuditEntry, Image
from reviews.calibration import rollups as calibration
from reviews.models import Decision
from reviews.sla import policy

from . import histogram, periods, reviewers
from .models import ALL, HourlyFigures, QueueHour, ReviewerDay, ReviewerHour, RollupState
from .periods import HOUR, floor_hour

logger = logging.getLogger("reviews.dashboard")

# The longest range the page shows, and a day more: older hours are never read.
KEPT = timedelta(days=31)
# Clock skew between hosts, and a timestamp taken just before its transaction's first statement.
MARGIN = timedelta(minutes=5)
# Hours replaced per transaction (a first pass fills a month).
CHUNK = timedelta(days=1)
# Items with no category are counted under this name (IMM's category names have no brackets).
NO_CATEGORY = "(none)"

PEOPLE_VERDICTS = (
    Decision.Verdict.APPROVE,
    Decision.Verdict.REJECT,
    Decision.Verdict.ESCALATE,
)
AGREES: dict[str, str] = {Decision.Verdict.APPROVE: "pass", Decision.Verdict.REJECT: "block"}


def categories_of(image_categories: Any) -> list[str]:
    """An image's categories as the rollups count them: each once, or NO_CATEGORY."""
    if not isinstance(image_categories, list):
        return [NO_CATEGORY]
    names = sorted({str(name) for name in image_categories if name})
    return names or [NO_CATEGORY]


def settled_horizon(now: datetime) -> datetime:
    """A time before which every row that will ever be written is already committed."""
    oldest = now
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT min(xact_start) FROM pg_stat_activity "
                "WHERE datname = current_database() AND backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            )
            row = cursor.fetchone()
        if row and row[0] is not None:
            oldest = min(oldest, row[0])
    return oldest - MARGIN


@dataclass
class PassReport:
    hours: int = 0
    seconds: float = 0.0
    settled_until: datetime | None = None
    waiting: int = 0
    # The calibration page's daily rollups, kept by the same pass from the same first hour.
    calibration: calibration.Report | None = None


def run_pass(*, now: datetime | None = None) -> PassReport:
    """Recompute every hour not yet final, then snapshot the queue. Safe to run twice at once:
    each day's hours are replaced under a lock on the state row."""
    started = time.monotonic()
    now = now or timezone.now()
    # Measured before anything is read: see the module's docstring.
    horizon = settled_horizon(now)
    if now - horizon > HOUR + MARGIN:
        logger.warning(
            "rollups: a transaction open since %s holds every hour since then open", horizon
        )
    state, _ = RollupState.objects.get_or_create(pk=1)
    first = floor_hour(now - KEPT)
    start = max(first, floor_hour(state.settled_until)) if state.settled_until else first
    end = floor_hour(now) + HOUR
    targets = policy.targets()
    chunk_start = start
    while chunk_start < end:
        chunk_end = min(chunk_start + CHUNK, end)
        with transaction.atomic():
            RollupState.objects.select_for_update().get(pk=1)
            _replace_hours(chunk_start, chunk_end, targets)
            _replace_days(chunk_start, chunk_end)
        chunk_start = chunk_end
    recalibrated = calibration.refresh(since=start, now=now)
    with transaction.atomic():
        state = RollupState.objects.select_for_update().get(pk=1)
        waiting = _snapshot_queue(now, targets)
        # Never backwards: a pass that measured an older horizon is simply behind another.
        settled = max(horizon, state.settled_until) if state.settled_until else horizon
        # The oldest hours fall out of the range the page shows.
        HourlyFigures.objects.filter(hour__lt=first).delete()
        ReviewerHour.objects.filter(hour__lt=first).delete()
        ReviewerDay.objects.filter(day__lt=first.date()).delete()
        QueueHour.objects.filter(hour__lt=first).delete()
        report = PassReport(
            hours=int((end - start) / HOUR),
            seconds=time.monotonic() - started,
            settled_until=settled,
            waiting=waiting,
            calibration=recalibrated,
        )
        windows = [periods.window(r, now=now) for r in periods.RANGES.values()]
        reviewers.store(windows)
        RollupState.objects.filter(pk=1).update(
            ranges_end=windows[0].end,
            settled_until=settled,
            last_pass_at=now,
            last_pass_seconds=report.seconds,
            last_pass_hours=report.hours,
        )
    return report


def _replace_hours(start: datetime, end: datetime, targets: dict[str, int]) -> None:
    figures: dict[tuple[datetime, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    people: dict[tuple[datetime, int], dict[str, Any]] = {}

    received = (
        Image.objects.filter(uploaded_at__gte=start, uploaded_at__lt=end)
        .annotate(hour=TruncHour("uploaded_at", tzinfo=UTC))
        .values("hour")
        .annotate(n=Count("id"))
        .values_list("hour", "n")
    )
    for hour, n in received:
        figures[(floor_hour(hour), ALL)]["received"] += n

    moves = (
        AuditEntry.objects.filter(
            created_at__gte=start,
            created_at__lt=end,
            state_after=Image.Status.AWAITING_REVIEW,
        )
        .exclude(state_before=Image.Status.AWAITING_REVIEW)
        .values_list("created_at", "image__imm_categories")
    )
    for created_at, image_categories in moves.iterator(chunk_size=5000):
        hour = floor_hour(created_at)
        for key in (ALL, *categories_of(image_categories)):
            figures[(hour, key)]["entered_queue"] += 1

    decisions = Decision.objects.filter(
        created_at__gte=start, created_at__lt=end, verdict__in=PEOPLE_VERDICTS
    ).values_list(
        "created_at",
        "reviewer_id",
        "verdict",
        "status_before",
        "status_changed_before",
        "seconds",
        "image__imm_categories",
        "image__imm_suggestion",
    )
    for row in decisions.iterator(chunk_size=5000):
        created_at, reviewer_id, verdict, before, queued_at, seconds, image_cats, suggestion = row
        hour = floor_hour(created_at)
        cats = categories_of(image_cats)
        late = False
        if before == Image.Status.AWAITING_REVIEW and queued_at is not None:
            due = policy.due_at(queued_at, [c for c in cats if c != NO_CATEGORY], targets)
            late = due is not None and created_at > due
        agreement = None
        if verdict in AGREES and suggestion in ("pass", "block"):
            agreement = "agreed" if AGREES[verdict] == suggestion else "disagreed"
        elif verdict in AGREES and suggestion == "review":
            agreement = "imm_unsure"
        for key in (ALL, *cats):
            counts = figures[(hour, key)]
            counts["decided"] += 1
            counts["escalated"] += int(verdict == Decision.Verdict.ESCALATE)
            counts["decided_late"] += int(late)
            if agreement:
                counts[agreement] += 1
        person = people.setdefault(
            (hour, reviewer_id), {"decided": 0, "escalated": 0, "seconds": {}}
        )
        person["decided"] += 1
        person["escalated"] += int(verdict == Decision.Verdict.ESCALATE)
        if seconds is not None:
            key = str(histogram.bucket(seconds))
            person["seconds"][key] = person["seconds"].get(key, 0) + 1

    HourlyFigures.objects.filter(hour__gte=start, hour__lt=end).delete()
    ReviewerHour.objects.filter(hour__gte=start, hour__lt=end).delete()
    HourlyFigures.objects.bulk_create(
        [
            HourlyFigures(hour=hour, category=category, **counts)
            for (hour, category), counts in figures.items()
        ],
        batch_size=2000,
    )
    ReviewerHour.objects.bulk_create(
        [
            ReviewerHour(hour=hour, reviewer_id=reviewer_id, **values)
            for (hour, reviewer_id), values in people.items()
        ],
        batch_size=2000,
    )


def _replace_days(start: datetime, end: datetime) -> None:
    """Add up the ReviewerHour rows of every UTC day that [start, end) touches."""
    first_day = start.astimezone(UTC).date()
    last_day = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    day_start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC)
    day_end = datetime.combine(last_day, datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    days: dict[tuple[Any, int], dict[str, Any]] = {}
    rows = ReviewerHour.objects.filter(hour__gte=day_start, hour__lt=day_end).values_list(
        "hour", "reviewer_id", "decided", "escalated", "seconds"
    )
    for hour, reviewer_id, decided, escalated, seconds in rows:
        day = days.setdefault(
            (hour.astimezone(UTC).date(), reviewer_id),
            {"decided": 0, "escalated": 0, "seconds": {}},
        )
        day["decided"] += decided
        day["escalated"] += escalated
        histogram.add(day["seconds"], seconds)
    ReviewerDay.objects.filter(day__gte=first_day, day__lte=last_day).delete()
    ReviewerDay.objects.bulk_create(
        [
            ReviewerDay(day=day, reviewer_id=reviewer_id, **values)
            for (day, reviewer_id), values in days.items()
        ],
        batch_size=2000,
    )


def _snapshot_queue(now: datetime, targets: dict[str, int]) -> int:
    """Write the queue as it is now into this hour's QueueHour rows; returns the items waiting."""
    queue: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"waiting": 0, "overdue": 0, "oldest_since": None}
    )
    waiting = Image.objects.filter(status=Image.Status.AWAITING_REVIEW).values_list(
        "status_changed_at", "imm_categories"
    )
    for queued_at, image_categories in waiting.iterator(chunk_size=5000):
        cats = categories_of(image_categories)
        due = policy.due_at(queued_at, [c for c in cats if c != NO_CATEGORY], targets)
        overdue = due is not None and due < now
        for key in (ALL, *cats):
            row = queue[key]
            row["waiting"] += 1
            row["overdue"] += int(overdue)
            if row["oldest_since"] is None or queued_at < row["oldest_since"]:
                row["oldest_since"] = queued_at
    queue[ALL]["escalated"] = Image.objects.filter(status=Image.Status.ESCALATED).count()
    hour = floor_hour(now)
    QueueHour.objects.filter(hour=hour).delete()
    QueueHour.objects.bulk_create(
        [
            QueueHour(hour=hour, category=category, taken_at=now, **values)
            for category, values in queue.items()
        ]
    )
    return int(queue[ALL]["waiting"])
