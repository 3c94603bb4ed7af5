"""The tamper-evident audit log: one recorder for every state change, and the chain verifier.

Each entry stores the SHA-256 of its own canonical content, and that content includes the
previous entry's hash and the entry's position (`seq`). Editing an entry breaks its own hash;
deleting one leaves a gap in `seq` and a broken link; inserting one out of place shows up as an id
that goes backwards along the chain. Cutting entries off the end leaves a valid shorter chain,
which is why `verify_audit` prints the head for an operator to keep and checks it with
`--expect-head`.

How appends are serialised. The head (last seq and hash) must be read and the new entry
written with no other append in between, or two entries would claim the same predecessor.
- PostgreSQL: `record` takes a transaction-scoped advisory lock before reading the head (in one
  function call, migration 0008). It is released when the surrounding transaction commits or
  rolls back, after the commit is visible, so the next writer (READ COMMITTED, Django's
  default) reads the new head in the function's next statement, which takes a fresh snapshot.
- SQLite: settings open every transaction with BEGIN IMMEDIATE, which takes the database's
  single write lock for the whole transaction, so appends are serialised by SQLite itself.
- Either way `seq` and `entry_hash` are unique: a writer that somehow read a stale head fails
  with an IntegrityError (and its transaction rolls back) instead of forking the chain.
`record` must run inside the transaction that makes the change it records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.utils import timezone

from moderation import limits
from moderation.models import AuditEntry, ChainCheck, Image

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User
    from django.http import HttpRequest

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# An arbitrary constant that names the audit chain's advisory lock on PostgreSQL.
_PG_LOCK_KEY = 0x1A0D17  # "audit"
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


def canonical_content(
    *,
    seq: int,
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
    prev_hash: str,
) -> bytes:
    """The exact bytes an entry's hash covers: sorted-key compact JSON, times in UTC to the µs."""
    return json.dumps(
        {
            "seq": seq,
            "time": created_at.astimezone(UTC).isoformat(timespec="microseconds"),
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
            "prev": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def entry_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _lock_chain_and_read_head(
    detail: Mapping[str, Any] | None, ip_address: str | None
) -> tuple[Any, str | None, tuple[int, str] | None]:
    """Take the chain's lock; return `detail` and the client address as stored, and the head.

    The hash must cover what the database hands back to walk_chain, and both values are
    normalised on the way in: Django rewrites an IPv6 address to its compressed form
    ("2001:DB8:0::1" is stored as "2001:db8::1") and an empty address to NULL; PostgreSQL's jsonb
    keeps numbers as numeric, so 1e16 comes back as the integer 10000000000000000 and -0.0 as 0.0,
    and its inet type prints some IPv6 addresses its own way. On SQLite a JSON round trip in
    Python is what the database does, and the transaction already holds the write lock. On
    PostgreSQL one statement does the round trip, takes the advisory lock and reads the head
    after it (migration 0008), so the lock is held for one round trip fewer.
    """
    detail_text = json.dumps(dict(detail or {}), allow_nan=False)
    ip = _IP_FIELD.get_prep_value(ip_address) or None
    if connection.vendor == "postgresql":
        # Django reads jsonb and inet as text (no psycopg conversion), as the ORM does below.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT %s::jsonb, %s::inet, head.head_seq, head.head_hash "
                "FROM moderation_audit_lock_head(%s) AS head",
                [detail_text, ip, _PG_LOCK_KEY],
            )
            detail_text, ip, seq, digest = cursor.fetchone()
        head = (seq, digest) if seq is not None else None
    else:
        head = AuditEntry.objects.in_chain_order().values_list("seq", "entry_hash").last()
    return json.loads(detail_text), ip, head


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
    """Append one entry to the audit log, chained to the one before it.

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

    detail_json, ip_address, head = _lock_chain_and_read_head(detail, context.ip_address)
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    created_at = timezone.now()
    fields: dict[str, Any] = {
        "seq": seq,
        "created_at": created_at,
        "actor_id": actor_id,
        "actor_label": actor_label,
        "action": action,
        "image_id": image.pk if image is not None else None,
        "state_before": state_before,
        "state_after": state_after,
        "reason": reason,
        "detail": detail_json,
        "ip_address": ip_address,
        "user_agent": context.user_agent,
        "prev_hash": prev_hash,
    }
    digest = entry_hash(canonical_content(**fields))
    return AuditEntry.objects.create(**fields, entry_hash=digest)


@dataclass(frozen=True)
class ChainHead:
    count: int
    last_hash: str

    def __str__(self) -> str:
        return f"{self.count}:{self.last_hash}"

    @classmethod
    def parse(cls, text: str) -> ChainHead:
        raw_count, _, digest = text.strip().partition(":")
        count = limits.whole_number(raw_count)
        if not (count and len(digest) == 64 and all(c in string.hexdigits for c in digest)):
            raise ValueError(f"a chain head looks like COUNT:SHA256 (COUNT from 1), not {text!r}")
        return cls(count, digest.lower())


class ChainBroken(Exception):
    def __init__(self, seq: int, entry_id: int | None, problem: str) -> None:
        self.seq, self.entry_id, self.problem = seq, entry_id, problem
        where = f"entry #{seq}" + (f" (id {entry_id})" if entry_id is not None else "")
        super().__init__(f"{where}: {problem}")


_VERIFY_FIELDS = (
    "id",
    "seq",
    "created_at",
    "actor_id",
    "actor_label",
    "action",
    "image_id",
    "state_before",
    "state_after",
    "reason",
    "detail",
    "ip_address",
    "user_agent",
    "prev_hash",
    "entry_hash",
)


def walk_chain(*, chunk_size: int = 2000) -> Iterator[ChainHead]:
    """Verify the chain in order, yielding the head after each entry; raise at the first fault.

    Streams rows (a server-side cursor on PostgreSQL), so memory stays flat however long the log is.
    """
    prev_seq, prev_id, prev_hash = 0, 0, GENESIS_HASH
    rows = AuditEntry.objects.in_chain_order().values_list(*_VERIFY_FIELDS)
    for row in rows.iterator(chunk_size=chunk_size):
        values = dict(zip(_VERIFY_FIELDS, row, strict=True))
        seq, entry_id = values.pop("seq"), values.pop("id")
        stored_hash = values.pop("entry_hash")
        if seq != prev_seq + 1:
            missing = f"#{prev_seq + 1}" + (f" to #{seq - 1}" if seq - 1 > prev_seq + 1 else "")
            raise ChainBroken(
                seq, entry_id, f"entry {missing} before it is missing (deleted or cut)"
            )
        if entry_id <= prev_id:
            raise ChainBroken(
                seq,
                entry_id,
                f"it was written before entry #{prev_seq} (id {prev_id}) yet sits after it: "
                "an entry was inserted out of order",
            )
        if values["prev_hash"] != prev_hash:
            raise ChainBroken(
                seq,
                entry_id,
                "its link to the previous entry is broken: the entry before it was replaced, "
                "inserted or deleted",
            )
        if entry_hash(canonical_content(seq=seq, **values)) != stored_hash:
            raise ChainBroken(
                seq, entry_id, "its content does not match its hash: the entry was edited"
            )
        prev_seq, prev_id, prev_hash = seq, entry_id, stored_hash
        yield ChainHead(seq, stored_hash)


def check_chain() -> ChainCheck:
    """Walk the whole chain and keep the outcome (the audit log page shows the latest)."""
    started = time.monotonic()
    head = ChainHead(0, "")
    problem = ""
    try:
        for head in walk_chain():  # noqa: B007 - the head after the last entry is kept
            pass
    except ChainBroken as broken:
        problem = str(broken)
    return save_check(head=head, problem=problem, seconds=time.monotonic() - started)


def save_check(*, head: ChainHead, problem: str, seconds: float) -> ChainCheck:
    return ChainCheck.objects.create(
        ok=not problem,
        entries=head.count,
        head_hash=head.last_hash,
        problem=problem,
        seconds=seconds,
    )
