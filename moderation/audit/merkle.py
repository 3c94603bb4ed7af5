"""The audit log's Merkle tree: RFC 9162 section 2.1, as pure functions over bytes.

Hashing: a leaf is SHA-256(0x00 || entry), an interior node SHA-256(0x01 || left || right), and
the empty tree's root is SHA-256 of nothing.

Storage model. The log keeps the hash of every *perfect* subtree, named ``(level, index)``: level 0
index i is leaf i's hash, and level L index i the root of leaves [i * 2**L, (i + 1) * 2**L). Those
never change once the leaves exist. Every other node of a tree of size n lies on its right edge
and is folded from perfect subtrees when a proof needs it. So a proof is made in three steps:
``*_plan`` names the O(log n) stored subtrees it needs (one query fetches them all), the caller
reads them into a ``{(level, index): hash}`` mapping, and ``inclusion_proof`` /
``consistency_proof`` / ``root_from`` assemble the result from that mapping.

The sequencer extends the tree with a ``CompactRange``: the tree's right frontier, one hash per
set bit of its size, which is all that appending needs and is kept with each checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# A perfect subtree: (level, index) covers leaves [index * 2**level, (index + 1) * 2**level).
Node = tuple[int, int]


class ProofError(ValueError):
    """A proof does not prove what it claims (or is not shaped like a proof at all)."""


class MissingNodeError(LookupError):
    """The mapping handed to an assembling function lacks a subtree its plan named."""

    def __init__(self, level: int, index: int) -> None:
        super().__init__(f"no hash for the subtree at level {level}, index {index}")
        self.level = level
        self.index = index


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


# --- Which nodes a tree of a given size is made of -----------------------------------------------


def _parts(begin: int, end: int) -> list[Node]:
    """The perfect subtrees, left to right, that make up the tree node covering [begin, end).

    A node of an RFC 9162 tree starts at a multiple of the smallest power of two not below its
    width, so its parts are one per set bit of the width, largest first.
    """
    parts: list[Node] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin & ((1 << level) - 1):
            raise ValueError(f"[{begin}, {end}) is not a node of a Merkle tree")
        parts.append((level, begin >> level))
        begin += 1 << level
    return parts


def _fold(parts: Sequence[Node], nodes: Mapping[Node, bytes]) -> bytes:
    # The RFC splits a node at its largest power of two: the left part is the first perfect
    # subtree and the right part the fold of the rest, so the hash folds from the right.
    hashes = [_get(nodes, part) for part in parts]
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def _get(nodes: Mapping[Node, bytes], node: Node) -> bytes:
    try:
        return nodes[node]
    except KeyError:
        raise MissingNodeError(*node) from None


def _inclusion_path(index: int, size: int) -> list[tuple[int, int]]:
    """The nodes (as leaf ranges) of an inclusion proof, from the leaf's sibling up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path = []
    # Below the level where the paths to `index` and to the last leaf diverge, every node has a
    # sibling: a perfect one, except the highest, which holds the last leaf and may be cut short.
    inner = (index ^ (size - 1)).bit_length()
    for level in range(inner):
        begin = ((index >> level) ^ 1) << level
        path.append((begin, min(begin + (1 << level), size)))
    # Above it the node is on the right edge: its only siblings are perfect ones on the left.
    for level in range(inner, size.bit_length()):
        if (index >> level) & 1:
            begin = ((index >> level) - 1) << level
            path.append((begin, begin + (1 << level)))
    return path


