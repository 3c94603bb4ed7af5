"""The sequencer: gives committed audit entries their positions and signs the grown log.

`record` writes entries with no position, so writers never wait for one another. One sequencer
(`manage.py audit_sequencer`) then takes them in batches, each in one transaction:
1. it takes the sequencer's lock (PostgreSQL: a transaction-level advisory lock, tried, not
   waited for, so a second sequencer backs off and retries; SQLite: every transaction already
   holds the database's write lock from BEGIN IMMEDIATE);
2. reads the latest checkpoint, whose compact range is the tree's right frontier;
3. takes the oldest committed entries still without a position, by id, gives them the next
   positions and their leaf hashes (one bulk UPDATE, the only change the database's trigger
   allows on an entry), and stores the perfect subtrees they complete (one bulk INSERT);
4. signs a checkpoint of the new tree size and root (C2SP tlog-checkpoint) and stores it.
A batch rolled back leaves nothing behind; two sequencers never interleave; a crash between
batches loses nothing, since waiting entries simply wait for the next one.

Entries of the hash-chain era (before migration 0013) arrive with their positions and leaf
hashes already set; the first run, finding no checkpoint, builds the tree over them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Count, Max, Min
from django.utils import timezone

from moderation.models import AuditCheckpoint, AuditEntry, AuditTreeNode

from . import checkpoints
from .merkle import CompactRange, leaf_hash
from .note import Signer, format_checkpoint

DEFAULT_BATCH = 5000
# Names the sequencer's advisory lock on PostgreSQL: an arbitrary constant.
_PG_LOCK_KEY = 0x5E0_A0D17
ENTRIES = AuditEntry._meta.db_table
NODES = AuditTreeNode._meta.db_table
# Rows per statement when the tree is built over already positioned entries.
_INTEGRATE_CHUNK = 10_000


# One round trip: the lock, and for this transaction only, plans that read the waiting entries
# through their partial index in id order. Until VACUUM clears them, that index still holds the
# entries already sequenced (an UPDATE leaves the old row version behind); an index scan skips
# them once marked dead, while a bitmap scan, which the planner may prefer, visits every one in
# the table at each batch (measured: 0.7 s a batch on a log of a million entries, not 10 ms).
_PG_BEGIN = (
    "SELECT pg_try_advisory_xact_lock(%s), set_config('enable_bitmapscan', 'off', true), "
    "set_config('enable_sort', 'off', true)"
)


class SequencerError(Exception):
    """The log is in a state the sequencer must not sign over; the message says which."""


@dataclass(frozen=True)
class Batch:
    sequenced: int  # entries given a position in this batch
    integrated: int  # entries that had a position and were added to the tree (first run only)
    tree_size: int


def sequence_batch(*, signer: Signer, batch_size: int = DEFAULT_BATCH) -> Batch | None:
    """Sequence up to `batch_size` waiting entries and sign the new tree, in one transaction.

    Returns None without doing anything when another sequencer holds the lock. Raises
    SequencerError when the stored log is inconsistent (positions a checkpoint does not cover,
    a gap among them): signing over it would vouch for it.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(_PG_BEGIN, [_PG_LOCK_KEY])
                if not cursor.fetchone()[0]:
                    return None
        latest = checkpoints.latest()
        frontier = CompactRange()
        if latest is not None:
            frontier = CompactRange.from_bytes(bytes(latest.compact_range))
            if frontier.size != latest.tree_size:
                raise SequencerError(
                    f"the latest checkpoint (tree size {latest.tree_size}) holds the frontier of "
                    f"a tree of size {frontier.size}"
                )
        top = AuditEntry.objects.aggregate(top=Max("seq"))["top"] or 0
        integrated = 0
        if top > frontier.size:
            if latest is not None:
                raise SequencerError(
                    f"entries #{latest.tree_size + 1} to #{top} have positions that no checkpoint "
                    "covers; only the sequencer writes positions, with a checkpoint in the same "
                    "transaction: run manage.py verify_audit"
                )
            integrated = _integrate_positioned(frontier, top)
        rows = _waiting(batch_size)
        if rows:
            _position(frontier, rows)
        if not (rows or integrated):
            return Batch(0, 0, frontier.size)
        _sign(frontier, signer)
    return Batch(len(rows), integrated, frontier.size)


def _waiting(limit: int) -> list[tuple[int, bytes]]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, content FROM {ENTRIES} WHERE seq IS NULL ORDER BY id LIMIT %s",  # noqa: S608
            [limit],
        )
        return [(entry_id, bytes(content)) for entry_id, content in cursor.fetchall()]


