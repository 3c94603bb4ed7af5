"""The audit log's key, its signed checkpoints and its stored tree: what proofs are made of.

The pure parts (hashing, proofs, notes, receipts) are merkle.py, note.py and receipt.py; this
module reads what they need from the database. Level 0 of the tree is AuditEntry.leaf_hash
(leaf index = seq - 1); levels 1 and up are AuditTreeNode rows; both are written only by the
sequencer and never change.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db.models import Q

from moderation.models import AuditCheckpoint, AuditEntry, AuditTreeNode

from . import merkle, receipt
from .merkle import Node
from .note import Checkpoint, Signer, Verifier, open_checkpoint


class NoSigningKey(Exception):
    def __init__(self) -> None:
        super().__init__(
            "no audit signing key is configured: set AUDIT_SIGNING_KEY or AUDIT_SIGNING_KEY_FILE "
            "to a signer key (manage.py audit_keygen NAME makes one)"
        )


def signer() -> Signer:
    """The log's signing key, from settings (checked there when the process started)."""
    if not settings.AUDIT_SIGNING_KEY:
        raise NoSigningKey
    return Signer.from_key(settings.AUDIT_SIGNING_KEY)


def verifier() -> Verifier | None:
    """The log's public key, or None when no signing key is configured."""
    return signer().verifier if settings.AUDIT_SIGNING_KEY else None


def latest() -> AuditCheckpoint | None:
    return AuditCheckpoint.objects.order_by("-tree_size").first()


def read_nodes(plan: Iterable[Node]) -> dict[Node, bytes]:
    """The stored hashes of the perfect subtrees a plan names (merkle.*_plan), in two queries."""
    leaves = [index + 1 for level, index in plan if level == 0]
    inner = [(level, index) for level, index in plan if level > 0]
    nodes: dict[Node, bytes] = {}
    if leaves:
        for seq, leaf in AuditEntry.objects.filter(seq__in=leaves).values_list("seq", "leaf_hash"):
            if seq is not None and leaf is not None:
                nodes[(0, seq - 1)] = bytes(leaf)
    if inner:
        wanted = Q()
        for level, index in inner:
            wanted |= Q(level=level, index=index)
        for level, index, hash_ in AuditTreeNode.objects.filter(wanted).values_list(
            "level", "index", "hash"
        ):
            nodes[(level, index)] = bytes(hash_)
    return nodes


class NotProvable(Exception):
    """No receipt can be made for this entry yet; the message says why, for a 404 page."""


class TreeDamaged(Exception):
    """The stored tree cannot prove an entry the latest checkpoint covers: a hash is missing or
    altered. Not the asker's fault, and no receipt is given; the message says what to run."""


def entry_receipt(seq: int) -> str:
    """A tlog-proof@v1 receipt for the entry at position `seq`, against the latest checkpoint."""
    checkpoint = latest()
    if checkpoint is None:
        raise NotProvable(
            f"Entry #{seq} has no receipt yet: the log has no checkpoint (is the sequencer "
            "running?)."
        )
    if seq > checkpoint.tree_size:
        raise NotProvable(
            f"Entry #{seq} has no receipt yet: the latest checkpoint covers entries #1 to "
            f"#{checkpoint.tree_size}."
        )
    index = seq - 1
    size = checkpoint.tree_size
    # The entry's own leaf comes in the same query as the proof's nodes, to check the receipt
    # before it is handed out: a node missing or altered in storage makes a receipt that proves
    # nothing, and the one asking should hear that from us, not from their verifier.
    nodes = read_nodes(merkle.inclusion_plan(index, size) | {(0, index)})
    try:
        proof = merkle.inclusion_proof(index, size, nodes)
        leaf = nodes.get((0, index))
        if leaf is None:
            raise merkle.MissingNodeError(0, index)
        merkle.verify_inclusion(leaf, index, size, proof, bytes(checkpoint.root_hash))
    except (merkle.MissingNodeError, merkle.ProofError) as error:
        raise TreeDamaged(
            f"Entry #{seq} has no receipt: the stored tree does not prove it is in the latest "
            f"checkpoint ({error}). Run manage.py verify_audit."
        ) from None
    return receipt.format_receipt(index, proof, checkpoint.signed_note)


def consistency_proof(old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162's proof that the tree of `new_size` extends the one of `old_size`."""
    plan = merkle.consistency_plan(old_size, new_size)
    return merkle.consistency_proof(old_size, new_size, read_nodes(plan))


def open_latest(checkpoint: AuditCheckpoint, key: Verifier) -> Checkpoint:
    """The checkpoint's note opened with the log's key (raises note.NoteError saying why)."""
    return open_checkpoint(checkpoint.signed_note, key)
