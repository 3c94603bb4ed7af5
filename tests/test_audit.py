"""The audit log: appends form one hash chain, tampering of every kind is caught, it stays put."""

# Raw SQL on the audit table (a constant name) is how these tests tamper with it.
# ruff: noqa: S608

from __future__ import annotations

import io
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from moderation.audit import log as audit
from moderation.models import AuditEntry, AuditLogIsAppendOnly

from .conftest import postgres_only

ZEROS = "0" * 64
TABLE = AuditEntry._meta.db_table
ROOT = Path(__file__).resolve().parent.parent
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
    """Append n entries in one transaction, cycling through actors, images and DETAILS."""
    actors = actors or [None]
    images = images or [None]
    with transaction.atomic():
        for i in range(n):
            detail = {**DETAILS[i % len(DETAILS)], "i": i}
            audit.record(
                action=f"test.action{i % 3}",
                actor=actors[i % len(actors)],
                image=images[i % len(images)],
                state_before="received" if i % 2 else "",
                state_after="approved" if i % 2 else "",
                reason=f"reason {i} — ünïcödé" if i % 4 else "",
                detail=detail,
                context=CLIENT if i % 5 == 0 else audit.SYSTEM_CONTEXT,
            )


def chain_rows() -> list[dict[str, Any]]:
    """Every entry as the database holds it, in chain order."""
    return list(
        AuditEntry.objects.in_chain_order().values(
            "id", "seq", "prev_hash", "entry_hash", "reason", "detail", "actor_label"
        )
    )


def row(seq: int) -> dict[str, Any]:
    return AuditEntry.objects.filter(seq=seq).values("id", "seq", "entry_hash", "reason").get()


def raw_column(column: str, seq: int) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {TABLE} WHERE seq = %s", [seq])
        return cursor.fetchone()[0]


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


@contextmanager
def tampering() -> Iterator[Any]:
    """A cursor that can UPDATE and DELETE audit rows: on PostgreSQL, past the trigger."""
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


def shift_up_from(seq: int) -> None:
    """Move every entry at `seq` or later one position up (in two steps: seq is unique)."""
    with tampering() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET seq = seq + 1000000 WHERE seq >= %s", [seq])
        cursor.execute(f"UPDATE {TABLE} SET seq = seq - 999999 WHERE seq >= 1000000")


def forge(seq: int, prev_hash: str, **overrides: Any) -> AuditEntry:
    """Insert an entry at `seq` whose own hash is correctly computed, as a forger would."""
    fields: dict[str, Any] = {
        "seq": seq,
        "created_at": timezone.now(),
        "actor_id": None,
        "actor_label": AuditEntry.SYSTEM,
        "action": "image.approved",
        "image_id": None,
        "state_before": "awaiting_review",
        "state_after": "approved",
        "reason": "looks fine",
        "detail": {"forged": True},
        "ip_address": None,
        "user_agent": "",
        "prev_hash": prev_hash,
        **overrides,
    }
    digest = audit.entry_hash(audit.canonical_content(**fields))
    return AuditEntry.objects.create(**fields, entry_hash=digest)


def head_line(stdout: str) -> str:
    [line] = [line for line in stdout.splitlines() if line.startswith("Head: ")]
    return line.removeprefix("Head: ")


# ------------------------------------------------------------------------- appending & chain


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
    append(1)
    assert [(r["seq"], r["prev_hash"]) for r in chain_rows()] == [(1, ZEROS)]


@pytest.mark.django_db
def test_entries_are_numbered_from_one_and_each_links_to_the_one_before():
    append(6)
    rows = chain_rows()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["prev_hash"] == ZEROS
    for before, after in itertools.pairwise(rows):
        assert after["prev_hash"] == before["entry_hash"]
        assert after["id"] > before["id"]
    assert len({r["entry_hash"] for r in rows}) == 6


@pytest.mark.django_db
def test_each_stored_hash_is_the_hash_of_the_stored_content():
    append(6)
    fields = [f for f in audit._VERIFY_FIELDS if f not in ("id", "entry_hash")]
    for values in AuditEntry.objects.in_chain_order().values(*fields, "entry_hash"):
        stored = values.pop("entry_hash")
        assert audit.entry_hash(audit.canonical_content(**values)) == stored


