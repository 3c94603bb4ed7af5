"""Signed notes and checkpoints against Go's x/mod/sumdb/note test vectors and the C2SP texts."""

from __future__ import annotations

import base64

import pytest

from moderation.audit import note
from moderation.audit.note import (
    Checkpoint,
    InvalidSignatureError,
    KeyFormatError,
    MalformedNoteError,
    NoteError,
    Signer,
    UnverifiedNoteError,
    Verifier,
)

# golang.org/x/mod/sumdb/note, note_test.go.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotp"
    "RZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33W"
    "Wd1RvMc+QQ=\n"
)


def peter() -> Verifier:
    return Verifier.from_key(PETER_VKEY)


def test_gos_signer_key_gives_gos_verifier_key_and_signature():
    signer = Signer.from_key(PETER_SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_id == 0xC74F20A3
    assert signer.verifier_key() == PETER_VKEY
    assert signer.skey == PETER_SKEY
    # Ed25519 is deterministic: the same key signs the same text the same way.
    assert signer.sign(TEXT) == TEXT + "\n" + PETER_SIG


def test_gos_signed_note_opens_with_gos_verifier_key():
    assert open_peter(TEXT + "\n" + PETER_SIG) == TEXT
    assert note.open_note((TEXT + "\n" + PETER_SIG).encode(), [peter()]) == TEXT


def open_peter(text: str | bytes) -> str:
    return note.open_note(text, peter())


def test_the_signed_note_specs_example_opens_with_its_key():
    vkey = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
    signed = (
        "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi"
        "2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
    )
    assert note.open_note(signed, Verifier.from_key(vkey)) == "This is an example message.\n"


def test_signatures_by_unknown_keys_are_ignored_but_one_known_is_required():
    both = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_peter(both) == TEXT
    assert note.open_note(both, [peter(), Verifier.from_key(ENOCH_VKEY)]) == TEXT
    with pytest.raises(UnverifiedNoteError, match="no signature by EnochRoot"):
        note.open_note(TEXT + "\n" + PETER_SIG, Verifier.from_key(ENOCH_VKEY))
    with pytest.raises(UnverifiedNoteError):
        note.open_note(both, [])
    # Same name, another key: its signature is someone else's, not a bad one of ours.
    impostor = Signer.from_key(note.generate_signer_key("PeterNeumann"))
    with pytest.raises(UnverifiedNoteError):
        open_peter(impostor.sign(TEXT))
    assert note.open_note(impostor.sign(TEXT), impostor.verifier) == TEXT


def test_a_tampered_text_or_signature_is_refused():
    with pytest.raises(InvalidSignatureError, match="PeterNeumann\\+c74f20a3"):
        open_peter(TEXT.replace("problem", "Problem", 1) + "\n" + PETER_SIG)
    with pytest.raises(InvalidSignatureError):
        open_peter(TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:])
    # A bad signature by a known key refuses the note even next to a good one.
    forged = TEXT + "\n" + PETER_SIG.replace("6Ry", "6Rz")
    with pytest.raises(InvalidSignatureError):
        note.open_note(forged + ENOCH_SIG, [peter(), Verifier.from_key(ENOCH_VKEY)])


