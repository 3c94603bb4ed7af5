"""The audit log: recording is one INSERT, and verify_audit catches tampering of every kind."""

# Raw SQL on the audit tables (constant names) is how these tests tamper with them.
# ruff: noqa: S608

from __future__ import annotations

import base64
import hashlib
import io
import json
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from moderation.audit import log as audit
from moderation.audit.merkle import CompactRange
from moderation.audit.note import Signer, format_checkpoint, generate_signer_key
from moderation.audit.verify import LogBroken, verify_log
from moderation.models import (
    AuditCheckpoint,
    AuditEntry,
    AuditLogIsAppendOnly,
    AuditTreeNode,
    ChainCheck,
)

from .audit_log import VERIFIER_KEY, assert_log_verifies, sequence_all
from .conftest import postgres_only

TABLE = AuditEntry._meta.db_table
NODES = AuditTreeNode._meta.db_table
CHECKPOINTS = AuditCheckpoint._meta.db_table
CLIENT = audit.AuditContext("203.0.113.7", "pytest/1.0")

DETAILS: list[dict[str, Any]] = [
    {"score": 99.91, "label": "porn", "blocked": True},
    {"note": 'Zoë\u2019s 写真 🚫 \u2028 "quoted" \\ back\nslash\ttab', "nothing": None},
    {"nested": {"a": [1, 2.5, {"b": [None, False, True]}], "z": {"y": {"x": "deep"}}}},
    {"big": 12345678901234567890, "negative": -7, "tiny": 1.5e-07, "zero": 0.0, "rate": 0.1},
    {"suggestion": "block", "scenes": [{"scene": "terrorism", "rate": 99.91}], "empty": {}},
    {},
]


# ---------------------------------------------------------------------------------- helpers


def append(n: int, *, actors: list[Any] | None = None, images: list[Any] | None = None) -> None:
    """Record n entries in one transaction, cycling through actors, images and DETAILS."""
    actors = actors or [None]
    images = images or [None]
    with transaction.atomic():
        for i in range(n):
            audit.record(
                action=f"test.action{i % 3}",
                actor=actors[i % len(actors)],
                image=images[i % len(images)],
                state_before="received" if i % 2 else "",
                state_after="approved" if i % 2 else "",
                reason=f"reason {i} — ünïcödé" if i % 4 else "",
                detail={**DETAILS[i % len(DETAILS)], "i": i},
                context=CLIENT if i % 5 == 0 else audit.SYSTEM_CONTEXT,
            )


def logged(n: int, *, batch: int = 4) -> int:
    """Record n entries and sequence them in batches (a checkpoint every `batch` entries)."""
    append(n)
    return sequence_all(batch_size=batch)


def row(seq: int) -> dict[str, Any]:
    return AuditEntry.objects.filter(seq=seq).values("id", "seq", "entry_hash", "reason").get()


def verify(*args: str) -> tuple[int, str, str]:
    """Run verify_audit; return its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_audit", *args, stdout=out, stderr=err, no_color=True)
    except SystemExit as exit_:
        code = exit_.code
    else:
        code = 0
    assert isinstance(code, int)
    return code, out.getvalue(), err.getvalue()


def broken() -> LogBroken:
    with pytest.raises(LogBroken) as caught:
        verify_log()
    return caught.value


@contextmanager
def tampering() -> Iterator[Any]:
    """A cursor that can UPDATE and DELETE audit rows: on PostgreSQL, past the triggers, as an
    attacker with the database's owner rights could."""
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if postgres:
            cursor.execute("SET session_replication_role = replica")
        try:
            yield cursor
        finally:
            if postgres:
                cursor.execute("SET session_replication_role = DEFAULT")


def tamper(sql: str, params: list[Any] | None = None) -> None:
    with tampering() as cursor:
        cursor.execute(sql, params or [])


def rewritten(seq: int, **changes: Any) -> dict[str, Any]:
    """Entry `seq` rewritten with every hash to match, as a forger would: its new content (the
    old one with `changes`), content hash and leaf hash."""
    document = json.loads(bytes(AuditEntry.objects.get(seq=seq).content))
    document.update(changes)
    content = audit.canonical_json(document)
    return {
        "content": content,
        "entry_hash": hashlib.sha256(content).hexdigest(),
        "leaf_hash": hashlib.sha256(b"\x00" + content).digest(),
    }