@pytest.mark.django_db
def test_three_hundred_varied_entries_verify_by_walking_and_by_the_command(
    admin_user, reviewer_user, make_image
):
    images = [make_image(), make_image(fmt="JPEG")]
    before = AuditEntry.objects.count()  # the users' and images' own entries
    append(300, actors=[None, admin_user, reviewer_user], images=[None, *images])
    total = before + 300

    rows = chain_rows()
    assert [r["seq"] for r in rows] == list(range(1, total + 1))
    ours = rows[before:]
    assert [r["actor_label"] for r in ours[:3]] == ["system", "ada", "rex"]
    assert ours[0]["detail"] == {**DETAILS[0], "i": 0}
    assert ours[1]["detail"] == {**DETAILS[1], "i": 1}
    assert ours[3]["detail"]["big"] == 12345678901234567890
    assert AuditEntry.objects.filter(image__in=images).count() >= 200

    heads = list(audit.walk_chain())
    assert [h.count for h in heads] == list(range(1, total + 1))
    assert str(heads[-1]) == f"{total}:{rows[-1]['entry_hash']}"

    code, out, err = verify()
    assert (code, err) == (0, "")
    assert f"Audit chain OK: {total} entries verified" in out
    assert head_line(out) == f"{total}:{rows[-1]['entry_hash']}"


@pytest.mark.django_db
def test_an_empty_chain_verifies():
    code, out, _ = verify()
    assert code == 0
    assert "0 entries verified" in out
    assert "Head: (empty chain)" in out


@pytest.mark.django_db
def test_values_the_database_normalises_still_verify():
    # Regression: the hash covered the values as given, while the database hands back
    # normalised ones (jsonb numbers on PostgreSQL, IPv6 spelling everywhere), so honest
    # entries were reported as edited.
    details = [{"v": 1e16}, {"v": 1e100}, {"v": -0.0}, {"v": [1.0, 2.50, 3e-5]}]
    addresses = ["2001:DB8:0:0::1", "2001:0db8:0000::0001", "::ffff:0102:0304", "::1.2.3.4", ""]
    with transaction.atomic():
        for detail in details:
            audit.record(action="test.numbers", actor=None, detail=detail)
        for address in addresses:
            audit.record(
                action="test.address", actor=None, context=audit.AuditContext(address, "ua")
            )
    stored = dict(AuditEntry.objects.filter(action="test.address").values_list("seq", "ip_address"))
    assert stored[5] == stored[6] == "2001:db8::1"
    assert stored[7] == "::ffff:1.2.3.4"
    assert stored[9] is None
    assert [h.count for h in audit.walk_chain()] == list(range(1, 10))
    assert verify()[0] == 0


# ------------------------------------------------------------------------------- tampering


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("reason", "nothing to see here"),
        ("detail", json.dumps({"score": 1.0, "label": "normal"})),
        ("actor_label", "someone-else"),
        ("created_at", datetime(2020, 1, 1, tzinfo=UTC)),
        ("entry_hash", "f" * 64),
    ],
    ids=["reason", "detail", "actor_label", "created_at", "entry_hash"],
)
def test_it_catches_an_edited_entry(column, value):
    append(12)
    edited = row(7)
    original = raw_column(column, 7)
    tamper(f"UPDATE {TABLE} SET {column} = %s WHERE seq = 7", [value])
    assert raw_column(column, 7) != original
    assert row(7)["id"] == edited["id"]

    with pytest.raises(audit.ChainBroken) as broken:
        list(audit.walk_chain())
    assert (broken.value.seq, broken.value.entry_id) == (7, edited["id"])

    code, out, err = verify()
    assert code == 1
    assert out == ""
    assert f"BROKEN at entry #7 (id {edited['id']})" in err
    assert "the entry was edited" in err
    assert "The first 6 entries verified." in err


