"""Verifying the audit log: every entry, the whole tree, and the signed checkpoints.

`verify_log` reads the log once, in position order, with server-side cursors (memory stays flat
for any size), and checks, stopping at the first fault with a message that names it:
- each entry: its content against its content hash (an edited content), its leaf hash against
  its content, and its columns against its content, by meaning (an edited column);
- positions 1..N with no gap (a deleted entry);
- the tree recomputed from the leaves against every subtree hash the sequencer stored (an entry
  replaced, inserted or deleted along with its hashes shows where), against every stored
  checkpoint's root on the way, and against the latest checkpoint, whose signature is checked
  with the log's key (a forged or rewritten log);
- entries still waiting for a position: their content against their content hash and columns;
- optionally a checkpoint kept elsewhere (`since`): the log must not have shrunk below it (a cut
  of the newest entries) and the stored tree must prove it only grew (RFC 9162 consistency).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from hashlib import sha256
from typing import Any

from django.db import connection, transaction

from moderation.models import AuditCheckpoint, AuditEntry, AuditTreeNode, ChainCheck

from . import checkpoints
from .log import format_time
from .merkle import CompactRange, ProofError, verify_consistency
from .note import Checkpoint, NoteError, Verifier, parse_checkpoint

ENTRIES = AuditEntry._meta.db_table
NODES = AuditTreeNode._meta.db_table
CHECKPOINTS = AuditCheckpoint._meta.db_table

# The keys of an entry's content; entries of the hash-chain era also carry their position and
# the previous entry's hash.
KEYS = frozenset(
    (
        "time",
        "actor_id",
        "actor",
        "action",
        "image_id",
        "state_before",
        "state_after",
        "reason",
        "detail",
        "ip",
        "user_agent",
    )
)
LEGACY_KEYS = KEYS | {"seq", "prev"}
GENESIS_HASH = "0" * 64

_COLUMNS = (
    "id, seq, content, entry_hash, leaf_hash, {created_at}, actor_id, actor_label, action, "
    "image_id, state_before, state_after, reason, detail, ip_address, user_agent, prev_hash"
)
# The time as the content spells it (log.format_time), made by PostgreSQL, which is cheaper than
# turning a timestamptz into a Python datetime and back. SQLite keeps it as text already.
_PG_TIME = """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


def _columns() -> str:
    return _COLUMNS.format(created_at="created_at" if connection.vendor == "sqlite" else _PG_TIME)


class LogBroken(Exception):
    """The first fault found; `verified` positioned entries checked out before it."""

    def __init__(
        self, problem: str, *, seq: int | None = None, entry_id: int | None = None, verified: int
    ) -> None:
        self.problem, self.seq, self.entry_id, self.verified = problem, seq, entry_id, verified
        if seq is not None:
            where = f"entry #{seq}" + (f" (id {entry_id})" if entry_id is not None else "")
            message = f"{where}: {problem}"
        elif entry_id is not None:
            message = f"waiting entry id {entry_id}: {problem}"
        else:
            message = problem
        super().__init__(message)


@dataclass
class Report:
    entries: int = 0  # positioned entries verified
    waiting: int = 0  # entries waiting for a position, verified
    root: bytes = b""  # the root hash over the positioned entries
    checkpoint: Checkpoint | None = None  # the latest, signature checked
    checkpoint_note: str = ""  # the same, as the signed note
    checkpoints: int = 0  # stored checkpoints compared on the way
    uncovered: int = 0  # positioned entries no checkpoint covers yet (before the first run)
    notes: list[str] = field(default_factory=list)


def verify_log(
    *, key: Verifier | None = None, since: str | None = None, chunk_size: int = 5000
) -> Report:
    """Verify the whole log (see the module's docstring); raise LogBroken at the first fault.

    `key` is the log's verifier key (default: the configured signing key's); `since` a signed
    checkpoint kept elsewhere, as text.
    """
    key = key or checkpoints.verifier()
    if key is None:
        raise checkpoints.NoSigningKey
    # One snapshot for every read below, or an entry the sequencer positions meanwhile could be
    # missing from one stream and present in another. On PostgreSQL a read-only REPEATABLE READ
    # transaction (unless the caller's transaction is already open); on SQLite the transaction
    # holds the write lock (BEGIN IMMEDIATE), so nothing changes during the walk.
    fresh = not connection.in_atomic_block
    with transaction.atomic():
        if fresh and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _verify(key, since, chunk_size)