def rewrite(seq: int, **changes: Any) -> None:
    """Rewrite entry `seq`'s reason everywhere: column, content and both hashes."""
    forged = rewritten(seq, **changes)
    tamper(
        f"UPDATE {TABLE} SET reason = %s, content = %s, entry_hash = %s, leaf_hash = %s "
        "WHERE seq = %s",
        [changes["reason"], forged["content"], forged["entry_hash"], forged["leaf_hash"], seq],
    )


def rebuild_stored_tree() -> None:
    """Replace every stored subtree hash with the hash of the leaves as they now are."""
    frontier = CompactRange()
    nodes = []
    for (leaf,) in (
        AuditEntry.objects.order_by("seq").filter(seq__isnull=False).values_list("leaf_hash")
    ):
        nodes.extend(frontier.append(bytes(leaf)))
    with tampering() as cursor:
        cursor.execute(f"DELETE FROM {NODES}")
        for level, index, hash_ in nodes:
            cursor.execute(
                f'INSERT INTO {NODES} (level, "index", hash) VALUES (%s, %s, %s)',
                [level, index, hash_],
            )


def kept_checkpoint(tmp_path: Path) -> Path:
    """The latest signed checkpoint, kept in a file as an operator would."""
    code, out, _ = verify()
    assert code == 0
    note = out[out.index("Latest checkpoint, tree size") :].split("\n", 1)[1]
    path = tmp_path / "kept-checkpoint.txt"
    path.write_text(note)
    assert note == AuditCheckpoint.objects.order_by("-tree_size").first().signed_note
    return path


def cut_after(size: int) -> None:
    """Delete every entry after `size`, with the subtrees and checkpoints that covered them."""
    with tampering() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE seq > %s", [size])
        cursor.execute(f'DELETE FROM {NODES} WHERE ("index" + 1) * (1 << level) > %s', [size])
        cursor.execute(f"DELETE FROM {CHECKPOINTS} WHERE tree_size > %s", [size])


# ------------------------------------------------------------------------------- recording


@pytest.mark.django_db(transaction=True)
def test_record_refuses_to_run_outside_a_transaction():
    assert not connection.in_atomic_block
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit.record(action="test.autocommit", actor=None)
    assert AuditEntry.objects.count() == 0


@pytest.mark.django_db
def test_an_entry_rolls_back_with_the_change_it_records():
    class Boom(Exception):
        pass

    def change_that_fails() -> None:
        with transaction.atomic():
            audit.record(action="test.doomed", actor=None)
            raise Boom

    with pytest.raises(Boom):
        change_that_fails()
    assert AuditEntry.objects.count() == 0


@pytest.mark.django_db
def test_recording_is_one_insert_with_no_lock_and_no_read():
    with transaction.atomic():
        audit.record(action="test.warm", actor=None)  # compiled queries, content types
        with CaptureQueriesContext(connection) as captured:
            audit.record(action="test.one", actor=None, detail={"a": 1}, context=CLIENT)
    [query] = [q["sql"] for q in captured.captured_queries]
    assert query.startswith(f'INSERT INTO "{TABLE}"')
    assert "lock" not in query.lower()


@pytest.mark.django_db
def test_an_entry_is_written_with_its_exact_content_and_its_hash_and_no_position(admin_user):
    moment = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    with time_machine.travel(moment, tick=False), transaction.atomic():
        entry = audit.record(
            action="review.approved",
            actor=admin_user,
            state_before="awaiting_review",
            state_after="approved",
            reason="fine",
            detail={"b": [1, 2.5], "a": "Zoë"},
            context=audit.AuditContext("2001:DB8:0::1", "pytest/1.0"),
        )
    stored = AuditEntry.objects.get(pk=entry.pk)
    content = bytes(stored.content)
    assert (
        content
        == (
            f'{{"action":"review.approved","actor":"ada","actor_id":{admin_user.pk},'
            '"detail":{"a":"Zoë","b":[1,2.5]},"image_id":null,"ip":"2001:db8::1","reason":"fine",'
            '"state_after":"approved","state_before":"awaiting_review",'
            '"time":"2025-03-04T05:06:07.890123+00:00","user_agent":"pytest/1.0"}'
        ).encode()
    )
    assert stored.entry_hash == hashlib.sha256(content).hexdigest()
    assert (stored.seq, stored.leaf_hash, stored.prev_hash) == (None, None, "")
    assert stored.ip_address == "2001:db8::1"


