"""The Merkle tree against RFC 9162 section 2.1 written out plainly, and published vectors."""

from __future__ import annotations

import functools
import hashlib

import pytest

from moderation.audit import merkle
from moderation.audit.merkle import CompactRange, MissingNodeError, ProofError

# The RFC 6962 test inputs (certificate-transparency, also transparency-dev/merkle's testonly),
# then plain entries up to the largest tree tested.
RFC6962_INPUTS = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
MAX_SIZE = 300
DATA = RFC6962_INPUTS + [f"audit entry {i}".encode() for i in range(8, MAX_SIZE)]


# --- RFC 9162 section 2.1, transcribed: D[begin:end] is the list of entries DATA[begin:end] ------


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@functools.cache
def ref_mth(begin: int, end: int) -> bytes:
    n = end - begin
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + DATA[begin])
    k = largest_power_of_two_below(n)
    return sha256(b"\x01" + ref_mth(begin, begin + k) + ref_mth(begin + k, end))


@functools.cache
def ref_path(m: int, begin: int, end: int) -> tuple[bytes, ...]:
    n = end - begin
    if n == 1:
        return ()
    k = largest_power_of_two_below(n)
    if m < k:
        return (*ref_path(m, begin, begin + k), ref_mth(begin + k, end))
    return (*ref_path(m - k, begin + k, end), ref_mth(begin, begin + k))


@functools.cache
def ref_subproof(m: int, begin: int, end: int, whole: bool) -> tuple[bytes, ...]:
    n = end - begin
    if m == n:
        return () if whole else (ref_mth(begin, end),)
    k = largest_power_of_two_below(n)
    if m <= k:
        return (*ref_subproof(m, begin, begin + k, whole), ref_mth(begin + k, end))
    return (*ref_subproof(m - k, begin + k, end, False), ref_mth(begin, begin + k))


def ref_proof(m: int, n: int) -> tuple[bytes, ...]:
    return ref_subproof(m, 0, n, True)


# --- The stored nodes, as the sequencer would write them -----------------------------------------


@pytest.fixture(scope="module")
def store() -> dict[tuple[int, int], bytes]:
    nodes = {}
    tree = CompactRange()
    for index, entry in enumerate(DATA):
        leaf = merkle.leaf_hash(entry)
        nodes[(0, index)] = leaf
        for level, node_index, hash_ in tree.append(leaf):
            nodes[(level, node_index)] = hash_
    return nodes


def only_inside(plan: frozenset[tuple[int, int]], size: int) -> bool:
    return all((index + 1) << level <= size for level, index in plan)


def flipped(hash_: bytes, position: int = 0) -> bytes:
    return hash_[:position] + bytes([hash_[position] ^ 1]) + hash_[position + 1 :]


# --- Published vectors ---------------------------------------------------------------------------

RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# (leaf index, tree size, proof) and (old size, new size, proof) from the RFC 6962 test data
# (transparency-dev/merkle cmd/proofgen).
PUBLISHED_INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
PUBLISHED_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def test_the_empty_tree_has_the_hash_of_nothing_as_its_root(store):
    expected = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle.EMPTY_ROOT.hex() == expected
    assert merkle.root_from(0, store).hex() == expected
    assert merkle.root_plan(0) == frozenset()
    assert CompactRange().root().hex() == expected


def test_roots_of_the_rfc_6962_inputs_are_the_published_ones(store):
    for size, root in enumerate(RFC6962_ROOTS, start=1):
        assert merkle.root_from(size, store).hex() == root


@pytest.mark.parametrize(("index", "size", "proof"), PUBLISHED_INCLUSION)
def test_inclusion_proofs_are_the_published_ones(store, index, size, proof):
    assert [h.hex() for h in merkle.inclusion_proof(index, size, store)] == proof
    root = bytes.fromhex(RFC6962_ROOTS[size - 1])
    leaf = merkle.leaf_hash(RFC6962_INPUTS[index])
    merkle.verify_inclusion(leaf, index, size, [bytes.fromhex(h) for h in proof], root)