@pytest.mark.django_db
def test_it_catches_an_entry_edited_and_rehashed_by_the_link_from_the_next_one():
    append(12)
    fields = [f for f in audit._VERIFY_FIELDS if f not in ("id", "entry_hash")]
    values = AuditEntry.objects.filter(seq=7).values(*fields).get()
    values["reason"] = "rewritten, with a hash to match"
    rehashed = audit.entry_hash(audit.canonical_content(**values))
    tamper(
        f"UPDATE {TABLE} SET reason = %s, entry_hash = %s WHERE seq = 7",
        [values["reason"], rehashed],
    )
    assert raw_column("entry_hash", 7) == rehashed
    heads = audit.walk_chain()
    assert [next(heads).count for _ in range(7)] == list(range(1, 8))  # #7 verifies by itself
    with pytest.raises(audit.ChainBroken):
        next(heads)
    nxt = row(8)

    code, _, err = verify()
    assert code == 1
    assert f"entry #8 (id {nxt['id']})" in err
    assert "link to the previous entry is broken" in err
    assert "The first 7 entries verified." in err


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
    append(10)
    reported = row(named)
    tamper(f"DELETE FROM {TABLE} WHERE seq IN ({', '.join(map(str, deleted))})")
    assert AuditEntry.objects.count() == 10 - len(deleted)

    code, out, err = verify()
    assert code == 1
    assert out == ""
    assert f"BROKEN at entry #{named} (id {reported['id']})" in err
    assert missing in err
    assert "(deleted or cut)" in err


@pytest.mark.django_db
def test_it_catches_an_entry_inserted_in_the_middle():
    append(10)
    displaced = row(6)  # the real entry #6, which the forgery pushes to #7
    shift_up_from(6)
    assert row(7)["id"] == displaced["id"]
    forged = forge(6, row(5)["entry_hash"])
    assert [r["seq"] for r in chain_rows()] == list(range(1, 12))

    code, out, err = verify()
    assert code == 1
    assert out == ""
    # The forgery itself is consistent; the entry after it betrays it: it is older.
    assert f"BROKEN at entry #7 (id {displaced['id']})" in err
    assert f"written before entry #6 (id {forged.pk})" in err
    assert "inserted out of order" in err
    assert "The first 6 entries verified." in err


# ---------------------------------------------------------------------- cutting the newest


@pytest.mark.django_db
def test_expect_head_passes_on_the_intact_chain_and_after_later_appends():
    append(8)
    code, out, _ = verify()
    head = head_line(out)
    assert head == f"8:{row(8)['entry_hash']}"

    code, out, err = verify("--expect-head", head)
    assert (code, err) == (0, "")
    assert "Expected head #8 is on the chain." in out

    append(3)
    code, out, _ = verify("--expect-head", head.upper())
    assert code == 0
    assert head_line(out).startswith("11:")


@pytest.mark.django_db
def test_expect_head_fails_when_the_newest_entries_are_cut():
    append(8)
    head = head_line(verify()[1])
    tamper(f"DELETE FROM {TABLE} WHERE seq > 5")
    assert AuditEntry.objects.count() == 5

    assert verify()[0] == 0  # the shorter chain is valid by itself: hence --expect-head
    code, out, err = verify("--expect-head", head)
    assert code == 1
    assert "Audit chain OK" not in out
    assert "it has 5 entries but the expected head is entry #8" in err
    assert "entries were cut from the end" in err


@pytest.mark.django_db
def test_expect_head_fails_when_the_entry_at_its_position_was_rewritten():
    append(8)
    head = head_line(verify()[1])
    # Cut the last three and append three others: a valid chain, with a different entry #8.
    tamper(f"DELETE FROM {TABLE} WHERE seq > 5")
    append(3)
    new_hash = row(8)["entry_hash"]
    assert f"8:{new_hash}" != head
    assert verify()[0] == 0

    code, _, err = verify("--expect-head", head)
    assert code == 1
    assert f"BROKEN at entry #8: its hash is {new_hash}" in err
    assert "the chain was rewritten up to here" in err