@pytest.mark.parametrize(
    "bad",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name")[:-1],
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"),
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann"),
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT.replace("\n", "\r\n") + "\r\n" + PETER_SIG.replace("\n", "\r\n"),
        TEXT + "\n" + PETER_SIG.replace("— ", "-- "),
        TEXT + "\n" + "— PeterNeumann !!!!\n",
        TEXT + "\n" + "— PeterNeumann AAAA\n",
        TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_malformed_notes_are_refused(bad):
    with pytest.raises(MalformedNoteError):
        open_peter(bad)


def test_a_note_that_is_not_utf8_is_refused():
    with pytest.raises(MalformedNoteError, match="UTF-8"):
        open_peter(b"\xff" + (TEXT + "\n" + PETER_SIG).encode())


def test_a_hundred_signatures_are_accepted():
    assert open_peter(TEXT + "\n" + PETER_SIG + ENOCH_SIG * 99) == TEXT


def test_two_verifier_keys_with_the_same_name_and_id_are_refused():
    with pytest.raises(NoteError, match="two verifier keys for PeterNeumann"):
        note.open_note(TEXT + "\n" + PETER_SIG, [peter(), peter()])


def manglings(key: str):
    # As Go's TestNewVerifier: every proper substring, and every character moved by one.
    for i in range(len(key) + 1):
        for j in range(i + 1, len(key) + 1):
            if (i, j) != (0, len(key)):
                yield key[i:j]
    for i, char in enumerate(key):
        yield key[:i] + chr(ord(char) + 1) + key[i + 1 :]


def test_every_mangling_of_a_verifier_key_is_refused():
    for bad in manglings(PETER_VKEY):
        with pytest.raises(KeyFormatError):
            Verifier.from_key(bad)
    # Wrong key length and unknown algorithm, each with a key id that fits them.
    with pytest.raises(KeyFormatError, match="Ed25519"):
        Verifier.from_key(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
    with pytest.raises(KeyFormatError, match="Ed25519"):
        Verifier.from_key("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_every_mangling_of_a_signer_key_is_refused():
    for bad in manglings(PETER_SKEY):
        with pytest.raises(KeyFormatError):
            Signer.from_key(bad)


def test_a_generated_key_signs_notes_its_verifier_key_opens():
    skey = note.generate_signer_key("audit.example/log")
    assert skey.startswith("PRIVATE+KEY+audit.example/log+")
    signer = Signer.from_key(skey)
    verifier = Verifier.from_key(signer.verifier_key())
    assert (verifier.name, verifier.key_id) == (signer.name, signer.key_id)
    text = "first line\n\nan empty line above is part of the text\n"
    assert note.open_note(signer.sign(text), verifier) == text
    assert note.generate_signer_key("audit.example/log") != skey


@pytest.mark.parametrize("name", ["", "two words", "a+b", "tab\there", "nbsp\u00a0", "nl\n"])
def test_key_names_with_spaces_or_plus_are_refused(name):
    with pytest.raises(KeyFormatError, match="not a valid key name"):
        note.generate_signer_key(name)


def test_a_signer_refuses_text_no_one_could_open():
    signer = Signer.from_key(PETER_SKEY)
    with pytest.raises(MalformedNoteError, match="ends with a newline"):
        signer.sign("no newline")
    with pytest.raises(MalformedNoteError, match="control characters"):
        signer.sign("carriage\r\n")


# --- Checkpoints ---------------------------------------------------------------------------------


def test_the_tlog_checkpoint_specs_example_parses():
    checkpoint = note.parse_checkpoint(
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert base64.b64encode(checkpoint.root) == b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    assert checkpoint.extensions == ()


def test_a_checkpoint_round_trips_through_its_text_and_a_signature():
    root = bytes(range(32))
    text = note.format_checkpoint("audit.example/log", 300, root, ["ext one", "ext two"])
    assert text == (
        "audit.example/log\n300\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\next one\next two\n"
    )
    expected = Checkpoint("audit.example/log", 300, root, ("ext one", "ext two"))
    assert note.parse_checkpoint(text) == expected
    assert expected.text() == text
    signer = Signer.from_key(note.generate_signer_key("audit.example/log"))
    assert note.open_checkpoint(signer.sign(text), signer.verifier) == expected
    assert note.parse_checkpoint(note.format_checkpoint("o", 0, root)).size == 0


def test_a_checkpoint_opens_only_for_the_log_its_key_names():
    signer = Signer.from_key(note.generate_signer_key("other.example/log"))
    text = note.format_checkpoint("audit.example/log", 1, bytes(32))
    with pytest.raises(NoteError, match=r"for the log 'audit\.example/log'"):
        note.open_checkpoint(signer.sign(text), signer.verifier)


ROOT64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


@pytest.mark.parametrize(
    "bad",
    [
        f"origin\n300\n{ROOT64}",  # no final newline
        "origin\n300\n",
        f"\n300\n{ROOT64}\n",
        f"origin\n0300\n{ROOT64}\n",
        f"origin\n-3\n{ROOT64}\n",
        f"origin\n+3\n{ROOT64}\n",
        f"origin\n 3\n{ROOT64}\n",
        f"origin\n18446744073709551616\n{ROOT64}\n",
        "origin\n300\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\n",  # 31 bytes
        "origin\n300\nnot base64!\n",
        f"origin\n300\n{ROOT64}\n\nafter an empty line\n",
    ],
)
def test_malformed_checkpoints_are_refused(bad):
    with pytest.raises(MalformedNoteError):
        note.parse_checkpoint(bad)


def test_a_checkpoint_that_could_not_be_read_back_is_not_written():
    with pytest.raises(NoteError, match="origin"):
        note.format_checkpoint("", 1, bytes(32))
    with pytest.raises(NoteError, match="32 bytes"):
        note.format_checkpoint("o", 1, bytes(31))
    with pytest.raises(NoteError, match="extension"):
        note.format_checkpoint("o", 1, bytes(32), [""])
    with pytest.raises(NoteError, match="not negative"):
        note.format_checkpoint("o", -1, bytes(32))