def _verify(key: Verifier, since: str | None, chunk_size: int) -> Report:
    report = Report()
    latest = checkpoints.latest()
    if latest is not None:
        report.checkpoint = _open(latest.signed_note, key, "the latest checkpoint", verified=0)
        report.checkpoint_note = latest.signed_note
        if (report.checkpoint.size, report.checkpoint.root) != (
            latest.tree_size,
            bytes(latest.root_hash),
        ):
            raise LogBroken(
                f"the latest checkpoint's columns (tree size {latest.tree_size}) do not match "
                "its signed note: the row was edited",
                verified=0,
            )
    kept = _open(since, key, "the kept checkpoint", verified=0) if since is not None else None
    if kept is not None:
        _check_kept(kept, report.checkpoint)
    _walk_positioned(report, latest, kept, chunk_size)
    _walk_waiting(report, chunk_size)
    return report


def _open(note: str, key: Verifier, what: str, *, verified: int) -> Checkpoint:
    try:
        return checkpoints.open_checkpoint(note, key)
    except NoteError as error:
        raise LogBroken(
            f"{what} does not verify with the log's key {key.vkey}: {error}", verified=verified
        ) from None


def _check_kept(kept: Checkpoint, latest: Checkpoint | None) -> None:
    size = latest.size if latest else 0
    if kept.size > size:
        raise LogBroken(
            f"the log is smaller than the kept checkpoint: it signs {kept.size} entries, the "
            f"latest checkpoint {size}: entries #{size + 1} to #{kept.size} were cut",
            verified=0,
        )
    if latest is None or kept.size == 0:
        return
    try:
        proof = checkpoints.consistency_proof(kept.size, latest.size)
        verify_consistency(kept.size, latest.size, kept.root, latest.root, proof)
    except (ProofError, LookupError) as error:
        raise LogBroken(
            f"the latest checkpoint (tree size {latest.size}) does not extend the kept one (tree "
            f"size {kept.size}): the log was rewritten since ({error})",
            verified=0,
        ) from None


@contextmanager
def _stream(sql: str, chunk_size: int) -> Iterator[Iterator[tuple[Any, ...]]]:
    """Rows from a server-side cursor on PostgreSQL, read `chunk_size` at a time.

    A context manager, so the cursor is closed when the walk stops, faults included, while the
    transaction it lives in is still open (closed later, by the garbage collector, it would
    fail in whatever transaction the connection is in by then).
    """
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql)

        def rows() -> Iterator[tuple[Any, ...]]:
            while chunk := cursor.fetchmany(chunk_size):
                yield from chunk

        yield rows()


def _walk_positioned(
    report: Report, latest: AuditCheckpoint | None, kept: Checkpoint | None, chunk_size: int
) -> None:
    with (
        _stream(
            # In the order the tree completes them: a subtree is complete once its last leaf is.
            f'SELECT level, "index", hash, ("index" + 1) << level AS done '  # noqa: S608
            f"FROM {NODES} ORDER BY done, level",
            chunk_size,
        ) as nodes,
        _stream(
            f"SELECT tree_size, root_hash, compact_range, signed_note FROM {CHECKPOINTS} "  # noqa: S608
            "ORDER BY tree_size",
            chunk_size,
        ) as stored,
        _stream(
            f"SELECT {_columns()} FROM {ENTRIES} WHERE seq IS NOT NULL ORDER BY seq",  # noqa: S608
            chunk_size,
        ) as rows,
    ):
        _walk(report, latest, kept, nodes, stored, rows)


