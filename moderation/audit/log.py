"""The audit log's one recorder: every state change writes an entry through `record`.

The log is a verifiable log in the manner of Certificate Transparency (RFC 9162): `record` writes
an entry's exact bytes (`content`, canonical JSON of what happened) and their SHA-256 in one
INSERT, with no position, no lock and no read of anything else, inside the transaction that
makes the change; the sequencer (sequencer.py, `manage.py audit_sequencer`) later gives
committed entries their positions in batches, extends the Merkle tree over them and signs a
checkpoint; verify.py checks all of it. So writers never wait for one another here.

The structured columns (actor, action, image, states, detail, address...) are a copy of the
content for pages and filters. The database may normalise them (jsonb keeps numbers as numeric,
inet prints IPv6 its own way), which is why the content is built here, from the values as given,
and verification compares columns with content by meaning, not by bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.utils import timezone

from moderation import limits
from moderation.models import AuditEntry, Image

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User
    from django.http import HttpRequest

logger = logging.getLogger(__name__)

_IP_FIELD = AuditEntry._meta.get_field("ip_address")


@dataclass(frozen=True)
class AuditContext:
    """Where an action came from: the request's client address and user agent, if any."""

    ip_address: str | None = None
    user_agent: str = ""

    @classmethod
    def from_request(cls, request: HttpRequest) -> AuditContext:
        # REMOTE_ADDR only: a forwarded-for header is whatever the client wants it to be unless a
        # trusted proxy sets it, and a proxy deployment should set REMOTE_ADDR itself.
        return cls(
            ip_address=request.META.get("REMOTE_ADDR") or None,
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
        )


SYSTEM_CONTEXT = AuditContext()


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8 as is, NaN and Infinity refused."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def format_time(moment: datetime) -> str:
    """An entry's time as its content spells it: UTC, to the microsecond."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def entry_content(
    *,
    created_at: datetime,
    actor_id: int | None,
    actor_label: str,
    action: str,
    image_id: int | None,
    state_before: str,
    state_after: str,
    reason: str,
    detail: Any,
    ip_address: str | None,
    user_agent: str,
) -> bytes:
    """The exact bytes of an entry's leaf. Its position is not in them: the tree gives that."""
    return canonical_json(
        {
            "time": format_time(created_at),
            "actor_id": actor_id,
            "actor": actor_label,
            "action": action,
            "image_id": image_id,
            "state_before": state_before,
            "state_after": state_after,
            "reason": reason,
            "detail": detail,
            "ip": ip_address,
            "user_agent": user_agent,
        }
    )


def content_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def record(
    *,
    action: str,
    actor: User | AnonymousUser | None,
    image: Image | None = None,
    state_before: str = "",
    state_after: str = "",
    reason: str = "",
    detail: Mapping[str, Any] | None = None,
    context: AuditContext = SYSTEM_CONTEXT,
) -> AuditEntry:
    """Write one entry to the audit log; the sequencer gives it its position once committed.

    Call it inside the transaction that makes the change (it refuses to run in autocommit), so
    the change and its entry are committed together or not at all. `actor=None` means the
    system acted. The reason is held to limits.REASON_MAX here, once for every caller: a
    person's words were already refused whole over their limit by the service that took them
    (which is why this never cuts them), and longer system text (an IMM error message, a
    decoder's complaint) is clipped, marked with an ellipsis, rather than failing the change it
    explains.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("audit.record must run inside the transaction that makes the change")
    if len(reason) > limits.REASON_MAX:
        logger.info("audit %s: a reason of %d characters clipped", action, len(reason))
        reason = limits.clip(reason)
    if actor is not None and actor.is_authenticated:
        actor_id: int | None = actor.pk
        actor_label = actor.get_username()
    else:
        actor_id, actor_label = None, AuditEntry.SYSTEM
    fields: dict[str, Any] = {
        "created_at": timezone.now(),
        "actor_id": actor_id,
        "actor_label": actor_label,
        "action": action,
        "image_id": image.pk if image is not None else None,
        "state_before": state_before,
        "state_after": state_after,
        "reason": reason,
        # A copy, so that a caller changing its dict afterwards cannot make column and content
        # differ; the address as Django will store it ("2001:DB8::1" -> "2001:db8::1", "" -> NULL).
        "detail": json.loads(json.dumps(dict(detail or {}), allow_nan=False)),
        "ip_address": _IP_FIELD.get_prep_value(context.ip_address) or None,
        "user_agent": context.user_agent,
    }
    content = entry_content(**fields)
    return AuditEntry.objects.create(**fields, content=content, entry_hash=content_hash(content))
