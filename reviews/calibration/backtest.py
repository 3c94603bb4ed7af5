"""What a category's thresholds would have done to past items, before an admin saves them.

The past items are the images uploaded in the range whose standing IMM verdict names the
category (moderation.ImageCategory), with that category's rate. Each gets the rule's word as
RoutingRule.call gives it (reject from Y, approve below X, else a person; no rate: a person) and
is compared with what actually happened: the image's status now, which is a person's decision
where there was one and otherwise the status IMM's verdict gave.

Read from the daily rollups (models.UploadedDay and UploadedRate, kept by the oversight_rollups
pass: see rollups.py): the items by whole rate, status and whether a person decided, added up
over the range's days by the database; a whole rate a threshold falls inside (30.5: the rates
from 30 to 31) is read again by exact rate. Two small grouped queries at most.

It judges this category's rule alone: the image's other categories and their rules are left
out (with them, route() may still send an image to people or reject it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Sum

from moderation.models import thresholds_text
from moderation.routing import Thresholds

from .models import UploadedDay, UploadedRate
from .rollups import OPEN


@dataclass
class Backtest:
    category: str
    thresholds: Thresholds
    items: int = 0
    no_rate: int = 0
    # Settled items the rule would have decided otherwise.
    would_approve_was_rejected: int = 0
    would_reject_was_approved: int = 0
    # Settled items the rule would have settled the same way.
    would_approve_was_approved: int = 0
    would_reject_was_rejected: int = 0
    # Items the rule sends to people: those that reached a person anyway, and those IMM settled.
    people_as_before: int = 0
    people_newly: int = 0
    # Items that reached people (decided by one, or waiting for one now) that it auto-decides.
    people_spared: int = 0
    open_auto_decided: int = 0

    @property
    def thresholds_text(self) -> str:
        return thresholds_text(*self.thresholds)

    @property
    def form_values(self) -> tuple[str, str]:
        """The thresholds as the form that saves them sends them ("" for none)."""
        low, high = self.thresholds
        return _form_value(low), _form_value(high)

    @property
    def differently(self) -> int:
        return self.would_approve_was_rejected + self.would_reject_was_approved


def _form_value(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def word(rate: float | None, thresholds: Thresholds) -> str:
    """The rule's word on a rate: reject from Y, else approve below X, else people (no rate too)."""
    low, high = thresholds
    if rate is None:
        return "people"
    if high is not None and rate >= high:
        return "reject"
    if low is not None and rate < low:
        return "approve"
    return "people"


def split_whole_rates(thresholds: Thresholds) -> set[int]:
    """The whole rates whose rates from n to n + 1 the thresholds do not all give one word."""
    return {math.floor(t) for t in thresholds if t is not None and t != math.floor(t)}


def run(*, category: str, thresholds: Thresholds, since: datetime) -> Backtest:
    """The backtest of `thresholds` for `category` over the images uploaded on `since`'s UTC day
    and after (the rollups count whole days: rollups.range_start)."""
    first_day = since.astimezone(UTC).date()
    split = split_whole_rates(thresholds)
    result = Backtest(category=category, thresholds=thresholds)
    whole = (
        UploadedDay.objects.filter(category=category, day__gte=first_day)
        .values_list("rate_floor", "status", "by_person")
        .annotate(n=Sum("n"))
        .order_by()
    )
    for rate_floor, status, by_person, n in whole:
        if rate_floor in split:
            continue
        # Every rate from rate_floor up to rate_floor + 1 gets the word rate_floor gets.
        would = word(None if rate_floor is None else float(rate_floor), thresholds)
        _count(result, would, status, by_person, rate_floor is not None, n)
    if split:
        exact = (
            UploadedRate.objects.filter(
                category=category, rate_floor__in=sorted(split), day__gte=first_day
            )
            .values_list("rate", "status", "by_person")
            .annotate(n=Sum("n"))
            .order_by()
        )
        for rate, status, by_person, n in exact:
            _count(result, word(rate, thresholds), status, by_person, True, n)
    return result


def _count(result: Backtest, would: str, status: str, by_person: bool, rated: bool, n: int) -> None:
    result.items += n
    result.no_rate += 0 if rated else n
    reached_people = by_person or status in OPEN
    if would == "people":
        if reached_people:
            result.people_as_before += n
        else:
            result.people_newly += n
        return
    if reached_people:
        result.people_spared += n
    if status in OPEN:
        result.open_auto_decided += n
        return
    name = f"would_{would}_was_{status}"
    setattr(result, name, getattr(result, name) + n)