def _walk(
    report: Report,
    latest: AuditCheckpoint | None,
    kept: Checkpoint | None,
    nodes: Iterator[tuple[Any, ...]],
    stored: Iterator[tuple[Any, ...]],
    rows: Iterator[tuple[Any, ...]],
) -> None:
    covered = latest.tree_size if latest else 0
    frontier = CompactRange()
    node = next(nodes, None)
    checkpoint = next(stored, None)
    check = _Columns()
    previous_hash = GENESIS_HASH
    seq = 0
    for row in rows:
        entry_id, position = row[0], row[1]
        expected = seq + 1
        if position != expected:
            missing = f"#{expected}" + (f" to #{position - 1}" if position - 1 > expected else "")
            raise LogBroken(
                f"entry {missing} before it is missing (deleted or cut)",
                seq=position,
                entry_id=entry_id,
                verified=seq,
            )
        seq = position
        leaf = check.entry(row, positioned=True)
        if seq > covered and (latest is not None or not check.legacy):
            where = (
                f"the latest checkpoint covers #1 to #{covered}"
                if latest
                else "the log has no checkpoint and the entry is not of the hash-chain era"
            )
            raise LogBroken(
                f"it has a position no checkpoint covers ({where}); the sequencer writes "
                "positions and checkpoints together, so it was inserted, or the checkpoints "
                "that covered it deleted",
                seq=seq,
                entry_id=entry_id,
                verified=seq - 1,
            )
        if check.legacy:
            if check.prev != previous_hash:
                problem = "its link to the previous entry of the hash chain is broken"
                raise LogBroken(problem, seq=seq, entry_id=entry_id, verified=seq - 1)
            previous_hash = row[3]
        else:
            previous_hash = ""
        for level, index, hash_ in frontier.append(leaf):
            if seq > covered:
                continue  # positioned before any checkpoint: the sequencer stores no nodes yet
            if node is None or node[3] != seq or node[0] != level:
                raise LogBroken(
                    f"the stored tree has no hash for entries #{index * 2**level + 1} to #{seq} "
                    "(it was deleted)",
                    verified=seq,
                )
            if bytes(node[2]) != hash_:
                first = index * 2**level + 1
                raise LogBroken(
                    f"entries #{first} to #{seq} do not match the hash the sequencer stored for "
                    "them: one of them was replaced, inserted or deleted (with its hashes), or "
                    "the stored hash was edited",
                    verified=first - 1,
                )
            node = next(nodes, None)
        while checkpoint is not None and checkpoint[0] == seq:
            _check_stored(checkpoint, frontier, seq)
            report.checkpoints += 1
            checkpoint = next(stored, None)
        if kept is not None and seq == kept.size and frontier.root() != kept.root:
            raise LogBroken(
                f"the tree over entries #1 to #{seq} does not match the kept checkpoint's root: "
                "the log was rewritten since it was kept",
                verified=seq,
            )
    report.entries = seq
    report.root = frontier.root()
    if checkpoint is not None:
        raise LogBroken(
            f"a checkpoint signs {checkpoint[0]} entries but the log has {seq}: entries #"
            f"{seq + 1} to #{checkpoint[0]} were deleted (cut)",
            verified=seq,
        )
    if node is not None:
        raise LogBroken(
            f"the stored tree has a hash for entries the log does not have (level {node[0]}, "
            f"index {node[1]}): they were deleted",
            verified=seq,
        )
    if seq > covered:
        report.uncovered = seq
        report.notes.append(
            f"{seq} entries of the hash-chain era have no checkpoint yet: start the sequencer "
            "(manage.py audit_sequencer), which builds the tree over them first"
        )


def _check_stored(row: tuple[Any, ...], frontier: CompactRange, seq: int) -> None:
    size, root, compact, note = row
    root = bytes(root)
    problem = ""
    if root != frontier.root():
        problem = "its root hash is not the tree's"
    elif bytes(compact) != frontier.to_bytes():
        problem = "its frontier is not the tree's"
    else:
        try:
            signed = parse_checkpoint(note[: note.rfind("\n\n") + 1])
        except (NoteError, ValueError):
            problem = "its signed note cannot be read"
        else:
            if (signed.size, signed.root) != (size, root):
                problem = "its signed note names another tree"
    if problem:
        raise LogBroken(
            f"the checkpoint at tree size {size} does not match entries #1 to #{seq}: {problem}; "
            "an entry up to there was changed, inserted or deleted, or the checkpoint edited",
            verified=seq,
        )


def _walk_waiting(report: Report, chunk_size: int) -> None:
    check = _Columns()
    with _stream(
        f"SELECT {_columns()} FROM {ENTRIES} WHERE seq IS NULL ORDER BY id",  # noqa: S608
        chunk_size,
    ) as rows:
        for row in rows:
            check.entry(row, positioned=False, verified=report.entries)
            report.waiting += 1


class _Columns:
    """Checks one entry's hashes and its columns against its content."""

    def __init__(self) -> None:
        self.sqlite = connection.vendor == "sqlite"
        self.legacy = False
        self.prev = ""

    def entry(
        self, row: tuple[Any, ...], *, positioned: bool, verified: int | None = None
    ) -> bytes:
        entry_id, seq, content, digest, leaf = row[:5]
        done = (seq - 1) if positioned else (verified or 0)

        def broken(problem: str) -> LogBroken:
            return LogBroken(problem, seq=seq, entry_id=entry_id, verified=done)

        content = bytes(content) if content is not None else b""
        if sha256(content).hexdigest() != digest:
            raise broken("its content does not match its content hash: the content was edited")
        expected_leaf = sha256(b"\x00" + content).digest()
        if positioned:
            if leaf is None or bytes(leaf) != expected_leaf:
                raise broken(
                    "its leaf hash is not the hash of its content: the leaf hash was edited"
                )
        elif leaf is not None:
            raise broken(
                "it has a leaf hash but no position: only the sequencer sets them, together"
            )
        try:
            document = _DECODER.decode(content.decode())
        except (ValueError, RecursionError):
            raise broken("its content is not JSON: the content was edited") from None
        keys = document.keys() if type(document) is dict else ()
        self.legacy = keys == LEGACY_KEYS
        if not (self.legacy or keys == KEYS):
            raise broken("its content does not have an entry's fields: the content was edited")
        column = _mismatched_column(document, row, content, legacy=self.legacy, sqlite=self.sqlite)
        if column:
            raise broken(f"its {column} column does not match its content: the column was edited")
        if self.legacy:
            if not positioned or not _same(document["seq"], seq):
                raise broken(
                    "its position is not the one its content (of the hash-chain era) names: "
                    "entries were moved"
                )
            self.prev = document["prev"]
        return expected_leaf