@pytest.mark.django_db
@pytest.mark.parametrize(
    "text",
    [
        "12",
        "",
        "twelve:" + "a" * 64,
        "12:" + "a" * 63,
        "12:" + "a" * 65,
        "12:" + "g" * 64,
        "-1:" + "a" * 64,
        "0:" + "a" * 64,
        "²:" + "a" * 64,
    ],
    ids=[
        "no-hash",
        "empty",
        "count-not-a-number",
        "hash-too-short",
        "hash-too-long",
        "hash-not-hex",
        "negative-count",
        "zero-count",
        "non-ascii-digit",
    ],
)
def test_a_malformed_expect_head_is_a_command_error(text):
    append(2)
    with pytest.raises(CommandError, match="COUNT:SHA256"):
        call_command("verify_audit", f"--expect-head={text}", stdout=io.StringIO())


# ------------------------------------------------------------------------- the model refuses


@pytest.mark.django_db
def test_the_model_refuses_to_save_an_existing_entry():
    append(3)
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
    append(3)
    entry = AuditEntry.objects.get(seq=2)
    with pytest.raises(AuditLogIsAppendOnly, match="cannot be deleted"):
        entry.delete()
    assert AuditEntry.objects.filter(seq=2).exists()


@pytest.mark.django_db
def test_querysets_refuse_update_and_delete():
    append(3)
    before = chain_rows()
    with pytest.raises(AuditLogIsAppendOnly, match="cannot be updated"):
        AuditEntry.objects.filter(seq=2).update(reason="changed")
    with pytest.raises(AuditLogIsAppendOnly, match="cannot be deleted"):
        AuditEntry.objects.filter(seq=2).delete()
    with pytest.raises(AuditLogIsAppendOnly):
        AuditEntry.objects.all().delete()
    assert chain_rows() == before


# ----------------------------------------------------------------------------- PostgreSQL


@postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize(
    "sql",
    [
        f"UPDATE {TABLE} SET reason = 'changed' WHERE seq = 2",
        f"UPDATE {TABLE} SET seq = seq + 100",
        f"DELETE FROM {TABLE} WHERE seq = 2",
        f"DELETE FROM {TABLE}",
    ],
    ids=["update-one", "update-all", "delete-one", "delete-all"],
)
def test_the_database_refuses_raw_updates_and_deletes(sql):
    append(3)
    before = chain_rows()
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)
    assert chain_rows() == before


@postgres_only
@pytest.mark.django_db
def test_the_trigger_is_back_after_the_tests_own_bypass():
    append(3)
    tamper(f"UPDATE {TABLE} SET reason = 'tampered' WHERE seq = 3")
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(f"UPDATE {TABLE} SET reason = 'again' WHERE seq = 3")
    assert row(3)["reason"] == "tampered"


THREADS, PER_THREAD = 8, 50


def assert_one_chain_of_whole_transactions(seqs_threads: list[tuple[int, int, int]]) -> None:
    """(seq, thread, n) rows: seq 1..N, and each writer's entries contiguous and in order."""
    assert [seq for seq, _, _ in seqs_threads] == list(range(1, THREADS * PER_THREAD + 1))
    for start in range(0, THREADS * PER_THREAD, PER_THREAD):
        block = seqs_threads[start : start + PER_THREAD]
        assert {thread for _, thread, _ in block} == {block[0][1]}
        assert [n for _, _, n in block] == list(range(PER_THREAD))
    assert {seqs_threads[s][1] for s in range(0, THREADS * PER_THREAD, PER_THREAD)} == set(
        range(THREADS)
    )


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_eight_concurrent_writers_leave_one_unbroken_chain():
    barrier = threading.Barrier(THREADS, timeout=60)
    errors: list[BaseException] = []

    def writer(thread: int) -> None:
        try:
            barrier.wait()
            with transaction.atomic():
                for n in range(PER_THREAD):
                    audit.record(
                        action="test.concurrent", actor=None, detail={"thread": thread, "n": n}
                    )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    rows = AuditEntry.objects.in_chain_order().values_list("seq", "detail")
    assert_one_chain_of_whole_transactions([(s, d["thread"], d["n"]) for s, d in rows])
    assert [h.count for h in audit.walk_chain()][-1] == THREADS * PER_THREAD
    code, out, _ = verify()
    assert code == 0
    assert f"{THREADS * PER_THREAD} entries verified" in out


