"""Each waiting image's due time, kept in SlaDue so the queue can be read in due order.

Written where an image enters or leaves the queue, in the transaction that moves it: IMM's
routing (moderation.signals.review_routed, sent by the pipeline), and the reviews services
(decide, undo, reopen). When targets change, `recompute` rewrites every waiting image's row
in one statement. Reading the due order then is an index scan on (due_at, image), whatever the
queue's size; a row of an image that left the queue some other way is never shown (the queue
joins on the image's status) and is removed by the next recompute.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import connection, transaction
from django.db.models import Case, DateTimeField, Exists, F, OuterRef, Value, When

from moderation.models import Image, ImageCategory

from . import policy
from .models import SlaDue

if TYPE_CHECKING:
    from collections.abc import Iterable


def due_for(image: Image, targets: dict[str, int]) -> datetime | None:
    """When `image`, waiting since its status last changed, is due (None: no target)."""
    return policy.due_at(image.status_changed_at, image.imm_categories or [], targets)


def sync(image: Image, *, targets: dict[str, int] | None = None) -> None:
    """Write the image's due time if it waits for review; forget it otherwise."""
    if image.status != Image.Status.AWAITING_REVIEW:
        forget(image.pk)
        return
    due = due_for(image, policy.targets() if targets is None else targets)
    _upsert([SlaDue(image_id=image.pk, due_at=due)])


def forget(image_id: int) -> None:
    SlaDue.objects.filter(image_id=image_id).delete()


def on_routed(sender: object, *, image: Image, **kwargs: object) -> None:
    """Receiver of moderation.signals.review_routed (connected in SlaConfig.ready)."""
    sync(image)


def _upsert(rows: Iterable[SlaDue]) -> None:
    SlaDue.objects.bulk_create(
        list(rows), update_conflicts=True, unique_fields=["image"], update_fields=["due_at"]
    )


def recompute() -> int:
    """Every waiting image's due time again, from the targets as they are now; returns how many.

    Called in the transaction that changes a target, so the queue never shows an old due time
    beside a new target. One INSERT ... SELECT in the database (an upsert, so a row an image
    entering the queue meanwhile wrote is overwritten, not a conflict): the tightest category
    target is the first that matches in a CASE over the targets, tightest first (a few targets,
    each an index probe on the image's category rows), else the default (policy.minutes_for).
    """
    targets = policy.targets()
    default = targets.get("")
    since = F("status_changed_at")
    whens = [
        When(
            Exists(ImageCategory.objects.filter(image=OuterRef("pk"), category=category)),
            then=since + Value(timedelta(minutes=minutes)),
        )
        for category, minutes in sorted(
            ((c, m) for c, m in targets.items() if c), key=lambda item: item[1]
        )
    ]
    fallback = since + Value(timedelta(minutes=default)) if default is not None else None
    rows = (
        Image.objects.filter(status=Image.Status.AWAITING_REVIEW)
        .annotate(due=Case(*whens, default=fallback, output_field=DateTimeField()))
        .order_by()
        .values_list("pk", "due")
    )
    select, params = rows.query.sql_with_params()
    table = connection.ops.quote_name(SlaDue._meta.db_table)
    with transaction.atomic():
        # Rows of images that left the queue without passing through reviews (IMM's later word).
        SlaDue.objects.exclude(image__status=Image.Status.AWAITING_REVIEW).delete()
        with connection.cursor() as cursor:
            cursor.execute(
                # Only our own SQL: the table name and the ORM-compiled SELECT (values are params).
                f"INSERT INTO {table} (image_id, due_at) {select} "
                "ON CONFLICT (image_id) DO UPDATE SET due_at = excluded.due_at",
                params,
            )
            return cursor.rowcount


def describe(due_at: datetime | None, now: datetime) -> tuple[str, bool]:
    """("due in 25 min" or "overdue by 2 h", overdue?) for a due time; ("", False) for none."""
    if due_at is None:
        return "", False
    seconds = (due_at - now).total_seconds()
    if seconds >= 0:
        return f"due in {_span(seconds)}", False
    return f"overdue by {_span(-seconds)}", True


def _span(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{max(minutes, 1)} min"
    hours, rest = divmod(minutes, 60)
    if hours < 24:
        # Minutes matter in the first hours; after that they are noise.
        return f"{hours} h {rest} min" if hours < 3 and rest else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def stored(image: Image) -> datetime | None:
    """The image's due time as the queue orders it (None: no target, or not waiting)."""
    return SlaDue.objects.filter(image=image).values_list("due_at", flat=True).first()
