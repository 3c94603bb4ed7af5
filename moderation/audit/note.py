"""Signed notes and checkpoints: C2SP signed-note and tlog-checkpoint, Ed25519 only.

The key and note encodings are those of Go's golang.org/x/mod/sumdb/note, so keys and notes made
here work with Go's tooling (and the reverse):

- signer key:   ``PRIVATE+KEY+<name>+<key id>+<base64(0x01 || 32-byte seed)>`` (secret);
- verifier key: ``<name>+<key id>+<base64(0x01 || 32-byte public key)>``;
- key id:       the first 4 bytes of SHA-256(name || "\\n" || 0x01 || public key), in hex;
- signed note:  the text (ending in a newline), a blank line, then one line per signature:
  ``— <name> <base64(key id || Ed25519 signature of the text)>``.

A checkpoint is the text of such a note: the log's origin, its tree size, the base64 root hash,
then optional extension lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .merkle import HASH_SIZE

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
# The spec asks verifiers to accept at least 16; Go's reference refuses more than 100.
MAX_SIGNATURES = 100
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class NoteError(ValueError):
    """A note, a checkpoint or a key that cannot be used; the subclass says why."""


class MalformedNoteError(NoteError):
    pass


class UnverifiedNoteError(NoteError):
    """No signature on the note is by a key we know."""


class InvalidSignatureError(NoteError):
    """A signature by a key we know does not verify: the note was altered or forged."""


class KeyFormatError(NoteError):
    pass


def valid_name(name: str) -> bool:
    # Non-empty, no Unicode spaces, no "+" (it separates a key's fields); control characters
    # could never appear in a note either.
    return bool(name) and "+" not in name and not any(c.isspace() or c < " " for c in name)


def _key_id(name: str, public_key: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _parse_key(name: str, key_id: str, key64: str) -> tuple[int, bytes]:
    if not valid_name(name):
        raise KeyFormatError(f"{name!r} is not a valid key name")
    if not _KEY_ID.fullmatch(key_id):
        raise KeyFormatError("the key id is not 8 lowercase hex digits")
    try:
        key = _b64decode(key64)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyFormatError("the key is not base64") from None
    if len(key) != 33 or key[0] != ED25519:
        raise KeyFormatError("the key is not an Ed25519 key (0x01 and 32 bytes)")
    return int(key_id, 16), key[1:]


class Verifier:
    """An Ed25519 public key with its name and key id."""

    def __init__(self, name: str, public_key: bytes) -> None:
        if not valid_name(name):
            raise KeyFormatError(f"{name!r} is not a valid key name")
        if len(public_key) != 32:
            raise KeyFormatError("an Ed25519 public key has 32 bytes")
        self.name = name
        self.public_key = public_key
        self.key_id = _key_id(name, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_key(cls, vkey: str) -> Verifier:
        """Read a verifier key ``<name>+<key id>+<base64 key>``."""
        fields = vkey.split("+", 2)
        if len(fields) != 3:
            raise KeyFormatError("a verifier key is <name>+<key id>+<base64 key>")
        key_id, public_key = _parse_key(*fields)
        verifier = cls(fields[0], public_key)
        if verifier.key_id != key_id:
            raise KeyFormatError("the key id does not match the name and key")
        return verifier

    @property
    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"<Verifier {self.name}+{self.key_id:08x}>"


class Signer:
    """An Ed25519 private key with its name and key id."""

    def __init__(self, name: str, seed: bytes) -> None:
        if not valid_name(name):
            raise KeyFormatError(f"{name!r} is not a valid key name")
        if len(seed) != 32:
            raise KeyFormatError("an Ed25519 seed has 32 bytes")
        self.name = name
        self._seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.verifier = Verifier(name, self._key.public_key().public_bytes_raw())
        self.key_id = self.verifier.key_id

    @classmethod
    def from_key(cls, skey: str) -> Signer:
        """Read a signer key ``PRIVATE+KEY+<name>+<key id>+<base64 seed>``."""
        fields = skey.split("+", 4)
        if len(fields) != 5 or fields[:2] != ["PRIVATE", "KEY"]:
            raise KeyFormatError("a signer key is PRIVATE+KEY+<name>+<key id>+<base64 seed>")
        key_id, seed = _parse_key(*fields[2:])
        signer = cls(fields[2], seed)
        # The id is the public key's: check it once the public key is derived from the seed.
        if signer.key_id != key_id:
            raise KeyFormatError("the key id does not match the name and key")
        return signer

    @property
    def skey(self) -> str:
        encoded = base64.b64encode(bytes([ED25519]) + self._seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{encoded}"

    def verifier_key(self) -> str:
        return self.verifier.vkey

    def sign(self, text: str) -> str:
        """The signed note: ``text`` (ending in a newline), a blank line, our signature line."""
        _check_characters(text)
        if not text.endswith("\n"):
            raise MalformedNoteError("a note's text ends with a newline")
        signature = self._key.sign(text.encode())
        encoded = base64.b64encode(self.key_id.to_bytes(4, "big") + signature).decode()
        return f"{text}\n{SIGNATURE_PREFIX}{self.name} {encoded}\n"

    def __repr__(self) -> str:
        return f"<Signer {self.name}+{self.key_id:08x}>"


def generate_signer_key(name: str) -> str:
    """A new random signer key (keep it secret; publish ``Signer.from_key(k).verifier_key()``)."""
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    return Signer(name, seed).skey


def _check_characters(text: str) -> None:
    if any(c < " " and c != "\n" for c in text):
        raise MalformedNoteError("a note contains no control characters other than newline")


def open_note(note: str | bytes, verifiers: Verifier | Iterable[Verifier]) -> str:
    """Return the text of a signed note once a signature by one of ``verifiers`` checks out.

    Signatures by other keys are ignored, as the spec says; a signature by a known key that does
    not verify refuses the whole note. Raises a NoteError subclass saying why.
    """
    known: dict[tuple[str, int], Verifier] = {}
    for verifier in [verifiers] if isinstance(verifiers, Verifier) else verifiers:
        if (verifier.name, verifier.key_id) in known:
            raise NoteError(f"two verifier keys for {verifier.name}+{verifier.key_id:08x}")
        known[(verifier.name, verifier.key_id)] = verifier
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNoteError("the note is not UTF-8") from None
    _check_characters(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("the note has no blank line before its signatures")
    text, signatures = note[: split + 1], note[split + 2 :]
    if not signatures.endswith("\n"):
        raise MalformedNoteError("the note does not end with a signature line and a newline")
    message = text.encode()
    lines = signatures[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"the note has more than {MAX_SIGNATURES} signatures")
    verified = False
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise MalformedNoteError("a signature line starts with an em dash and a space")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            raw = _b64decode(encoded)
        except (binascii.Error, UnicodeEncodeError):
            raise MalformedNoteError(f"the signature by {name!r} is not base64") from None
        if not valid_name(name) or len(raw) < 5:
            raise MalformedNoteError(f"the signature line for {name!r} is malformed")
        key_id = int.from_bytes(raw[:4], "big")
        signer = known.get((name, key_id))
        if signer is None:
            continue
        if not signer.verify(message, raw[4:]):
            raise InvalidSignatureError(f"the signature by {name}+{key_id:08x} does not verify")
        verified = True
    if not verified:
        names = ", ".join(f"{v.name}+{v.key_id:08x}" for v in known.values()) or "no key"
        raise UnverifiedNoteError(f"the note has no signature by {names}")
    return text


# --- Checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        return format_checkpoint(self.origin, self.size, self.root, self.extensions)


def format_checkpoint(origin: str, size: int, root: bytes, extensions: Iterable[str] = ()) -> str:
    """The checkpoint's note text (sign it with ``Signer.sign``)."""
    lines = [origin, str(size), base64.b64encode(root).decode(), *extensions]
    if not origin or "\n" in origin:
        raise NoteError("a checkpoint's origin is one non-empty line")
    if size < 0:
        raise NoteError("a tree size is not negative")
    if len(root) != HASH_SIZE:
        raise NoteError(f"a root hash has {HASH_SIZE} bytes")
    if any(not line or "\n" in line for line in lines[3:]):
        raise NoteError("a checkpoint's extension lines are single non-empty lines")
    text = "\n".join(lines) + "\n"
    _check_characters(text)
    return text