SQLITE_WRITERS = """
import json, sys, threading
import django
django.setup()
from django.core.management import call_command
from django.db import connection, transaction
from moderation.audit import log as audit

call_command("migrate", verbosity=0)
THREADS, PER_THREAD = int(sys.argv[1]), int(sys.argv[2])
barrier = threading.Barrier(THREADS, timeout=60)
errors = []

def writer(thread):
    try:
        barrier.wait()
        with transaction.atomic():
            for n in range(PER_THREAD):
                detail = {"thread": thread, "n": n}
                audit.record(action="test.concurrent", actor=None, detail=detail)
    except BaseException as exc:
        errors.append(repr(exc))
    finally:
        connection.close()

threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=120)
print(json.dumps({"errors": errors, "alive": sum(t.is_alive() for t in threads)}))
call_command("verify_audit")
"""


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="the SQLite variant of the concurrent-writers test"
)
def test_eight_concurrent_writers_on_a_sqlite_file_leave_one_unbroken_chain(tmp_path):
    # The test database is SQLite's shared-cache in-memory database, where a second writer
    # fails at once with "database table is locked" (no busy timeout applies), unlike a file.
    # So this runs the writers in a child process against a real file, with the settings'
    # BEGIN IMMEDIATE and WAL, and reads the file afterwards.
    db = tmp_path / "audit.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{db}",
        "MEDIA_ROOT": str(tmp_path / "media"),
    }
    done = subprocess.run(
        [sys.executable, "-c", SQLITE_WRITERS, str(THREADS), str(PER_THREAD)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[0])
    assert result == {"errors": [], "alive": 0}
    assert f"Audit chain OK: {THREADS * PER_THREAD} entries verified" in done.stdout

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            f"SELECT seq, prev_hash, entry_hash, detail FROM {TABLE} ORDER BY seq"
        ).fetchall()
    conn.close()
    details = [json.loads(detail) for *_, detail in rows]
    assert_one_chain_of_whole_transactions(
        [(seq, d["thread"], d["n"]) for (seq, *_), d in zip(rows, details, strict=True)]
    )
    assert rows[0][1] == ZEROS
    for before, after in itertools.pairwise(rows):
        assert after[1] == before[2]
    assert f"Head: {THREADS * PER_THREAD}:{rows[-1][2]}" in done.stdout


# ------------------------------------------------------------------------------ streaming


@pytest.mark.django_db
def test_walk_chain_verifies_two_thousand_entries_in_small_chunks():
    append(2000)
    last = row(2000)["entry_hash"]
    for chunk_size in (1, 7, 500):
        heads = audit.walk_chain(chunk_size=chunk_size)
        count = 0
        for count, head in enumerate(heads, start=1):
            assert head.count == count
        assert count == 2000
        assert head.last_hash == last


def peak_while_walking(chunk_size: int) -> int:
    tracemalloc.start()
    try:
        for _ in audit.walk_chain(chunk_size=chunk_size):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.django_db
def test_walking_the_chain_does_not_hold_it_in_memory():
    # Each entry carries about 2 KB, so holding 2,000 of them would take several MB more than
    # holding 500; streaming in chunks of 50 keeps the peak where it was.
    padding = "x" * 2000

    def add(n: int) -> None:
        with transaction.atomic():
            for i in range(n):
                audit.record(action="test.memory", actor=None, detail={"i": i, "pad": padding})

    add(500)
    peak_while_walking(50)  # warm up caches (compiled queries, imports) outside the comparison
    peak_500 = peak_while_walking(50)
    add(1500)
    peak_2000 = peak_while_walking(50)
    grown = peak_2000 - peak_500
    assert grown < 1_000_000, f"peak went from {peak_500} to {peak_2000} bytes"