def _consistency_path(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The nodes (as leaf ranges) of RFC 9162's PROOF(old_size, D[new_size]), in proof order."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from tree size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    # SUBPROOF(m, D[begin:begin+n], whole) walked iteratively; each step adds one node, and the
    # RFC lists them deepest first.
    path = []
    begin, n, m, whole = 0, new_size, old_size, True
    while m != n:
        k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
        if m <= k:
            path.append((begin + k, begin + n))
            n = k
        else:
            path.append((begin, begin + k))
            begin, n, m, whole = begin + k, n - k, m - k, False
    if not whole:
        path.append((begin, begin + n))
    path.reverse()
    return path


def _plan(ranges: Iterable[tuple[int, int]]) -> frozenset[Node]:
    return frozenset(part for begin, end in ranges for part in _parts(begin, end))


def inclusion_plan(index: int, size: int) -> frozenset[Node]:
    """The stored subtrees that ``inclusion_proof(index, size, ...)`` reads."""
    return _plan(_inclusion_path(index, size))


def consistency_plan(old_size: int, new_size: int) -> frozenset[Node]:
    """The stored subtrees that ``consistency_proof(old_size, new_size, ...)`` reads."""
    return _plan(_consistency_path(old_size, new_size))


def _frontier(size: int) -> list[Node]:
    if size < 0:
        raise ValueError(f"no tree has size {size}")
    return _parts(0, size)


def root_plan(size: int) -> frozenset[Node]:
    """The stored subtrees that ``root_from(size, ...)`` reads: the frontier of that tree."""
    return frozenset(_frontier(size))


def inclusion_proof(index: int, size: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """RFC 9162 PATH(index, D[size]), from the leaf's sibling up to a child of the root."""
    return [_fold(_parts(b, e), nodes) for b, e in _inclusion_path(index, size)]


def consistency_proof(old_size: int, new_size: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """RFC 9162 PROOF(old_size, D[new_size]); empty when old_size is 0 or new_size."""
    return [_fold(_parts(b, e), nodes) for b, e in _consistency_path(old_size, new_size)]


def root_from(size: int, nodes: Mapping[Node, bytes]) -> bytes:
    """The root hash of the tree of the first ``size`` leaves."""
    parts = _frontier(size)
    return _fold(parts, nodes) if parts else EMPTY_ROOT


# --- Verification, as RFC 9162 sections 2.1.3.2 and 2.1.4.2 write it -----------------------------


def _check_hash(what: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) is leaf ``index`` of the tree of ``size`` with ``root``.

    Raises ProofError saying why not.
    """
    _check_hash("the leaf hash", leaf)
    _check_hash("the root hash", root)
    for position, hash_ in enumerate(proof):
        _check_hash(f"proof hash {position}", hash_)
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError(f"leaf {index} with this proof does not lead to the root hash")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends the one of ``old_size``.

    Raises ProofError saying why not.
    """
    _check_hash("the old root hash", old_root)
    _check_hash("the new root hash", new_root)
    for position, hash_ in enumerate(proof):
        _check_hash(f"proof hash {position}", hash_)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"a tree of size {new_size} cannot extend one of size {old_size}")
    if old_size == 0 or old_size == new_size:
        # Outside the RFC's algorithm (it covers 0 < old < new): nothing to prove but the roots.
        if proof:
            raise ProofError(f"a proof from size {old_size} to {new_size} must be empty")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the old root hash is not the empty tree's")
        if old_size == new_size and old_root != new_root:
            raise ProofError("two different root hashes for the same tree size")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofError(f"the proof does not lead to the old root hash (size {old_size})")
    if sr != new_root:
        raise ProofError(f"the proof does not lead to the new root hash (size {new_size})")


# --- Extending the tree --------------------------------------------------------------------------


class CompactRange:
    """The right frontier of a tree: enough to append leaves and compute the root.

    It holds the roots of the perfect subtrees that make up the tree, largest first, one per set
    bit of the size, so it never grows beyond 64 hashes.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self) -> None:
        self.size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_nodes(cls, size: int, nodes: Mapping[Node, bytes]) -> CompactRange:
        """The frontier of the tree of ``size`` leaves, from the stored nodes of ``root_plan``."""
        frontier = cls()
        frontier._hashes = [_get(nodes, part) for part in _frontier(size)]
        frontier.size = size
        return frontier

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the perfect subtrees it completed, as (level, index, hash).

        Level 0 (the leaf itself) is left out: the caller stores leaf hashes with the entries.
        """
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf)}")
        completed = []
        hash_, level = leaf, 0
        while (self.size >> level) & 1:
            hash_ = node_hash(self._hashes.pop(), hash_)
            level += 1
            completed.append((level, self.size >> level, hash_))
        self._hashes.append(hash_)
        self.size += 1
        return completed

    def extend(self, leaves: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        """Append leaf hashes in order; return every perfect subtree they completed."""
        completed = []
        for leaf in leaves:
            completed.extend(self.append(leaf))
        return completed

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        result = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            result = node_hash(left, result)
        return result

    def nodes(self) -> dict[Node, bytes]:
        """The frontier as stored nodes: the same keys as ``root_plan(self.size)``."""
        return dict(zip(_parts(0, self.size), self._hashes, strict=True))

    def to_bytes(self) -> bytes:
        return self.size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactRange:
        if len(data) < 8:
            raise ValueError("a compact range starts with an 8-byte size")
        size = int.from_bytes(data[:8], "big")
        count = size.bit_count()
        if len(data) != 8 + HASH_SIZE * count:
            raise ValueError(f"a compact range of size {size} holds {count} hashes")
        frontier = cls()
        frontier.size = size
        frontier._hashes = [data[8 + HASH_SIZE * i : 8 + HASH_SIZE * (i + 1)] for i in range(count)]
        return frontier

    def __repr__(self) -> str:
        return f"<CompactRange size={self.size} root={self.root().hex()}>"
