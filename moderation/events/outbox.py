"""Writing events: `emit`, called inside the transaction that changes the image."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Max
from django.db.models.expressions import RawSQL
from django.utils import timezone

from moderation.events.models import Event
from moderation.models import Image


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
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("emit() must run inside the transaction that makes the change")
    if type not in Event.Type.values:
        raise ValueError(f"unknown event type {type!r}")
    last = Event.objects.filter(image=image).aggregate(last=Max("sequence"))["last"] or 0
    txid: Any = None
    if connection.vendor == "postgresql":
        txid = RawSQL("pg_current_xact_id()::text::bigint", [])
    event = Event.objects.create(
        public_id=new_public_id(),
        type=type,
        image=image,
        sequence=last + 1,
        data=dict(data),
        created_at=now or timezone.now(),
        txid=txid,
    )
    return event
