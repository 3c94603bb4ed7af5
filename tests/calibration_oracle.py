"""The calibration figures and backtest counted straight from the decisions, images and category
rows, as the page did before it read rollups: the oracle the rollups are tested against."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import (
    BooleanField,
    Case,
    CharField,
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Value,
    When,
)

from moderation.models import ImageCategory
from moderation.routing import Thresholds
from reviews.calibration import backtest, figures
from reviews.calibration.rollups import BANDS, COUNTED, SETTLED, SETTLING
from reviews.models import Decision


def rate_band(rate_field: str) -> Case:
    width = 100 // BANDS
    below = [
        When(**{f"{rate_field}__lt": (band + 1) * width}, then=Value(band))
        for band in range(BANDS - 1)
    ]
    return Case(
        *below,
        When(**{f"{rate_field}__isnull": False}, then=Value(BANDS - 1)),
        default=None,
        output_field=IntegerField(),
    )


def people_decisions(*, since: datetime) -> QuerySet[Decision]:
    undone = Decision.objects.filter(undoes=OuterRef("pk"))
    in_range = Decision.objects.filter(
        created_at__gte=since, verdict__in=SETTLING, status_after__in=SETTLED
    ).filter(~Exists(undone))
    later = in_range.filter(image=OuterRef("image"), id__gt=OuterRef("id"))
    return in_range.filter(~Exists(later))


def agreement(*, since: datetime) -> list[figures.CategoryFigures]:
    decided = people_decisions(since=since)
    rows: list[dict[str, Any]] = []
    for outcome in SETTLED:
        counted = (
            ImageCategory.objects.filter(
                image_id__in=decided.filter(status_after=outcome).values("image_id")
            )
            .values("category", "suggestion", band=rate_band("rate"))
            .annotate(n=Count("id"))
            .order_by()
        )
        rows.extend({**row, "outcome": outcome} for row in counted)
    return figures._tables(rows)


def run(*, category: str, thresholds: Thresholds, since: datetime) -> backtest.Backtest:
    low, high = thresholds
    words = []
    if high is not None:
        words.append(When(rate__gte=high, then=Value("reject")))
    if low is not None:
        words.append(When(rate__lt=low, then=Value("approve")))
    would = Case(*words, default=Value("people"), output_field=CharField())
    rows = (
        ImageCategory.objects.filter(
            category=category, image__uploaded_at__gte=since, image__status__in=COUNTED
        )
        .values(
            would=would,
            status=F("image__status"),
            by_person=Case(
                When(Q(image__human_decided_at__isnull=False), then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            ),
            rated=Case(
                When(rate__isnull=False, then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            ),
        )
        .annotate(n=Count("id"))
        .order_by()
    )
    result = backtest.Backtest(category=category, thresholds=thresholds)
    for row in rows:
        backtest._count(
            result, row["would"], row["status"], row["by_person"], row["rated"], row["n"]
        )
    return result
