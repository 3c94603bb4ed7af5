"""Writing events: `emit`, called inside the transaction that changes the image, and
`emit_outcome`, which writes an outcome event with the payload the feed and webhooks send."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models import Max
from django.db.models.expressions import RawSQL
from django.utils import timezone

from moderation.events.models import Event
from moderation.models import Image

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

# Changes to an image that already had an outcome: their payload always names the status before.
LATER_CHANGES = frozenset({Event.Type.UNDONE, Event.Type.REOPENED, Event.Type.OVERRIDDEN})


def new_public_id() -> str:
    return "evt_" + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def emit(
    *,
    image: Image,
    type: str,
    data: Mapping[str, Any],
    now: datetime | None = None,
) -> Event:
    """Record one outcome event for `image` in the caller's transaction.

    The caller holds the image's row lock (every status change takes it first), which is what
    makes the per-image sequence number gapless and in commit order.
    """
    return _write(image=image, type=type, payload=lambda _id, _sequence: dict(data), now=now)


def _write(
    *,
    image: Image,
    type: str,
    payload: Callable[[str, int], dict[str, Any]],
    now: datetime | None,
) -> Event:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("emit() must run inside the transaction that makes the change")
    if type not in Event.Type.values:
        raise ValueError(f"unknown event type {type!r}")
    previous = Event.objects.filter(image=image).aggregate(last=Max("sequence"), txid=Max("txid"))
    last = previous["last"] or 0
    txid: Any = None
    if connection.vendor == "postgresql":
        # The feed orders by (txid, id). A transaction that took its id before the image's last
        # event was written (it wrote something else first: the inbox applier claims its message
        # row, then waits for the image) would sort its later change before that event. Never
        # below the image's last txid, then: one image's events stay in commit order, and the
        # value is still at least this transaction's own id, which is all the feed's no-miss
        # rule needs (feed.py).
        txid = RawSQL("GREATEST(pg_current_xact_id()::text::bigint, %s)", [previous["txid"] or 0])
    public_id = new_public_id()
    event = Event.objects.create(
        public_id=public_id,
        type=type,
        image=image,
        sequence=last + 1,
        data=payload(public_id, last + 1),
        created_at=now or timezone.now(),
        txid=txid,
    )
    return event


@dataclass(frozen=True)
class DecidedBy:
    """Who made the change an event reports: IMM, a routing rule, or a person."""

    kind: str  # "imm" | "rule" | "person"
    name: str

    @classmethod
    def imm(cls) -> DecidedBy:
        return cls("imm", "IMM")

    @classmethod
    def rule(cls, name: str) -> DecidedBy:
        return cls("rule", name)

    @classmethod
    def person(cls, user: AbstractBaseUser | AnonymousUser) -> DecidedBy:
        return cls("person", user.get_username())


def emit_outcome(
    *,
    image: Image,
    type: str,
    decided_by: DecidedBy,
    verdict: str,
    reason: str = "",
    previous_status: str = "",
    now: datetime | None = None,
) -> Event:
    """Record an outcome event with the payload every reader gets, in the caller's transaction.

    Call it after the change, with the image row locked and `image.status` the status after.
    `previous_status` is the status before the change; the payload carries it on every later
    change (undo, reopen, override, and any outcome after an earlier one), never on the first.
    """
    occurred_at = (now or timezone.now()).astimezone(UTC)

    def payload(public_id: str, sequence: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": public_id,
            "type": type,
            "image_id": image.pk,
            "sequence": sequence,
            "status": image.status,
            "decided_by": {"kind": decided_by.kind, "name": decided_by.name},
            "verdict": verdict,
            "reason": reason,
            "occurred_at": occurred_at.isoformat().replace("+00:00", "Z"),
        }
        if sequence > 1 or type in LATER_CHANGES:
            data["previous_status"] = previous_status
        return data

    return _write(image=image, type=type, payload=payload, now=now)