def parse_checkpoint(text: str) -> Checkpoint:
    """Read a checkpoint from its note text (as ``open_note`` returns it)."""
    if not text.endswith("\n"):
        raise MalformedNoteError("a checkpoint's text ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise MalformedNoteError("a checkpoint is at least three non-empty lines")
    origin, size, root, *extensions = lines
    if not _DECIMAL.fullmatch(size) or len(size) > 20 or int(size) >= 1 << 64:
        raise MalformedNoteError(f"the checkpoint's tree size {size!r} is not a decimal number")
    try:
        root_hash = _b64decode(root)
    except (binascii.Error, UnicodeEncodeError):
        raise MalformedNoteError("the checkpoint's root hash is not base64") from None
    if len(root_hash) != HASH_SIZE:
        raise MalformedNoteError(f"the checkpoint's root hash is not {HASH_SIZE} bytes")
    return Checkpoint(origin, int(size), root_hash, tuple(extensions))


def open_checkpoint(signed: str | bytes, verifier: Verifier) -> Checkpoint:
    """Open a signed checkpoint with the log's key; its origin must be the key's name."""
    checkpoint = parse_checkpoint(open_note(signed, verifier))
    if checkpoint.origin != verifier.name:
        raise NoteError(
            f"the checkpoint is for the log {checkpoint.origin!r}, not {verifier.name!r}"
        )
    return checkpoint