@pytest.mark.django_db
def test_two_identical_entries_in_the_same_microsecond_are_both_kept():
    with time_machine.travel(datetime(2025, 1, 1, tzinfo=UTC), tick=False), transaction.atomic():
        first = audit.record(action="test.same", actor=None)
        second = audit.record(action="test.same", actor=None)
    assert first.entry_hash == second.entry_hash
    assert_log_verifies()
    assert sorted(AuditEntry.objects.values_list("seq", flat=True)) == [1, 2]


# ------------------------------------------------------------------------------- verifying


@pytest.mark.django_db
def test_three_hundred_varied_entries_verify_by_the_command(admin_user, reviewer_user, make_image):
    images = [make_image(), make_image(fmt="JPEG")]
    append(300, actors=[None, admin_user, reviewer_user], images=[None, *images])
    total = AuditEntry.objects.count()
    sequence_all(batch_size=64)
    assert sorted(AuditEntry.objects.values_list("seq", flat=True)) == list(range(1, total + 1))

    code, out, err = verify()
    assert (code, err) == (0, "")
    assert f"Audit log OK: {total} entries verified" in out
    latest = AuditCheckpoint.objects.get(tree_size=total)
    assert out.endswith(latest.signed_note)
    assert ChainCheck.objects.get().entries == total


@pytest.mark.django_db
def test_an_empty_log_verifies():
    code, out, _ = verify()
    assert code == 0
    assert "0 entries verified" in out
    assert "No checkpoint yet." in out


@pytest.mark.django_db
def test_entries_waiting_for_a_position_are_verified_too():
    logged(5)
    append(3)
    code, out, _ = verify()
    assert code == 0
    assert "5 entries verified" in out
    assert "3 waiting for a position" in out


@pytest.mark.django_db
def test_values_the_database_normalises_still_verify():
    # The database hands back normalised values (jsonb numbers on PostgreSQL, IPv6 spelling
    # everywhere), while the content keeps them as given: compared by meaning, they match.
    details = [{"v": 1e16}, {"v": 1e100}, {"v": -0.0}, {"v": [1.0, 2.50, 3e-5]}, {"v": True}]
    addresses = ["2001:DB8:0:0::1", "2001:0db8:0000::0001", "::ffff:0102:0304", "::1.2.3.4", ""]
    with transaction.atomic():
        for detail in details:
            audit.record(action="test.numbers", actor=None, detail=detail)
        for address in addresses:
            audit.record(
                action="test.address", actor=None, context=audit.AuditContext(address, "ua")
            )
    stored = list(
        AuditEntry.objects.filter(action="test.address").order_by("id").values_list("ip_address")
    )
    assert stored[0] == stored[1] == ("2001:db8::1",)
    assert stored[4] == (None,)
    assert_log_verifies()
    assert verify()[0] == 0


# ------------------------------------------------------------------------------- tampering


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("reason", "nothing to see here"),
        ("detail", json.dumps({**DETAILS[0], "i": 6, "score": 1.0})),
        ("detail", json.dumps({**DETAILS[0], "i": 6, "blocked": 1})),  # true == 1 in Python
        ("actor_label", "someone-else"),
        ("created_at", datetime(2020, 1, 1, tzinfo=UTC)),
        ("ip_address", "198.51.100.1"),
        ("state_after", "rejected"),
        ("prev_hash", "f" * 64),
    ],
    ids=[
        "reason",
        "detail",
        "detail-true-to-1",
        "actor_label",
        "created_at",
        "ip_address",
        "state_after",
        "prev_hash",
    ],
)
def test_it_catches_an_edited_column(column, value):
    logged(12)
    edited = row(7)
    tamper(f"UPDATE {TABLE} SET {column} = %s WHERE seq = 7", [value])

    fault = broken()
    assert (fault.seq, fault.entry_id, fault.verified) == (7, edited["id"], 6)
    code, out, err = verify()
    assert code == 1
    assert out == ""
    assert (
        f"BROKEN at entry #7 (id {edited['id']}): its {column} column does not match its "
        "content: the column was edited" in err
    )
    assert "The first 6 entries verified." in err


