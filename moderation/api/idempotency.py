"""Idempotency-Key: a retried request gets the first answer, never a second effect.

The key is claimed by an INSERT before the request is handled (its own transaction, committed at
once), so of two requests sent at once with one key the database lets one in; the other finds
the row and is told the first is still in progress, or, once it has finished, gets its answer.
The row also keeps a hash of what was asked: the same key with a different body is a 409. A
claim left unfinished for ABANDONED_AFTER (its process died mid-request) is taken over by the
next retry with the same body.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import ApiClient, IdempotencyRecord

KEY_MAX = 255
# Printable ASCII only: a NUL cannot be stored in PostgreSQL's text (it would be a 500), and a
# header's other control characters or Latin-1 letters are no one's idea of a key.
KEY_PATTERN = r"^[ -~]+$"
# An unfinished claim this old was abandoned: no request runs this long (gunicorn kills a worker
# after 30 s by default; an upload's body is read before the claim is made).
ABANDONED_AFTER = timedelta(minutes=10)


def request_hash(**parts: Any) -> str:
    """SHA-256 of what a request asks for (not its bytes on the wire: a retry may choose a new
    multipart boundary)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """What to do with a request carrying an Idempotency-Key."""

    record: IdempotencyRecord
    state: str  # "new" (handle it), "replay" (answer record's), "in_progress", "mismatch"


def claim(*, client: ApiClient, key: str, digest: str) -> Claim:
    try:
        with transaction.atomic():
            record = IdempotencyRecord.objects.create(client=client, key=key, request_hash=digest)
        return Claim(record, "new")
    except IntegrityError:
        pass
    record = IdempotencyRecord.objects.get(client=client, key=key)
    if record.request_hash != digest:
        return Claim(record, "mismatch")
    if record.completed_at is None:
        # A claim far older than any request can take was left by a process that died while
        # handling it (a worker killed at its timeout, a restart): nothing was answered, so the
        # retry takes the claim over, once (a conditional UPDATE), instead of a 409 forever.
        now = timezone.now()
        taken = IdempotencyRecord.objects.filter(
            pk=record.pk, completed_at__isnull=True, created_at__lt=now - ABANDONED_AFTER
        ).update(created_at=now)
        if taken:
            record.created_at = now
            return Claim(record, "new")
        return Claim(record, "in_progress")
    return Claim(record, "replay")


def complete(record: IdempotencyRecord, *, status: int, body: Any) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        status_code=status, body=body, completed_at=timezone.now()
    )


def release(record: IdempotencyRecord) -> None:
    """The request failed on our side: let a retry with the key be handled afresh."""
    IdempotencyRecord.objects.filter(pk=record.pk, completed_at__isnull=True).delete()
