"""What a category's thresholds would have done to past items, before an admin saves them.

The past items are the images uploaded in the range whose standing IMM verdict names the
category (moderation.ImageCategory), with that category's rate. Each gets the rule's word as
RoutingRule.call gives it (reject from Y, approve below X, else a person; no rate: a person) and
is compared with what actually happened: the image's status now, which is a person's decision
where there was one and otherwise the status IMM's verdict gave. Counted by the database in one
grouped query.

It judges this category's rule alone: the image's other categories and their rules are left
out (with them, route() may still send an image to people or reject it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import BooleanField, Case, CharField, Count, F, Q, Value, When

from moderation.models import Image, ImageCategory, thresholds_text
from moderation.routing import Thresholds

OPEN = (Image.Status.AWAITING_REVIEW, Image.Status.ESCALATED)
COUNTED = (Image.Status.APPROVED, Image.Status.REJECTED, *OPEN)


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


def run(*, category: str, thresholds: Thresholds, since: datetime) -> Backtest:
    """The backtest of `thresholds` for `category` over the images uploaded since `since`."""
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
    result = Backtest(category=category, thresholds=thresholds)
    for row in rows:
        _count(result, row["would"], row["status"], row["by_person"], row["rated"], row["n"])
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
