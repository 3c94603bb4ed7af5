"""Receipts in the C2SP tlog-proof@v1 format, and the standalone verifier an auditor runs."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from moderation.audit import merkle, note, receipt
from moderation.audit.merkle import ProofError
from moderation.audit.note import (
    InvalidSignatureError,
    NoteError,
    Signer,
    UnverifiedNoteError,
)
from moderation.audit.receipt import Receipt, ReceiptError

ORIGIN = "audit.example/moderation"
ROOT_DIR = Path(__file__).resolve().parent.parent


class Log:
    """A log held in memory the way the sequencer keeps it: leaves, stored subtrees, a frontier."""

    def __init__(self, signer: Signer, entries: list[bytes]) -> None:
        self.signer = signer
        self.entries = entries
        self.nodes: dict[tuple[int, int], bytes] = {}
        tree = merkle.CompactRange()
        for index, entry in enumerate(entries):
            leaf = merkle.leaf_hash(entry)
            self.nodes[(0, index)] = leaf
            self.nodes.update({(lv, i): h for lv, i, h in tree.append(leaf)})
        self.root = tree.root()
        text = note.format_checkpoint(ORIGIN, len(entries), self.root)
        self.checkpoint = signer.sign(text)

    def receipt(self, index: int, extra: bytes | None = None) -> str:
        plan = merkle.inclusion_plan(index, len(self.entries))
        proof = merkle.inclusion_proof(index, len(self.entries), {n: self.nodes[n] for n in plan})
        return receipt.format_receipt(index, proof, self.checkpoint, extra)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.from_key(note.generate_signer_key(ORIGIN))


@pytest.fixture(scope="module")
def log(signer) -> Log:
    entries = [b'{"seq": %d, "action": "decide", "verdict": "approve"}' % i for i in range(37)]
    return Log(signer, entries)


def test_a_receipt_has_the_spec_layout(log):
    text = log.receipt(36)
    lines = text.split("\n")
    assert lines[0] == "c2sp.org/tlog-proof@v1"
    assert lines[1] == "index 36"
    proof = merkle.inclusion_proof(36, 37, log.nodes)
    assert lines[2 : 2 + len(proof)] == [base64.b64encode(h).decode() for h in proof]
    assert lines[2 + len(proof)] == ""
    assert text.endswith("\n\n" + log.checkpoint)
    with_extra = log.receipt(3, extra=b"seq 4")
    assert with_extra.split("\n")[1:3] == [
        "extra " + base64.b64encode(b"seq 4").decode(),
        "index 3",
    ]


def test_every_receipt_round_trips_and_verifies(log, signer):
    for index, entry in enumerate(log.entries):
        text = log.receipt(index)
        parsed = receipt.parse_receipt(text)
        assert parsed == Receipt(
            index, tuple(merkle.inclusion_proof(index, 37, log.nodes)), log.checkpoint
        )
        checkpoint = receipt.verify_receipt(entry, text, signer.verifier_key())
        assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (ORIGIN, 37, log.root)
    assert receipt.parse_receipt(log.receipt(5, extra=b"\x00\xff")).extra == b"\x00\xff"
    assert receipt.verify_receipt(log.entries[5], log.receipt(5, b"x").encode(), signer.verifier)


def test_a_one_entry_log_has_a_receipt_with_no_proof_hashes(signer):
    single = Log(signer, [b"only entry"])
    text = single.receipt(0)
    assert text == "c2sp.org/tlog-proof@v1\nindex 0\n\n" + single.checkpoint
    assert receipt.verify_receipt(b"only entry", text, signer.verifier_key()).size == 1


def test_the_tlog_proof_specs_example_parses():
    example = (
        "c2sp.org/tlog-proof@v1\n"
        "extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ\n"
        "index 73894\n"
        "gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\n"
        "B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=\n"
        "EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=\n"
        "RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=\n"
        "AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=\n"
        "\n"
        "example.com/fancylog\n"
        "109482\n"
        "sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n"
        "\n"
        "— example.com/fancylog hI2DJw[...]1roloI=\n"
    )
    parsed = receipt.parse_receipt(example)
    assert parsed.index == 73894
    assert len(parsed.proof) == 5
    assert parsed.extra is not None
    assert parsed.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert parsed.checkpoint.startswith("example.com/fancylog\n109482\n")


def test_another_entry_or_index_is_not_proven(log, signer):
    vkey = signer.verifier_key()
    with pytest.raises(ProofError, match="leaf 5"):
        receipt.verify_receipt(log.entries[6], log.receipt(5), vkey)
    with pytest.raises(ProofError):
        receipt.verify_receipt(log.entries[5] + b" ", log.receipt(5), vkey)
    moved = log.receipt(5).replace("index 5\n", "index 4\n")
    with pytest.raises(ProofError):
        receipt.verify_receipt(log.entries[4], moved, vkey)
    with pytest.raises(ProofError):
        receipt.verify_receipt(log.entries[5], moved, vkey)
    beyond = log.receipt(5).replace("index 5\n", "index 37\n")
    with pytest.raises(ProofError, match="not in a tree of size 37"):
        receipt.verify_receipt(log.entries[5], beyond, vkey)


def test_a_tampered_proof_hash_is_refused(log, signer):
    text = log.receipt(20)
    lines = text.split("\n")
    for position in range(2, 2 + len(merkle.inclusion_proof(20, 37, log.nodes))):
        raw = bytearray(base64.b64decode(lines[position]))
        raw[7] ^= 0x40
        bad = [*lines]
        bad[position] = base64.b64encode(bytes(raw)).decode()
        with pytest.raises(ProofError):
            receipt.verify_receipt(log.entries[20], "\n".join(bad), signer.verifier_key())
    dropped = [*lines[:2], *lines[3:]]
    with pytest.raises(ProofError, match="shorter"):
        receipt.verify_receipt(log.entries[20], "\n".join(dropped), signer.verifier_key())


def test_a_checkpoint_not_signed_by_the_logs_key_is_refused(log, signer):
    other = Signer.from_key(note.generate_signer_key(ORIGIN))
    with pytest.raises(UnverifiedNoteError):
        receipt.verify_receipt(log.entries[0], log.receipt(0), other.verifier_key())
    # A checkpoint claiming another size or root no longer carries a valid signature.
    forged = log.receipt(0).replace(f"{ORIGIN}\n37\n", f"{ORIGIN}\n38\n")
    with pytest.raises(InvalidSignatureError):
        receipt.verify_receipt(log.entries[0], forged, signer.verifier_key())
    # A log signing someone else's origin is not this log.
    elsewhere = Signer.from_key(note.generate_signer_key("elsewhere.example/log"))
    checkpoint = elsewhere.sign(note.format_checkpoint(ORIGIN, 1, merkle.leaf_hash(b"e")))
    with pytest.raises(NoteError, match="for the log"):
        receipt.verify_receipt(
            b"e", receipt.format_receipt(0, [], checkpoint), elsewhere.verifier_key()
        )


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("index 0\n\ncheckpoint\n", "does not start with"),
        ("c2sp.org/tlog-proof@v2\nindex 0\n\ncheckpoint\n", "does not start with"),
        ("c2sp.org/tlog-proof@v1\n", "no signed checkpoint"),
        ("c2sp.org/tlog-proof@v1\nindex 0\n", "no signed checkpoint"),
        ("c2sp.org/tlog-proof@v1\nindex 0\n\n", "no signed checkpoint"),
        ("c2sp.org/tlog-proof@v1\n\ncheckpoint\n", "index"),
        ("c2sp.org/tlog-proof@v1\nindex 01\n\ncheckpoint\n", "index"),
        ("c2sp.org/tlog-proof@v1\nindex -1\n\ncheckpoint\n", "index"),
        ("c2sp.org/tlog-proof@v1\nindex x\n\ncheckpoint\n", "index"),
        ("c2sp.org/tlog-proof@v1\nindex  1\n\ncheckpoint\n", "index"),
        ("c2sp.org/tlog-proof@v1\nindex 18446744073709551616\n\ncheckpoint\n", "index"),
        ("c2sp.org/tlog-proof@v1\nextra !!\nindex 0\n\ncheckpoint\n", "extra data"),
        ("c2sp.org/tlog-proof@v1\nindex 0\nextra AAAA\n\ncheckpoint\n", "proof hash 0"),
        ("c2sp.org/tlog-proof@v1\nindex 0\nnot base64\n\ncheckpoint\n", "proof hash 0"),
        ("c2sp.org/tlog-proof@v1\nindex 0\nAAAA\n\ncheckpoint\n", "32 bytes"),
        ("c2sp.org/tlog-proof@v1\nindex 0\n" + ("A" * 43 + "=\n") * 65 + "\ncp\n", "64 hashes"),
        (b"c2sp.org/tlog-proof@v1\nindex 0\n\n\xff\n", "UTF-8"),
    ],
)
def test_malformed_receipts_are_refused_with_the_reason(bad, reason):
    with pytest.raises(ReceiptError, match=reason):
        receipt.parse_receipt(bad)


# --- The command an auditor runs -----------------------------------------------------------------


def run_verifier(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # -X importtime lists every module the command imports, on stderr.
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "moderation.audit.receipt", *map(str, args)],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        check=False,
    )


def imported_modules(stderr: str) -> list[str]:
    return [
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]


def messages(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


@pytest.fixture
def files(tmp_path, log, signer):
    (tmp_path / "entry").write_bytes(log.entries[11])
    (tmp_path / "entry.tlog-proof").write_text(log.receipt(11))
    (tmp_path / "log.vkey").write_text(signer.verifier_key() + "\n")
    return tmp_path


def test_the_command_says_ok_for_an_entry_in_the_log_and_imports_no_django(files, log, signer):
    result = run_verifier(files / "entry", files / "entry.tlog-proof", signer.verifier_key())
    assert result.returncode == 0, result.stderr
    root = base64.b64encode(log.root).decode()
    assert result.stdout == f"OK: entry 11 is in {ORIGIN} at tree size 37 (root {root})\n"
    modules = imported_modules(result.stderr)
    # runpy runs the command's own module; what it imports is listed.
    assert {"moderation.audit.merkle", "moderation.audit.note", "cryptography"} <= set(modules)
    assert not [m for m in modules if m.split(".")[0] == "django"]
    assert messages(result.stderr) == ""


def test_the_command_reads_the_verifier_key_from_a_file(files, signer):
    result = run_verifier(files / "entry", files / "entry.tlog-proof", files / "log.vkey")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: entry 11 is in ")


def test_the_command_fails_with_the_reason_for_an_entry_not_proven(files, log, signer):
    (files / "entry").write_bytes(log.entries[12])
    result = run_verifier(files / "entry", files / "entry.tlog-proof", files / "log.vkey")
    assert result.returncode == 1
    assert result.stdout == ""
    reason = "leaf 11 with this proof does not lead to the root hash"
    assert messages(result.stderr) == f"FAILED: {reason}"

    other = Signer.from_key(note.generate_signer_key(ORIGIN)).verifier_key()
    result = run_verifier(files / "entry", files / "entry.tlog-proof", other)
    assert result.returncode == 1
    assert messages(result.stderr).startswith("FAILED: the note has no signature by " + ORIGIN)

    (files / "entry.tlog-proof").write_text("not a receipt\n")
    result = run_verifier(files / "entry", files / "entry.tlog-proof", files / "log.vkey")
    assert result.returncode == 1
    assert messages(result.stderr) == (
        "FAILED: the receipt does not start with c2sp.org/tlog-proof@v1"
    )


def test_the_command_is_a_usage_error_without_its_three_arguments_or_files(files, signer):
    result = run_verifier(files / "entry", files / "entry.tlog-proof")
    assert result.returncode == 2
    assert "usage:" in result.stderr
    result = run_verifier(files / "missing", files / "entry.tlog-proof", files / "log.vkey")
    assert result.returncode == 2
    assert "missing" in messages(result.stderr)
    result = run_verifier(files / "entry", files / "entry.tlog-proof", "not-a-key")
    assert result.returncode == 2
    assert "verifier key" in messages(result.stderr)
