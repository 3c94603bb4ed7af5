"""Decisions per reviewer over a range, from the hour and day rollups.

The pass adds them up for each of the page's ranges (ReviewerRange); the page reads those rows
when they were made for its window, and adds up the hour and day rows itself otherwise (in the
minutes between the turn of an hour and the next pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from . import histogram
from .models import ReviewerDay, ReviewerHour, ReviewerRange
from .periods import RANGES, Window, midnight, next_midnight

# Reviewers kept per range (most decisions first); a team is far smaller.
REVIEWERS_MAX = 500


@dataclass
class Total:
    reviewer_id: int
    decided: int
    escalated: int
    median_seconds: int | None


def add_up(win: Window) -> list[Total]:
    """Whole UTC days from the day rows, the hours at either edge from the hour rows."""
    totals: dict[int, dict[str, Any]] = {}

    def add(reviewer_id: int, decided: int, escalated: int, seconds: dict[str, int]) -> None:
        person = totals.setdefault(reviewer_id, {"decided": 0, "escalated": 0, "seconds": {}})
        person["decided"] += decided
        person["escalated"] += escalated
        histogram.add(person["seconds"], seconds)

    first_day = next_midnight(win.start)
    last_day = midnight(win.end)
    if first_day < last_day:
        for row in ReviewerDay.objects.filter(
            day__gte=first_day.date(), day__lt=last_day.date()
        ).values_list("reviewer_id", "decided", "escalated", "seconds"):
            add(*row)
        edges = [(win.start, first_day), (last_day, win.end)]
    else:
        edges = [(win.start, win.end)]
    in_edges = Q()
    for low, high in edges:
        if low < high:
            in_edges |= Q(hour__gte=low, hour__lt=high)
    if in_edges:
        for row in ReviewerHour.objects.filter(in_edges).values_list(
            "reviewer_id", "decided", "escalated", "seconds"
        ):
            add(*row)
    ranked = sorted(totals.items(), key=lambda item: (-item[1]["decided"], item[0]))
    return [
        Total(
            reviewer_id,
            person["decided"],
            person["escalated"],
            histogram.median(person["seconds"]),
        )
        for reviewer_id, person in ranked[:REVIEWERS_MAX]
    ]


def store(windows: list[Window]) -> None:
    """Replace the ReviewerRange rows of each window's range (inside the pass's transaction)."""
    ReviewerRange.objects.filter(range_key__in=[w.range.key for w in windows]).delete()
    ReviewerRange.objects.bulk_create(
        [
            ReviewerRange(
                range_key=win.range.key,
                reviewer_id=total.reviewer_id,
                decided=total.decided,
                escalated=total.escalated,
                median_seconds=total.median_seconds,
            )
            for win in windows
            for total in add_up(win)
        ],
        batch_size=2000,
    )


def for_window(win: Window, *, ranges_end: Any) -> list[Total]:
    """The stored totals if the last pass made them for this window, else added up now."""
    if win.range.key not in RANGES or ranges_end != win.end:
        return add_up(win)
    rows = (
        ReviewerRange.objects.filter(range_key=win.range.key)
        .order_by("-decided", "reviewer_id")
        .values_list("reviewer_id", "decided", "escalated", "median_seconds")[:REVIEWERS_MAX]
    )
    return [Total(*row) for row in rows]