@pytest.mark.django_db
def test_it_catches_an_edited_content():
    logged(12)
    forged = rewritten(7, reason="rewritten")
    tamper(f"UPDATE {TABLE} SET content = %s WHERE seq = 7", [forged["content"]])
    code, _, err = verify()
    assert code == 1
    assert "entry #7" in err
    assert "its content does not match its content hash: the content was edited" in err


@pytest.mark.django_db
def test_it_catches_a_content_edited_with_its_content_hash():
    logged(12)
    forged = rewritten(7, reason="rewritten")
    tamper(
        f"UPDATE {TABLE} SET content = %s, entry_hash = %s, reason = %s WHERE seq = 7",
        [forged["content"], forged["entry_hash"], "rewritten"],
    )
    code, _, err = verify()
    assert code == 1
    assert "entry #7" in err
    assert "its leaf hash is not the hash of its content: the leaf hash was edited" in err


@pytest.mark.django_db
def test_it_catches_an_entry_rewritten_with_all_its_hashes_by_the_stored_tree():
    logged(12)
    rewrite(7, reason="rewritten, every hash to match")
    fault = broken()
    assert fault.seq is None
    assert str(fault).startswith(
        "entries #7 to #8 do not match the hash the sequencer stored for them"
    )
    assert fault.verified == 6
    assert verify()[0] == 1


@pytest.mark.django_db
def test_it_catches_a_rewrite_that_rebuilt_the_stored_tree_by_the_checkpoints():
    logged(12)
    rewrite(7, reason="rewritten, every hash and the tree to match")
    rebuild_stored_tree()
    assert str(broken()).startswith(
        "the checkpoint at tree size 8 does not match entries #1 to #8: its root hash is not "
        "the tree's"
    )


@pytest.mark.django_db
def test_it_catches_a_rewrite_that_forged_the_checkpoints_by_their_signature():
    size = logged(12)
    rewrite(7, reason="rewritten, the tree and the checkpoints too")
    rebuild_stored_tree()
    frontier = CompactRange()
    frontier.extend(
        bytes(leaf)
        for leaf in AuditEntry.objects.order_by("seq").values_list("leaf_hash", flat=True)
    )
    # The same log name, another key: without the log's signing key nothing else can sign.
    forger = Signer.from_key(generate_signer_key("tests.example/audit"))
    note = forger.sign(format_checkpoint(forger.name, size, frontier.root()))
    with tampering() as cursor:
        cursor.execute(f"DELETE FROM {CHECKPOINTS}")
    AuditCheckpoint.objects.create(
        tree_size=size,
        root_hash=frontier.root(),
        compact_range=frontier.to_bytes(),
        signed_note=note,
        created_at=datetime.now(UTC),
    )
    message = str(broken())
    assert message.startswith(
        f"the latest checkpoint does not verify with the log's key {VERIFIER_KEY}"
    )
    assert "the note has no signature by tests.example/audit+d1b0cb96" in message


@pytest.mark.django_db
def test_it_catches_a_forged_signature_on_the_latest_checkpoint():
    logged(12)
    latest = AuditCheckpoint.objects.order_by("-tree_size").first()
    text, signature_line = latest.signed_note.rsplit("\n\n", 1)
    name, signature = signature_line.removeprefix("— ").split()
    raw = bytearray(base64.b64decode(signature))
    raw[-1] ^= 1
    forged = f"{text}\n\n— {name} {base64.b64encode(bytes(raw)).decode()}\n"
    tamper(f"UPDATE {CHECKPOINTS} SET signed_note = %s WHERE id = %s", [forged, latest.pk])
    code, _, err = verify()
    assert code == 1
    assert "the latest checkpoint does not verify with the log's key" in err
    assert "the signature by tests.example/audit+d1b0cb96 does not verify" in err


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("deleted", "named", "missing"),
    [
        ([6], 7, "entry #6 before it is missing"),
        ([4, 5, 6], 7, "entry #4 to #6 before it is missing"),
        ([1], 2, "entry #1 before it is missing"),
    ],
    ids=["one-in-the-middle", "three-in-the-middle", "the-first"],
)
def test_it_catches_a_deleted_entry(deleted, named, missing):
    logged(10)
    reported = row(named)
    tamper(f"DELETE FROM {TABLE} WHERE seq IN ({', '.join(map(str, deleted))})")
    code, out, err = verify()
    assert code == 1
    assert out == ""
    assert f"BROKEN at entry #{named} (id {reported['id']}): {missing} (deleted or cut)" in err


