"""The calibration rollups: kept by the dashboard's pass (reviews/dashboard/rollups.py), which
calls `refresh` with the hour it recomputes from.

Two daily tables, one per field the page ranges over: decisions by the day they were made
(the agreement figures) and category rows by their image's upload day (the backtest). Days, not
hours: the ranges are 7 to 90 days long, and hourly rows would be 24 times as many to add up on
every request for a precision the page does not need; a day is recomputed whole, from indexed
reads of that day's decisions or uploads.

Which days a pass recomputes: every day from the dashboard's start hour on (it is not final
until the oldest open transaction's start, see that module), and the days of every image touched
since then (a decision, an undo, an override or reopen, an IMM result: each writes a decision or
an audit entry stamped after that hour):
- a decision on an old image, or an undo, changes which of the image's decisions counts: every
  day any of its decisions was made is recomputed;
- IMM reporting again rewrites the image's category rows (category, rate, suggestion): the same
  days, and its upload day;
- any change of status or of who decided it: its upload day.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from moderation.models import AuditEntry, Image, ImageCategory
from reviews.dashboard.models import RollupState
from reviews.models import Decision

from .models import CalibrationState, DecidedDay, UploadedDay, UploadedRate

BANDS = 10  # 0-10, 10-20, ... 90-100 of IMM's 0-100 rate
SETTLING = (Decision.Verdict.APPROVE, Decision.Verdict.REJECT, Decision.Verdict.OVERRIDE)
SETTLED = (Image.Status.APPROVED, Image.Status.REJECTED)
OPEN = (Image.Status.AWAITING_REVIEW, Image.Status.ESCALATED)
COUNTED = (Image.Status.APPROVED, Image.Status.REJECTED, *OPEN)
# The longest range the page offers (views.RANGES).
KEPT_DAYS = 90
BATCH = 2000
DAY = timedelta(days=1)


def rate_band(rate: float | None) -> int | None:
    """The band a rate falls in, 0 (below 10) to 9 (90 and up), or None without a rate."""
    if rate is None:
        return None
    width = 100 // BANDS
    for band in range(BANDS - 1):
        if rate < (band + 1) * width:
            return band
    return BANDS - 1


def midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def range_start(days: int, *, now: datetime | None = None) -> datetime:
    """The first moment of a range of `days` days: midnight UTC `days` days before today's."""
    today = (now or timezone.now()).astimezone(UTC).date()
    return midnight(today - timedelta(days=days))


def is_ready() -> bool:
    return CalibrationState.objects.filter(pk=1, first_day__isnull=False).exists()


def standing() -> QuerySet[Decision]:
    """People's decisions that can count: approve, reject or override ending settled, not undone."""
    # NOT EXISTS on the undo's unique index: undone_by__isnull would join every decision ever.
    undone = Decision.objects.filter(undoes=OuterRef("pk"))
    return Decision.objects.filter(verdict__in=SETTLING, status_after__in=SETTLED).filter(
        ~Exists(undone)
    )


def decided_rows(day: date) -> dict[tuple[str, int | None, str, str], int]:
    """DecidedDay's counts for `day`.

    For a range from S, an image counts with its standing decision of highest id made at or after
    S. A decision d made at c counts for exactly the S with later < S <= c, where `later` is the
    latest time of the image's standing decisions of higher id (none: every S <= c). So it adds 1
    on c's day and takes 1 away on later's day (nothing when later >= c): a sum over the days
    from S on is 1 just for those S, whatever order the times and ids came in.
    """
    start = midnight(day)
    on_day = Decision.objects.filter(
        created_at__gte=start,
        created_at__lt=start + DAY,
        verdict__in=SETTLING,
        status_after__in=SETTLED,
    ).values_list("image_id", flat=True)
    # Joined by the database (image_id's index) rather than sent as lists of ids: a list of a
    # day's 2,000 images made PostgreSQL scan both tables whole.
    by_image: dict[int, list[tuple[int, datetime, str]]] = defaultdict(list)
    rows = standing().filter(image_id__in=on_day)
    for image_id, pk, created_at, outcome in rows.values_list(
        "image_id", "pk", "created_at", "status_after"
    ):
        by_image[image_id].append((pk, created_at, outcome))
    signs: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for image_id, decisions in by_image.items():
        later: datetime | None = None
        for _, created_at, outcome in sorted(decisions, reverse=True):
            if later is None or later < created_at:
                if created_at.astimezone(UTC).date() == day:
                    signs[image_id].append((outcome, 1))
                if later is not None and later.astimezone(UTC).date() == day:
                    signs[image_id].append((outcome, -1))
            if later is None or created_at > later:
                later = created_at
    counts: dict[tuple[str, int | None, str, str], int] = defaultdict(int)
    categories = ImageCategory.objects.filter(image_id__in=on_day).values_list(
        "image_id", "category", "rate", "suggestion"
    )
    for image_id, category, rate, suggestion in categories:
        for outcome, sign in signs.get(image_id, ()):
            counts[(category, rate_band(rate), suggestion, outcome)] += sign
    return {key: n for key, n in counts.items() if n}


