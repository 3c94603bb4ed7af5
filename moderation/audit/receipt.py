"""Receipts: proof that an audit entry is in the log, in the C2SP tlog-proof@v1 text format.

    c2sp.org/tlog-proof@v1
    extra <base64>                 (optional, unauthenticated)
    index <N>
    <base64 hash>                  (the inclusion proof, leaf's sibling first; zero or more)

    <the signed checkpoint, verbatim>

Anyone can check one offline, with the standard library and ``cryptography`` only:

    python -m moderation.audit.receipt ENTRY_FILE PROOF_FILE VERIFIER_KEY

ENTRY_FILE holds the entry's exact bytes (``GET /audit/entries/<seq>``), PROOF_FILE the receipt
(``GET /audit/entries/<seq>/proof``), VERIFIER_KEY the log's public key as shown on the audit page
(``<name>+<key id>+<base64 key>``), or a file holding it. Exit status 0: the entry is in the log;
1: it is not proven (the reason is printed); 2: the command was used wrongly.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .merkle import HASH_SIZE, ProofError, leaf_hash, verify_inclusion
from .note import Checkpoint, NoteError, Verifier, open_checkpoint

HEADER = "c2sp.org/tlog-proof@v1"
_INDEX = re.compile(r"index (0|[1-9][0-9]{0,19})")
# A tree of at most 2**64 leaves has at most 64 levels.
MAX_PROOF_HASHES = 64


class ReceiptError(ValueError):
    """The receipt is not a well-formed tlog-proof@v1 text."""


@dataclass(frozen=True)
class Receipt:
    index: int
    proof: tuple[bytes, ...]
    checkpoint: str  # the signed checkpoint note, verbatim
    extra: bytes | None = None


def format_receipt(
    index: int, proof: Sequence[bytes], signed_checkpoint: str, extra: bytes | None = None
) -> str:
    lines = [HEADER]
    if extra is not None:
        lines.append("extra " + base64.b64encode(extra).decode())
    lines.append(f"index {index}")
    lines.extend(base64.b64encode(hash_).decode() for hash_ in proof)
    return "\n".join(lines) + "\n\n" + signed_checkpoint


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ReceiptError(f"the {what} is not base64") from None


def parse_receipt(text: str | bytes) -> Receipt:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ReceiptError("the receipt is not UTF-8 text") from None
    # The proof lines are never empty, so the first blank line ends them.
    head, blank, checkpoint = text.partition("\n\n")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise ReceiptError(f"the receipt does not start with {HEADER}")
    if not blank or not checkpoint:
        raise ReceiptError("the receipt has no signed checkpoint after a blank line")
    lines.pop(0)
    extra = None
    if lines and lines[0].startswith("extra "):
        extra = _b64decode(lines.pop(0).removeprefix("extra "), "extra data")
    match = _INDEX.fullmatch(lines.pop(0)) if lines else None
    if match is None or int(match[1]) >= 1 << 64:
        raise ReceiptError("the receipt has no 'index N' line where one belongs")
    if len(lines) > MAX_PROOF_HASHES:
        raise ReceiptError(f"the inclusion proof has more than {MAX_PROOF_HASHES} hashes")
    proof = tuple(_b64decode(line, f"proof hash {i}") for i, line in enumerate(lines))
    if any(len(hash_) != HASH_SIZE for hash_ in proof):
        raise ReceiptError(f"a proof hash is not {HASH_SIZE} bytes")
    return Receipt(int(match[1]), proof, checkpoint, extra)


def verify_receipt(entry: bytes, receipt: str | bytes, verifier_key: str | Verifier) -> Checkpoint:
    """Check that ``entry`` is in the log whose key is ``verifier_key``; return the checkpoint.

    Raises ReceiptError (malformed receipt), NoteError (checkpoint not signed by that key, or
    malformed) or ProofError (the entry is not at that index in that tree); all are ValueErrors.
    """
    verifier = (
        verifier_key if isinstance(verifier_key, Verifier) else Verifier.from_key(verifier_key)
    )
    parsed = parse_receipt(receipt)
    checkpoint = open_checkpoint(parsed.checkpoint, verifier)
    verify_inclusion(leaf_hash(entry), parsed.index, checkpoint.size, parsed.proof, checkpoint.root)
    return checkpoint


def _read_key(argument: str) -> Verifier:
    path = Path(argument)
    text = path.read_text(encoding="utf-8").strip() if path.is_file() else argument.strip()
    return Verifier.from_key(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moderation.audit.receipt",
        description="Check offline that an audit entry is in the log (a tlog-proof@v1 receipt).",
    )
    parser.add_argument("entry_file", metavar="ENTRY_FILE", help="the entry's exact bytes")
    parser.add_argument("proof_file", metavar="PROOF_FILE", help="the receipt")
    parser.add_argument(
        "verifier_key", metavar="VERIFIER_KEY", help="the log's verifier key, or a file holding it"
    )
    args = parser.parse_args(argv)
    try:
        entry = Path(args.entry_file).read_bytes()
        receipt = Path(args.proof_file).read_bytes()
        verifier = _read_key(args.verifier_key)
    except (OSError, UnicodeDecodeError, NoteError) as error:
        parser.error(str(error))  # exits with status 2
    try:
        checkpoint = verify_receipt(entry, receipt, verifier)
    except (ReceiptError, NoteError, ProofError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    index = parse_receipt(receipt).index
    root = base64.b64encode(checkpoint.root).decode()
    where = f"{checkpoint.origin} at tree size {checkpoint.size} (root {root})"
    print(f"OK: entry {index} is in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