@pytest.mark.django_db
def test_it_catches_an_entry_inserted_in_the_middle():
    logged(10)
    with tampering() as cursor:  # every entry from #6 one position up (seq is unique)
        cursor.execute(f"UPDATE {TABLE} SET seq = seq + 1000000 WHERE seq >= 6")
        cursor.execute(f"UPDATE {TABLE} SET seq = seq - 999999 WHERE seq >= 1000000")
    content = audit.entry_content(
        created_at=datetime.now(UTC),
        actor_id=None,
        actor_label="system",
        action="review.approved",
        image_id=None,
        state_before="awaiting_review",
        state_after="approved",
        reason="looks fine",
        detail={"forged": True},
        ip_address=None,
        user_agent="",
    )
    AuditEntry.objects.create(
        seq=6,
        created_at=json.loads(content)["time"],
        actor_label="system",
        action="review.approved",
        state_before="awaiting_review",
        state_after="approved",
        reason="looks fine",
        detail={"forged": True},
        content=content,
        entry_hash=hashlib.sha256(content).hexdigest(),
        leaf_hash=hashlib.sha256(b"\x00" + content).digest(),
    )
    # The forgery is consistent by itself; the tree the sequencer stored is not.
    assert str(broken()).startswith(
        "entries #5 to #6 do not match the hash the sequencer stored for them"
    )
    assert verify()[0] == 1


@pytest.mark.django_db
def test_it_catches_an_entry_appended_with_a_position_of_its_own():
    size = logged(8)
    content = b'{"forged":true}'
    forged = AuditEntry.objects.create(
        seq=size + 1,
        created_at=datetime.now(UTC),
        actor_label="system",
        action="test.forged",
        content=content,
        entry_hash=hashlib.sha256(content).hexdigest(),
        leaf_hash=hashlib.sha256(b"\x00" + content).digest(),
    )
    fault = broken()
    assert (fault.seq, fault.entry_id) == (size + 1, forged.pk)
    assert "its content does not have an entry's fields" in str(fault)
    with tampering() as cursor:  # now with an entry's fields, matching its columns
        good = rewritten(1)
        cursor.execute(
            f"UPDATE {TABLE} SET content = %s, entry_hash = %s, leaf_hash = %s, "
            "created_at = e.created_at, action = e.action, reason = e.reason, detail = e.detail, "
            "state_before = e.state_before, state_after = e.state_after, "
            "ip_address = e.ip_address, user_agent = e.user_agent "
            f"FROM (SELECT * FROM {TABLE} WHERE seq = 1) AS e WHERE {TABLE}.id = %s",
            [good["content"], good["entry_hash"], good["leaf_hash"], forged.pk],
        )
    assert str(broken()) == (
        f"entry #{size + 1} (id {forged.pk}): it has a position no checkpoint covers (the latest "
        f"checkpoint covers #1 to #{size}); the sequencer writes positions and checkpoints "
        "together, so it was inserted, or the checkpoints that covered it deleted"
    )


@pytest.mark.django_db
def test_it_catches_the_newest_entries_cut_when_a_checkpoint_still_covers_them():
    logged(12)
    tamper(f"DELETE FROM {TABLE} WHERE seq > 9")
    assert str(broken()).startswith(
        "a checkpoint signs 12 entries but the log has 9: entries #10 to #12 were deleted (cut)"
    )


@pytest.mark.django_db
def test_it_catches_a_waiting_entry_edited():
    logged(4)
    append(2)
    waiting = AuditEntry.objects.filter(seq__isnull=True).order_by("id").first()
    tamper(f"UPDATE {TABLE} SET reason = 'edited' WHERE id = %s", [waiting.pk])
    assert str(broken()) == (
        f"waiting entry id {waiting.pk}: its reason column does not match its content: the "
        "column was edited"
    )