def uploaded_rows(day: date) -> dict[tuple[str, float | None, str, bool], int]:
    """The category rows of the images uploaded on `day` the backtest counts, by exact rate."""
    start = midnight(day)
    rows = ImageCategory.objects.filter(
        image__uploaded_at__gte=start,
        image__uploaded_at__lt=start + DAY,
        image__status__in=COUNTED,
    ).values_list("category", "rate", "image__status", "image__human_decided_at")
    counts: dict[tuple[str, float | None, str, bool], int] = defaultdict(int)
    for category, rate, status, decided_at in rows.iterator(chunk_size=5000):
        counts[(category, rate, status, decided_at is not None)] += 1
    return counts


def _replace_decided(day: date) -> None:
    rows = decided_rows(day)
    DecidedDay.objects.filter(day=day).delete()
    DecidedDay.objects.bulk_create(
        [
            DecidedDay(
                day=day, category=category, band=band, suggestion=suggestion, outcome=outcome, n=n
            )
            for (category, band, suggestion, outcome), n in rows.items()
        ],
        batch_size=BATCH,
    )


def _replace_uploaded(day: date) -> None:
    exact = uploaded_rows(day)
    whole: dict[tuple[str, int | None, str, bool], int] = defaultdict(int)
    for (category, rate, status, by_person), n in exact.items():
        whole[(category, None if rate is None else math.floor(rate), status, by_person)] += n
    UploadedDay.objects.filter(day=day).delete()
    UploadedRate.objects.filter(day=day).delete()
    UploadedDay.objects.bulk_create(
        [
            UploadedDay(
                day=day,
                category=category,
                rate_floor=rate_floor,
                status=status,
                by_person=by_person,
                n=n,
            )
            for (category, rate_floor, status, by_person), n in whole.items()
        ],
        batch_size=BATCH,
    )
    UploadedRate.objects.bulk_create(
        [
            UploadedRate(
                day=day,
                category=category,
                rate_floor=math.floor(rate),
                rate=rate,
                status=status,
                by_person=by_person,
                n=n,
            )
            for (category, rate, status, by_person), n in exact.items()
            if rate is not None
        ],
        batch_size=BATCH,
    )


def touched_days(*, since: datetime, first_day: date) -> tuple[set[date], set[date]]:
    """The decision days and upload days of the images touched since `since` (see the module's
    docstring), from `first_day` on; read by the database from the decisions and audit entries
    stamped since then, each by its created_at index."""
    audited = AuditEntry.objects.filter(created_at__gte=since, image__isnull=False).values(
        "image_id"
    )
    decided_since = Decision.objects.filter(created_at__gte=since).values("image_id")
    decided = (
        Decision.objects.filter(
            Q(image_id__in=audited) | Q(image_id__in=decided_since),
            created_at__gte=midnight(first_day),
            verdict__in=SETTLING,
        )
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values_list("day", flat=True)
        .order_by()
        .distinct()
    )
    uploaded = (
        Image.objects.filter(
            Q(pk__in=audited) | Q(pk__in=decided_since), uploaded_at__gte=midnight(first_day)
        )
        .annotate(day=TruncDate("uploaded_at", tzinfo=UTC))
        .values_list("day", flat=True)
        .order_by()
        .distinct()
    )
    return set(decided), set(uploaded)


def _days(first: date, last: date) -> Iterable[date]:
    day = first
    while day <= last:
        yield day
        day += DAY


@dataclass
class Report:
    decided_days: int = 0
    uploaded_days: int = 0
    seconds: float = 0.0


def refresh(*, since: datetime, now: datetime) -> Report:
    """Recompute the days not final since `since` (the dashboard pass's first hour) and the days
    of the images touched since then; on the first pass, every day of the longest range. Each
    day is replaced in a transaction holding the dashboard's lock (its state row)."""
    started = time.monotonic()
    today = now.astimezone(UTC).date()
    first_day = today - timedelta(days=KEPT_DAYS)
    RollupState.objects.get_or_create(pk=1)  # the lock row, there after the dashboard's pass
    state, _ = CalibrationState.objects.get_or_create(pk=1)
    # Filled from scratch the first time, and after a gap the dashboard's pass does not cover
    # (it looks back a month at most: a loop stopped longer may have missed touched images).
    if state.first_day is None or state.last_pass_at is None or state.last_pass_at < since:
        decided = uploaded = set(_days(first_day, today))
    else:
        decided, uploaded = touched_days(since=since, first_day=first_day)
        recent = set(_days(max(first_day, since.astimezone(UTC).date()), today))
        decided, uploaded = decided | recent, uploaded | recent
    for day in sorted(decided | uploaded):
        with transaction.atomic():
            RollupState.objects.select_for_update().get(pk=1)
            if day in decided:
                _replace_decided(day)
            if day in uploaded:
                _replace_uploaded(day)
    report = Report(len(decided), len(uploaded))
    with transaction.atomic():
        RollupState.objects.select_for_update().get(pk=1)
        DecidedDay.objects.filter(day__lt=first_day).delete()
        UploadedDay.objects.filter(day__lt=first_day).delete()
        UploadedRate.objects.filter(day__lt=first_day).delete()
        report.seconds = time.monotonic() - started
        CalibrationState.objects.filter(pk=1).update(
            first_day=first_day,
            last_pass_at=now,
            last_pass_seconds=report.seconds,
            last_pass_days=len(decided | uploaded),
        )
    return report