_DECODER = json.JSONDecoder(parse_float=Decimal)


def _mismatched_column(
    document: dict[str, Any], row: tuple[Any, ...], content: bytes, *, legacy: bool, sqlite: bool
) -> str:
    """The first column that does not say what the content says, or "".

    The content is authentic here (its hashes checked out), so it holds what record() wrote:
    strings, whole numbers and None where the columns hold them, where plain equality is exact.
    Only `detail` and the address need more (see _same_detail and _same_address).
    """
    (
        created_at,
        actor_id,
        actor_label,
        action,
        image_id,
        state_before,
        state_after,
        reason,
        detail,
        ip_address,
        user_agent,
        prev_hash,
    ) = row[5:]
    if sqlite:
        created_at = _sqlite_time(created_at)
    if (
        document["time"] == created_at
        and document["actor_id"] == actor_id
        and document["actor"] == actor_label
        and document["action"] == action
        and document["image_id"] == image_id
        and document["state_before"] == state_before
        and document["state_after"] == state_after
        and document["reason"] == reason
        and document["user_agent"] == user_agent
        and (document["prev"] == prev_hash if legacy else prev_hash == "")
        and (document["ip"] == ip_address or _same_address(document["ip"], ip_address))
        and _same_detail(document["detail"], detail, content)
    ):
        return ""
    # Which one, in the order above.
    checks = (
        ("created_at", document["time"] == created_at),
        ("actor_id", document["actor_id"] == actor_id),
        ("actor_label", document["actor"] == actor_label),
        ("action", document["action"] == action),
        ("image_id", document["image_id"] == image_id),
        ("state_before", document["state_before"] == state_before),
        ("state_after", document["state_after"] == state_after),
        ("reason", document["reason"] == reason),
        ("user_agent", document["user_agent"] == user_agent),
        ("prev_hash", document["prev"] == prev_hash if legacy else prev_hash == ""),
        ("ip_address", document["ip"] == ip_address or _same_address(document["ip"], ip_address)),
    )
    return next((column for column, same in checks if not same), "detail")


def _sqlite_time(raw: Any) -> str | None:
    # SQLite keeps datetimes as text in UTC without the zone (USE_TZ), which Django's converter
    # for the column's declared type hands back as a naive datetime.
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw)
        except ValueError:
            return None
    if not isinstance(raw, datetime):
        return None
    return format_time(raw if raw.tzinfo else raw.replace(tzinfo=UTC))


def _same(a: Any, b: Any) -> bool:
    """JSON values equal by meaning and kind: 1 and 1.0 are, 1 and true or "1" are not."""
    if type(a) is not type(b):
        numbers = (int, Decimal)
        return (
            isinstance(a, numbers)
            and isinstance(b, numbers)
            and not isinstance(a, bool)
            and not isinstance(b, bool)
            and a == b
        )
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(value, b[key]) for key, value in a.items())
    if type(a) is list:
        return len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _same_detail(document: Any, column: Any, content: bytes) -> bool:
    # The column is read as JSON text (jsonb on PostgreSQL, text on SQLite): parse it the same
    # way. Python's == is exact for JSON values but one way: true == 1. So where either side may
    # hold a boolean, the values are compared kind by kind too.
    if not isinstance(column, str):
        return False
    try:
        value = _DECODER.decode(column)
    except (ValueError, RecursionError):
        return False
    if document != value:
        return False
    if "true" in column or "false" in column or b"true" in content or b"false" in content:
        return _same(document, value)
    return True


def _same_address(document: Any, column: Any) -> bool:
    if document is None or column is None:
        return document is None and column is None
    try:
        return bool(ipaddress.ip_address(document) == ipaddress.ip_address(column))
    except ValueError:
        return False


# ------------------------------------------------------------------------------ the log page


def check_log() -> ChainCheck:
    """Verify the whole log and keep the outcome (the audit log page shows the latest)."""
    started = time.monotonic()
    try:
        report = verify_log()
    except LogBroken as broken:
        return save_check(entries=broken.verified, root=b"", problem=str(broken), started=started)
    except checkpoints.NoSigningKey as error:
        return save_check(entries=0, root=b"", problem=str(error), started=started)
    return save_check(entries=report.entries, root=report.root, problem="", started=started)


def save_check(*, entries: int, root: bytes, problem: str, started: float) -> ChainCheck:
    return ChainCheck.objects.create(
        ok=not problem,
        entries=entries,
        head_hash=root.hex(),
        problem=problem,
        seconds=time.monotonic() - started,
    )