@pytest.mark.django_db
def test_it_catches_a_checkpoint_whose_columns_were_edited():
    logged(8)
    tamper(f"UPDATE {CHECKPOINTS} SET root_hash = %s WHERE tree_size = 8", [b"\x07" * 32])
    assert "the latest checkpoint's columns (tree size 8) do not match its signed note" in str(
        broken()
    )


# ------------------------------------------------------------------- a checkpoint kept elsewhere


@pytest.mark.django_db
def test_since_passes_on_the_intact_log_and_after_later_appends(tmp_path):
    logged(8)
    kept = kept_checkpoint(tmp_path)
    code, out, err = verify("--since", str(kept))
    assert (code, err) == (0, "")
    assert "The kept checkpoint is in the log, which only grew since." in out

    logged(5)
    code, out, _ = verify("--since", str(kept))
    assert code == 0
    assert "13 entries verified" in out


@pytest.mark.django_db
def test_since_catches_the_newest_entries_cut_with_their_tree_and_checkpoints(tmp_path):
    logged(12)
    kept = kept_checkpoint(tmp_path)
    cut_after(8)  # a consistent, shorter log: only the kept checkpoint tells
    assert verify()[0] == 0

    code, out, err = verify("--since", str(kept))
    assert code == 1
    assert "Audit log OK" not in out
    assert (
        "the log is smaller than the kept checkpoint: it signs 12 entries, the latest "
        "checkpoint 8: entries #9 to #12 were cut" in err
    )


@pytest.mark.django_db
def test_since_catches_a_log_rewritten_after_the_kept_checkpoint(tmp_path):
    logged(12)
    kept = kept_checkpoint(tmp_path)
    cut_after(8)
    logged(4)  # four other entries where the cut ones were: a valid log of the same size
    assert verify()[0] == 0

    code, _, err = verify("--since", str(kept))
    assert code == 1
    assert (
        "the latest checkpoint (tree size 12) does not extend the kept one (tree size 12): the "
        "log was rewritten since" in err
    )


@pytest.mark.django_db
def test_since_refuses_a_kept_checkpoint_with_a_forged_signature(tmp_path):
    logged(4)
    kept = kept_checkpoint(tmp_path)
    forger = Signer.from_key(generate_signer_key("tests.example/audit"))
    text = kept.read_text().split("\n\n")[0] + "\n"
    kept.write_text(forger.sign(text))
    code, _, err = verify("--since", str(kept))
    assert code == 1
    assert "the kept checkpoint does not verify with the log's key" in err


@pytest.mark.django_db
def test_verify_takes_the_logs_public_key_instead_of_the_signing_key(settings, tmp_path):
    logged(4)
    settings.AUDIT_SIGNING_KEY = ""
    with pytest.raises(CommandError, match="no audit signing key is configured"):
        verify()
    code, out, _ = verify("--key", VERIFIER_KEY)
    assert code == 0
    assert "4 entries verified" in out

    other = Signer.from_key(generate_signer_key("tests.example/audit")).verifier_key()
    code, _, err = verify("--key", other)
    assert code == 1
    assert "the latest checkpoint does not verify with the log's key" in err


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [
        ["--key", "tests.example/audit+d1b0cb96+notbase64!"],
        ["--key", "no plus signs"],
        ["--since", "/nonexistent/checkpoint.txt"],
    ],
    ids=["key-not-base64", "key-not-a-key", "since-missing"],
)
def test_bad_arguments_are_command_errors(args):
    with pytest.raises(CommandError, match=args[0]):
        call_command("verify_audit", *args, stdout=io.StringIO())


# ------------------------------------------------------------------------- the model refuses


@pytest.mark.django_db
def test_the_model_refuses_to_save_an_existing_entry():
    logged(3)
    entry = AuditEntry.objects.get(seq=2)
    original = entry.reason
    entry.reason = "changed"
    with pytest.raises(AuditLogIsAppendOnly, match="cannot be updated"):
        entry.save()
    with pytest.raises(AuditLogIsAppendOnly):
        entry.save(update_fields=["reason"])
    assert AuditEntry.objects.get(seq=2).reason == original
    assert verify()[0] == 0