def _position(frontier: CompactRange, rows: list[tuple[int, bytes]]) -> None:
    first = frontier.size + 1
    ids = [entry_id for entry_id, _ in rows]
    seqs = list(range(first, first + len(rows)))
    leaves = [leaf_hash(content) for _, content in rows]
    nodes = frontier.extend(leaves)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # By id alone, through the primary key: the trigger refuses an entry that already
            # has a position, and `seq IS NULL` here would read the bloated partial index.
            cursor.execute(
                f"UPDATE {ENTRIES} AS e SET seq = v.seq, leaf_hash = v.leaf "  # noqa: S608
                "FROM unnest(%s::bigint[], %s::bigint[], %s::bytea[]) AS v(id, seq, leaf) "
                "WHERE e.id = v.id",
                [ids, seqs, leaves],
            )
        else:
            cursor.executemany(
                f"UPDATE {ENTRIES} SET seq = %s, leaf_hash = %s WHERE id = %s AND seq IS NULL",  # noqa: S608
                list(zip(seqs, leaves, ids, strict=True)),
            )
        if cursor.rowcount != len(rows):
            # Only a sequencer writes positions, and it holds the lock: this is not a race.
            raise SequencerError(
                f"{len(rows)} waiting entries were read but {cursor.rowcount} were positioned"
            )
    _store_nodes(nodes)


def _store_nodes(nodes: list[tuple[int, int, bytes]]) -> None:
    if not nodes:
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            levels, indexes, hashes = zip(*nodes, strict=True)
            cursor.execute(
                f'INSERT INTO {NODES} (level, "index", hash) '  # noqa: S608
                "SELECT * FROM unnest(%s::smallint[], %s::bigint[], %s::bytea[])",
                [list(levels), list(indexes), list(hashes)],
            )
        else:
            cursor.executemany(
                f'INSERT INTO {NODES} (level, "index", hash) VALUES (%s, %s, %s)',  # noqa: S608
                nodes,
            )


def _integrate_positioned(frontier: CompactRange, top: int) -> int:
    """Build the tree over entries that came with positions (the hash-chain era's), in order.

    Streams them (a server-side cursor on PostgreSQL), so memory stays flat for any number.
    """
    expected = frontier.size + 1
    pending: list[tuple[int, int, bytes]] = []
    with connection.chunked_cursor() as cursor:
        cursor.execute(
            f"SELECT seq, leaf_hash, content, prev_hash FROM {ENTRIES} "  # noqa: S608
            "WHERE seq IS NOT NULL AND seq >= %s ORDER BY seq",
            [expected],
        )
        while chunk := cursor.fetchmany(_INTEGRATE_CHUNK):
            for seq, leaf, content, prev_hash in chunk:
                if not prev_hash:
                    raise SequencerError(
                        f"entry #{seq} has a position but the log has no checkpoint, and it is "
                        "not of the hash-chain era (the sequencer positions entries and signs "
                        "checkpoints together): were the checkpoints deleted? Run manage.py "
                        "verify_audit"
                    )
                if seq != expected:
                    raise SequencerError(
                        f"entry #{expected} is missing among the positioned entries (the next is "
                        f"#{seq}): the log cannot be built with a gap; run manage.py verify_audit"
                    )
                if leaf is None or bytes(leaf) != leaf_hash(bytes(content)):
                    raise SequencerError(
                        f"entry #{seq} has a position but its leaf hash is not the hash of its "
                        "content: run manage.py verify_audit"
                    )
                pending.extend(frontier.append(bytes(leaf)))
                expected += 1
            if len(pending) >= _INTEGRATE_CHUNK:
                _store_nodes(pending)
                pending = []
    _store_nodes(pending)
    if frontier.size != top:
        raise SequencerError(f"the positioned entries end at #{frontier.size}, not #{top}")
    return top


def _sign(frontier: CompactRange, signer: Signer) -> AuditCheckpoint:
    root = frontier.root()
    note = signer.sign(format_checkpoint(signer.name, frontier.size, root))
    return AuditCheckpoint.objects.create(
        tree_size=frontier.size,
        root_hash=root,
        compact_range=frontier.to_bytes(),
        signed_note=note,
        created_at=timezone.now(),
    )


# --------------------------------------------------------------------------------------- lag

# Counting stops here: past it, the page says "more than" rather than scan a long backlog.
LAG_COUNT_CAP = 100_000


@dataclass(frozen=True)
class Lag:
    waiting: int
    capped: bool  # more than `waiting` are waiting
    oldest: datetime | None  # when the oldest waiting entry was written

    def oldest_seconds(self, now: datetime | None = None) -> int:
        if self.oldest is None:
            return 0
        return max(0, int(((now or timezone.now()) - self.oldest).total_seconds()))


def lag() -> Lag:
    """How far behind the sequencer is: entries waiting for a position, and since when."""
    # One query, through the partial index of waiting entries: the oldest by id is the oldest
    # written, give or take the moment between an entry's timestamp and its INSERT.
    first = AuditEntry.objects.waiting().order_by("id").values("created_at")[: LAG_COUNT_CAP + 1]
    found = first.aggregate(count=Count("*"), oldest=Min("created_at"))
    count = found["count"] or 0
    return Lag(min(count, LAG_COUNT_CAP), count > LAG_COUNT_CAP, found["oldest"])
