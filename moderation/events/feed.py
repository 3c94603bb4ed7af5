"""The decisions feed's query: events in commit order, a page at a time, behind an opaque cursor.

A reader that follows the cursor sees every event exactly once, in an order that never changes
behind it. On PostgreSQL rows are ordered by (txid, id), the id of the transaction that wrote
them, and a page serves only rows whose txid is below the xmin of the reading statement's
snapshot: every transaction below it has ended, so no row can ever appear there later. A
transaction that began before another but commits after it (A writes, B writes and commits,
A commits) is served when it has ended, before B's rows, and the cursor is never handed out
past a transaction still running. The price: a transaction held open anywhere on the server
(with a transaction id) holds the feed back until it ends. On SQLite one writer at a time
makes id order the commit order.

An event's txid is its transaction's id or, if larger, the txid of the image's event before it
(outbox.py): a transaction that took its id early but changed the image after another one
committed still sorts after that one's event, so each image's events keep their commit order
(their `sequence`). A row's txid is never below its own transaction's id, so the rule above holds.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from django.core import signing
from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL

from .models import Event

MAX_LIMIT = 500
CURSOR_VERSION = "1"
# Cursors are signed: one altered by hand (or cut short) is refused, never read as a position.
_signer = signing.Signer(salt="moderation.events.feed", sep=".")
_MAX_CURSOR = 200


class BadCursor(ValueError):
    """A cursor this feed did not give out, or one altered since (the API answers 400)."""


@dataclass(frozen=True)
class FeedPage:
    items: list[Event]
    # The cursor to ask with next: after the last item, or the one asked with when nothing is new.
    next: str | None


def encode(event: Event) -> str:
    position = f"{CURSOR_VERSION}:{event.txid if event.txid is not None else ''}:{event.pk}"
    value = base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")
    return _signer.sign(value)


def decode(cursor: str) -> tuple[int | None, int]:
    """The (txid, id) a cursor stands for; BadCursor, saying why, if it is not one of ours."""
    if len(cursor) > _MAX_CURSOR:
        raise BadCursor("The cursor is too long to be one this feed gave out.")
    try:
        value = _signer.unsign(cursor)
    except signing.BadSignature:
        raise BadCursor(
            "The cursor is not one this feed gave out, or it was altered: use the `next` "
            "cursor of the last page as it is, or start again without one."
        ) from None
    try:
        position = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        version, txid, pk = position.split(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("The cursor cannot be read.") from None
    if version != CURSOR_VERSION:
        raise BadCursor(
            f"The cursor is of version {version[:8]!r}, which this feed no longer reads."
        )
    try:
        return (int(txid) if txid else None), int(pk)
    except ValueError:
        raise BadCursor("The cursor cannot be read.") from None


def page(*, events: QuerySet[Event], after: str | None, limit: int) -> FeedPage:
    """Up to `limit` (1..MAX_LIMIT) events of `events` after the cursor `after`, in commit order.

    `events` may be any filter of Event (Event.objects.for_images(...) for one client): the
    order and the no-miss, no-double guarantees hold for each subset. BadCursor (a ValueError)
    for a cursor this feed did not give out; ValueError for a limit out of range.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    position = decode(after) if after else None
    if connection.vendor == "postgresql":
        rows = events.filter(
            txid__lt=RawSQL("pg_snapshot_xmin(pg_current_snapshot())::text::bigint", [])
        ).order_by("txid", "id")
        if position is not None:
            txid, pk = position
            if txid is None:
                raise BadCursor("The cursor is from a feed without transaction ids.")
            # (txid, id) > (cursor): a range on the (txid, id) index from the cursor's txid.
            rows = rows.filter(txid__gte=txid).filter(Q(txid__gt=txid) | Q(id__gt=pk))
    else:
        rows = events.order_by("id")
        if position is not None:
            rows = rows.filter(id__gt=position[1])
    items = list(rows[:limit])
    return FeedPage(items=items, next=encode(items[-1]) if items else (after or None))