@pytest.mark.parametrize(("old", "new", "proof"), PUBLISHED_CONSISTENCY)
def test_consistency_proofs_are_the_published_ones(store, old, new, proof):
    assert [h.hex() for h in merkle.consistency_proof(old, new, store)] == proof
    merkle.verify_consistency(
        old,
        new,
        bytes.fromhex(RFC6962_ROOTS[old - 1]),
        bytes.fromhex(RFC6962_ROOTS[new - 1]),
        [bytes.fromhex(h) for h in proof],
    )


# --- Every tree size from 1 to 300 against the transcription -------------------------------------


def test_every_stored_subtree_is_the_rfc_hash_of_its_leaves(store):
    for (level, index), hash_ in store.items():
        assert hash_ == ref_mth(index << level, (index + 1) << level)
    perfect = {
        (level, index)
        for level in range(MAX_SIZE.bit_length())
        for index in range(MAX_SIZE >> level)
    }
    assert set(store) == perfect


def test_every_root_for_sizes_1_to_300_is_the_rfc_root(store):
    tree = CompactRange()
    for size in range(1, MAX_SIZE + 1):
        tree.append(merkle.leaf_hash(DATA[size - 1]))
        plan = merkle.root_plan(size)
        assert only_inside(plan, size)
        assert len(plan) == size.bit_count()
        root = merkle.root_from(size, {node: store[node] for node in plan})
        assert root == ref_mth(0, size)
        assert tree.root() == root


def test_every_inclusion_proof_for_sizes_1_to_300_is_the_rfc_path_and_verifies(store):
    for size in range(1, MAX_SIZE + 1):
        root = ref_mth(0, size)
        for index in range(size):
            plan = merkle.inclusion_plan(index, size)
            assert only_inside(plan, size)
            assert len(plan) <= 2 * size.bit_length()
            proof = merkle.inclusion_proof(index, size, {node: store[node] for node in plan})
            assert tuple(proof) == ref_path(index, 0, size)
            merkle.verify_inclusion(store[(0, index)], index, size, proof, root)


def test_every_consistency_proof_for_sizes_1_to_300_is_the_rfc_proof_and_verifies(store):
    for new in range(1, MAX_SIZE + 1):
        new_root = ref_mth(0, new)
        for old in range(1, new + 1):
            plan = merkle.consistency_plan(old, new)
            assert only_inside(plan, new)
            assert len(plan) <= 2 * new.bit_length()
            proof = merkle.consistency_proof(old, new, {node: store[node] for node in plan})
            assert tuple(proof) == ref_proof(old, new)
            merkle.verify_consistency(old, new, ref_mth(0, old), new_root, proof)


def test_a_consistency_proof_from_the_empty_tree_is_empty_and_needs_the_empty_root(store):
    assert merkle.consistency_proof(0, 5, store) == []
    merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, ref_mth(0, 5), [])
    with pytest.raises(ProofError, match="empty tree"):
        merkle.verify_consistency(0, 5, ref_mth(0, 1), ref_mth(0, 5), [])
    with pytest.raises(ProofError, match="must be empty"):
        merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, ref_mth(0, 5), [ref_mth(0, 1)])