@pytest.mark.django_db
def test_the_model_refuses_to_delete_an_entry():
    logged(3)
    entry = AuditEntry.objects.get(seq=2)
    with pytest.raises(AuditLogIsAppendOnly, match="cannot be deleted"):
        entry.delete()
    assert AuditEntry.objects.filter(seq=2).exists()


@pytest.mark.django_db
def test_querysets_refuse_update_and_delete_on_entries_the_tree_and_checkpoints():
    logged(3)
    for queryset in (
        AuditEntry.objects.filter(seq=2),
        AuditTreeNode.objects.all(),
        AuditCheckpoint.objects.all(),
    ):
        with pytest.raises(AuditLogIsAppendOnly, match="cannot be updated"):
            queryset.update(pk=1)
        with pytest.raises(AuditLogIsAppendOnly, match="cannot be deleted"):
            queryset.delete()
    checkpoint = AuditCheckpoint.objects.first()
    checkpoint.signed_note = "changed"
    with pytest.raises(AuditLogIsAppendOnly, match="cannot be updated"):
        checkpoint.save()
    assert verify()[0] == 0


# ----------------------------------------------------------------------------- PostgreSQL


@postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize(
    "sql",
    [
        f"UPDATE {TABLE} SET reason = 'changed' WHERE seq = 2",
        f"UPDATE {TABLE} SET seq = seq + 100",
        f"UPDATE {TABLE} SET seq = NULL, leaf_hash = NULL WHERE seq = 2",
        f"DELETE FROM {TABLE} WHERE seq = 2",
        f"DELETE FROM {TABLE}",
        f"UPDATE {NODES} SET hash = hash",
        f"DELETE FROM {NODES}",
        f"UPDATE {CHECKPOINTS} SET signed_note = 'x'",
        f"DELETE FROM {CHECKPOINTS}",
    ],
    ids=[
        "entry-update-one",
        "entry-update-all",
        "entry-unsequence",
        "entry-delete-one",
        "entry-delete-all",
        "node-update",
        "node-delete",
        "checkpoint-update",
        "checkpoint-delete",
    ],
)
def test_the_database_refuses_raw_updates_and_deletes(sql):
    logged(3)
    before = [
        list(model.objects.values_list()) for model in (AuditEntry, AuditTreeNode, AuditCheckpoint)
    ]
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)
    after = [
        list(model.objects.values_list()) for model in (AuditEntry, AuditTreeNode, AuditCheckpoint)
    ]
    assert after == before


@postgres_only
@pytest.mark.django_db
def test_the_trigger_is_back_after_the_tests_own_bypass():
    logged(3)
    tamper(f"UPDATE {TABLE} SET reason = 'tampered' WHERE seq = 3")
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(f"UPDATE {TABLE} SET reason = 'again' WHERE seq = 3")
    assert row(3)["reason"] == "tampered"


# ------------------------------------------------------------------------------ streaming


@pytest.mark.django_db
def test_verify_reads_two_thousand_entries_the_same_in_any_chunk_size():
    append(2000)
    size = sequence_all(batch_size=700)
    reports = [verify_log(chunk_size=chunk) for chunk in (1, 7, 500)]
    assert {(r.entries, r.root, r.checkpoints) for r in reports} == {(size, reports[0].root, 3)}
    assert reports[0].root == bytes(AuditCheckpoint.objects.get(tree_size=size).root_hash)


def peak_while_verifying(chunk_size: int) -> int:
    tracemalloc.start()
    try:
        verify_log(chunk_size=chunk_size)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.django_db
def test_verifying_does_not_hold_the_log_in_memory():
    # Each entry carries about 2 KB, so holding 2,000 of them would take several MB more than
    # holding 500; reading in chunks of 50 keeps the peak where it was.
    padding = "x" * 2000

    def add(n: int) -> None:
        with transaction.atomic():
            for i in range(n):
                audit.record(action="test.memory", actor=None, detail={"i": i, "pad": padding})
        sequence_all()

    add(500)
    peak_while_verifying(50)  # warm up caches (compiled queries, imports) outside the comparison
    peak_500 = peak_while_verifying(50)
    add(1500)
    peak_2000 = peak_while_verifying(50)
    grown = peak_2000 - peak_500
    assert grown < 1_000_000, f"peak went from {peak_500} to {peak_2000} bytes"
