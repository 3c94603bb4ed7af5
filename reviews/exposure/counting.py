"""Counting every showing of clear pixels, per reviewer, day and category (ExposureCount)."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from .models import COLUMN, ExposureCount

TOTAL = F("previews") + F("thumbnails") + F("originals")

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from moderation.models import Image


def day_of(moment: datetime) -> date:
    """The day an exposure counts for: the calendar day in the server's TIME_ZONE."""
    return timezone.localdate(moment)


def count(*, image: Image, user: User, variant: str, now: datetime | None = None) -> None:
    """Add one showing of `variant` of `image` to `user`'s counts for today, once per category.

    An increment in the database (UPDATE ... SET n = n + 1), so two tabs revealing at once both
    count; the first showing of the day inserts the row, and an insert that loses the race to
    another tab's becomes an increment.
    """
    day = day_of(now or timezone.now())
    column = COLUMN[variant]
    for category in sorted(set(image.imm_categories or [])) or [""]:
        key = {"reviewer": user, "day": day, "category": category}
        if ExposureCount.objects.filter(**key).update(**{column: F(column) + 1}):
            continue
        try:
            with transaction.atomic():
                ExposureCount.objects.create(**key, **{column: 1})
        except IntegrityError:
            ExposureCount.objects.filter(**key).update(**{column: F(column) + 1})


def today(user_id: int, *, now: datetime | None = None) -> dict[str, int]:
    """Category -> clear images shown to the user today (every rendition)."""
    rows = (
        ExposureCount.objects.filter(reviewer_id=user_id, day=day_of(now or timezone.now()))
        .annotate(n=TOTAL)
        .values_list("category", "n")
    )
    return {category: n for category, n in rows}
