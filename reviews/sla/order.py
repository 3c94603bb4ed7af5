"""The queue in due order: the most urgent first, read from SlaDue's (due_at, image) index.

Items with no target (due_at empty) come after every item that has one, by id. Pages are keyset
pages on (due_at, id): the cursor is "<due in microseconds or 'none'>.<id>".
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from moderation import limits
from moderation.models import Image

ORDER = (F("sla_due__due_at").asc(nulls_last=True), "pk")


def ordered(images: QuerySet[Image]) -> QuerySet[Image]:
    """`images` (waiting ones) in due order. Only images with a due row are listed: every waiting
    image has one (reviews.sla.due), so the join is an inner one the index can drive."""
    return images.filter(sla_due__isnull=False).order_by(*ORDER)


def cursor(due_at: datetime | None, pk: int) -> str:
    due = "none" if due_at is None else str(int(due_at.timestamp() * 1_000_000))
    return f"{due}.{pk}"


def after(images: QuerySet[Image], value: str) -> QuerySet[Image] | None:
    """The images after the cursor `value` in due order, or None if it is not a cursor."""
    due, _, pk_text = value.partition(".")
    pk = limits.whole_number(pk_text)
    if pk is None:
        return None
    if due == "none":
        return images.filter(sla_due__due_at__isnull=True, pk__gt=pk)
    micros = limits.whole_number(due)
    if micros is None:
        return None
    try:
        moment = datetime.fromtimestamp(micros / 1_000_000, tz=timezone.get_current_timezone())
    except (OverflowError, OSError, ValueError):
        return None
    return images.filter(
        Q(sla_due__due_at__gt=moment)
        | Q(sla_due__due_at=moment, pk__gt=pk)
        | Q(sla_due__due_at__isnull=True)
    )