def test_plans_stay_logarithmic_in_a_huge_tree():
    size = 10**12 + 12345
    for index in (0, 1, size // 3, size - 2, size - 1):
        assert len(merkle.inclusion_plan(index, size)) <= 2 * size.bit_length()
    for old in (1, 2**39, size // 2 + 7, size - 1):
        assert len(merkle.consistency_plan(old, size)) <= 2 * size.bit_length()


# --- Tampering -----------------------------------------------------------------------------------


TAMPER_SIZES = [*range(1, 40), 64, 65, 127, 200, 255, 256, 257, 300]


def test_an_inclusion_proof_with_any_byte_flipped_is_refused(store):
    for size in TAMPER_SIZES:
        root = ref_mth(0, size)
        for index in range(size):
            proof = list(ref_path(index, 0, size))
            leaf = store[(0, index)]
            for position in range(len(proof)):
                for byte in (0, 31):
                    bad = [*proof]
                    bad[position] = flipped(proof[position], byte)
                    with pytest.raises(ProofError):
                        merkle.verify_inclusion(leaf, index, size, bad, root)
            with pytest.raises(ProofError):
                merkle.verify_inclusion(flipped(leaf), index, size, proof, root)
            with pytest.raises(ProofError):
                merkle.verify_inclusion(leaf, index, size, proof, flipped(root, 31))


def test_an_inclusion_proof_cut_short_or_lengthened_is_refused(store):
    for size in TAMPER_SIZES:
        root = ref_mth(0, size)
        for index in range(size):
            proof = list(ref_path(index, 0, size))
            leaf = store[(0, index)]
            for bad in ([*proof, root], [*proof, bytes(32)], [leaf, *proof]):
                with pytest.raises(ProofError, match="longer than the tree is deep"):
                    merkle.verify_inclusion(leaf, index, size, bad, root)
            if proof:
                for bad in (proof[:-1], proof[1:]):
                    with pytest.raises(ProofError, match="shorter than the tree is deep"):
                        merkle.verify_inclusion(leaf, index, size, bad, root)


def test_an_inclusion_proof_is_refused_for_another_index_or_size_unless_it_is_that_proof(store):
    # The verifier sees hashes only, so a proof is accepted for another (index, size) exactly
    # when it is that position's proof too: the claim the checkpoint's signed size settles.
    for size in TAMPER_SIZES:
        for index in range(size):
            proof = list(ref_path(index, 0, size))
            leaf = store[(0, index)]
            for other_index in {index - 1, index + 1, index ^ 2} - {index}:
                if 0 <= other_index < size:
                    with pytest.raises(ProofError):
                        merkle.verify_inclusion(leaf, other_index, size, proof, ref_mth(0, size))
            for other_size in (size - 1, size + 1, size * 2, size // 2):
                if other_size <= 0 or other_size > MAX_SIZE:
                    continue
                other_root = ref_mth(0, other_size)
                if index < other_size and ref_path(index, 0, other_size) == tuple(proof):
                    merkle.verify_inclusion(leaf, index, other_size, proof, other_root)
                else:
                    with pytest.raises(ProofError):
                        merkle.verify_inclusion(leaf, index, other_size, proof, other_root)


def test_an_inclusion_proof_is_refused_for_an_index_outside_the_tree_or_bad_hashes(store):
    proof = list(ref_path(0, 0, 4))
    with pytest.raises(ProofError, match="not in a tree of size 4"):
        merkle.verify_inclusion(store[(0, 0)], 4, 4, proof, ref_mth(0, 4))
    with pytest.raises(ProofError, match="not in a tree of size 0"):
        merkle.verify_inclusion(store[(0, 0)], 0, 0, [], merkle.EMPTY_ROOT)
    with pytest.raises(ProofError, match="proof hash 1"):
        merkle.verify_inclusion(store[(0, 0)], 0, 4, [proof[0], proof[1][:31]], ref_mth(0, 4))
    with pytest.raises(ProofError, match="leaf hash"):
        merkle.verify_inclusion(b"short", 0, 4, proof, ref_mth(0, 4))


def test_a_consistency_proof_with_any_byte_flipped_is_refused():
    for new in TAMPER_SIZES:
        for old in range(1, new):
            proof = list(ref_proof(old, new))
            old_root, new_root = ref_mth(0, old), ref_mth(0, new)
            for position in range(len(proof)):
                bad = [*proof]
                bad[position] = flipped(proof[position], position % 32)
                with pytest.raises(ProofError):
                    merkle.verify_consistency(old, new, old_root, new_root, bad)
            with pytest.raises(ProofError):
                merkle.verify_consistency(old, new, flipped(old_root), new_root, proof)
            with pytest.raises(ProofError):
                merkle.verify_consistency(old, new, old_root, flipped(new_root), proof)
            with pytest.raises(ProofError):
                merkle.verify_consistency(old, new, new_root, old_root, proof)


def test_a_consistency_proof_cut_short_or_lengthened_is_refused():
    for new in TAMPER_SIZES:
        for old in range(1, new):
            proof = list(ref_proof(old, new))
            old_root, new_root = ref_mth(0, old), ref_mth(0, new)
            for bad in (proof[:-1], proof[1:], [*proof, new_root], [old_root, *proof], []):
                with pytest.raises(ProofError):
                    merkle.verify_consistency(old, new, old_root, new_root, bad)


def test_a_consistency_proof_is_refused_for_other_sizes_unless_it_is_that_proof():
    for new in TAMPER_SIZES:
        for old in range(1, new):
            proof = ref_proof(old, new)
            for other_old, other_new in (
                (old - 1, new),
                (old + 1, new),
                (old, new - 1),
                (old, new + 1),
                (old, new * 2),
            ):
                if not 1 <= other_old < other_new <= MAX_SIZE:
                    continue
                args = (other_old, other_new, ref_mth(0, other_old), ref_mth(0, other_new))
                if ref_proof(other_old, other_new) == proof:
                    merkle.verify_consistency(*args, list(proof))
                else:
                    with pytest.raises(ProofError):
                        merkle.verify_consistency(*args, list(proof))


def test_a_consistency_proof_between_equal_or_shrinking_sizes_is_refused_when_wrong():
    root = ref_mth(0, 9)
    merkle.verify_consistency(9, 9, root, root, [])
    with pytest.raises(ProofError, match="same tree size"):
        merkle.verify_consistency(9, 9, root, ref_mth(0, 8), [])
    with pytest.raises(ProofError, match="must be empty"):
        merkle.verify_consistency(9, 9, root, root, [root])
    with pytest.raises(ProofError, match="cannot extend"):
        merkle.verify_consistency(9, 8, root, ref_mth(0, 8), list(ref_proof(8, 9)))


# --- Plans and assembling ------------------------------------------------------------------------


def test_plans_refuse_positions_outside_the_tree():
    with pytest.raises(ValueError, match="not in a tree of size 5"):
        merkle.inclusion_plan(5, 5)
    with pytest.raises(ValueError, match="from tree size 6 to 5"):
        merkle.consistency_plan(6, 5)
    for negative in (merkle.root_plan, lambda size: merkle.root_from(size, {})):
        with pytest.raises(ValueError, match="size -1"):
            negative(-1)
    with pytest.raises(ValueError, match="size -1"):
        CompactRange.from_nodes(-1, {})
    assert merkle.consistency_plan(5, 5) == frozenset()
    assert merkle.consistency_plan(0, 5) == frozenset()


def test_assembling_a_proof_without_a_planned_node_names_the_missing_one(store):
    nodes = {node: store[node] for node in merkle.inclusion_plan(5, 7)}
    del nodes[(0, 6)]
    with pytest.raises(MissingNodeError, match="level 0, index 6") as caught:
        merkle.inclusion_proof(5, 7, nodes)
    assert (caught.value.level, caught.value.index) == (0, 6)


# --- The compact range ---------------------------------------------------------------------------


def test_appending_returns_each_perfect_subtree_once_as_it_completes(store):
    tree = CompactRange()
    seen: dict[tuple[int, int], bytes] = {}
    for index, entry in enumerate(DATA):
        for level, node_index, hash_ in tree.append(merkle.leaf_hash(entry)):
            assert level >= 1
            assert (node_index + 1) << level == index + 1  # completed by this very leaf
            assert (level, node_index) not in seen
            seen[(level, node_index)] = hash_
    assert seen == {node: hash_ for node, hash_ in store.items() if node[0] >= 1}


def test_a_compact_range_round_trips_through_bytes_and_through_stored_nodes(store):
    tree = CompactRange()
    for size in range(MAX_SIZE + 1):
        data = tree.to_bytes()
        assert len(data) == 8 + 32 * size.bit_count()
        restored = CompactRange.from_bytes(data)
        rebuilt = CompactRange.from_nodes(size, store)
        assert restored.size == rebuilt.size == size
        assert restored.to_bytes() == rebuilt.to_bytes() == data
        assert restored.root() == ref_mth(0, size)
        assert tree.nodes() == {node: store[node] for node in merkle.root_plan(size)}
        if size < MAX_SIZE:
            leaf = merkle.leaf_hash(DATA[size])
            assert restored.append(leaf) == tree.append(leaf)
            assert restored.to_bytes() == tree.to_bytes()


def test_a_compact_range_refuses_bytes_that_do_not_fit_its_size():
    tree = CompactRange()
    tree.extend(merkle.leaf_hash(entry) for entry in DATA[:5])
    data = tree.to_bytes()
    for bad in (data[:-1], data + b"\x00", data[:7], (7).to_bytes(8, "big") + data[8:]):
        with pytest.raises(ValueError, match="compact range"):
            CompactRange.from_bytes(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"not a hash")
