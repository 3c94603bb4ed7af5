"""The audit sequencer: positions, the stored tree, signed checkpoints, the trigger that lets only
its write through, concurrency with real connections, and the migration of hash-chain logs."""

# Raw SQL on the audit tables (constant names) is how these tests reach past the model.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from moderation.audit import checkpoints, receipt, sequencer
from moderation.audit import log as audit
from moderation.audit.note import Signer, open_checkpoint
from moderation.audit.verify import LogBroken, verify_log
from moderation.models import AuditCheckpoint, AuditEntry, AuditTreeNode

from .audit_log import VERIFIER_KEY, sequence_all
from .conftest import postgres_only

ROOT = Path(__file__).resolve().parent.parent
TABLE = AuditEntry._meta.db_table
SIGNER = Signer.from_key(
    "PRIVATE+KEY+tests.example/audit+d1b0cb96+AYI5p2BXFaN9Bg5jIeRH7AtnXIOHRwDOSAW3ZvyMaWAp"
)


def record(n: int, *, action: str = "test.sequenced") -> list[AuditEntry]:
    with transaction.atomic():
        return [audit.record(action=action, actor=None, detail={"n": i}) for i in range(n)]


# An independent RFC 9162 section 2.1 tree, written from the RFC's recursive definition, to check
# the stored subtrees and the signed roots against.
def rfc_root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + rfc_root(leaves[:k]) + rfc_root(leaves[k:])).digest()


def contents() -> list[bytes]:
    return [bytes(c) for c in AuditEntry.objects.order_by("seq").values_list("content", flat=True)]


# ---------------------------------------------------------------------------------- batches


@pytest.mark.django_db
def test_it_gives_waiting_entries_the_next_positions_in_the_order_they_were_written():
    written = record(7)
    first = sequencer.sequence_batch(signer=SIGNER, batch_size=5)
    assert first == sequencer.Batch(sequenced=5, integrated=0, tree_size=5)
    second = sequencer.sequence_batch(signer=SIGNER, batch_size=5)
    assert second == sequencer.Batch(sequenced=2, integrated=0, tree_size=7)
    rows = AuditEntry.objects.order_by("id").values_list("id", "seq", "leaf_hash", "content")
    assert [(entry_id, seq) for entry_id, seq, *_ in rows] == [
        (entry.pk, n) for n, entry in enumerate(written, start=1)
    ]
    for *_, leaf, content in rows:
        assert bytes(leaf) == hashlib.sha256(b"\x00" + bytes(content)).digest()


@pytest.mark.django_db
def test_each_batch_signs_a_checkpoint_of_the_grown_tree():
    record(5)
    sequencer.sequence_batch(signer=SIGNER, batch_size=3)
    sequencer.sequence_batch(signer=SIGNER, batch_size=3)
    stored = list(AuditCheckpoint.objects.order_by("tree_size"))
    assert [c.tree_size for c in stored] == [3, 5]
    leaves = contents()
    for checkpoint in stored:
        opened = open_checkpoint(checkpoint.signed_note, SIGNER.verifier)
        assert (opened.origin, opened.size) == ("tests.example/audit", checkpoint.tree_size)
        assert opened.root == bytes(checkpoint.root_hash) == rfc_root(leaves[: opened.size])
        assert checkpoint.signed_note.startswith(f"tests.example/audit\n{opened.size}\n")
    assert checkpoints.latest() == stored[-1]


@pytest.mark.django_db
def test_nothing_waiting_writes_nothing():
    assert sequencer.sequence_batch(signer=SIGNER) == sequencer.Batch(0, 0, 0)
    record(2)
    sequence_all()
    assert sequencer.sequence_batch(signer=SIGNER) == sequencer.Batch(0, 0, 2)
    assert AuditCheckpoint.objects.count() == 1


@pytest.mark.django_db
def test_the_stored_tree_and_every_root_match_an_independent_implementation():
    record(67)
    for _ in range(67):  # one entry a batch: a checkpoint at every size from 1 to 67
        sequencer.sequence_batch(signer=SIGNER, batch_size=1)
    leaves = contents()
    roots = dict(AuditCheckpoint.objects.values_list("tree_size", "root_hash"))
    assert sorted(roots) == list(range(1, 68))
    for size, root in roots.items():
        assert bytes(root) == rfc_root(leaves[:size]), size
    stored = {(level, index): bytes(h) for level, index, h in AuditTreeNode.objects.values_list()}
    expected = {
        (level, index): rfc_root(leaves[index << level : (index + 1) << level])
        for level in range(1, 7)
        for index in range(67 >> level)
    }
    assert stored == expected
    for seq in range(1, 68):
        entry = leaves[seq - 1]
        assert receipt.verify_receipt(entry, checkpoints.entry_receipt(seq), VERIFIER_KEY)


@pytest.mark.django_db
def test_the_sequencer_refuses_positions_no_checkpoint_covers():
    record(3)
    sequence_all()
    content = b'{"forged":true}'
    AuditEntry.objects.create(
        seq=4,
        created_at=datetime.now(UTC),
        actor_label="system",
        action="test.forged",
        content=content,
        entry_hash=hashlib.sha256(content).hexdigest(),
        leaf_hash=hashlib.sha256(b"\x00" + content).digest(),
    )
    record(1)
    with pytest.raises(sequencer.SequencerError, match="entries #4 to #4 have positions"):
        sequencer.sequence_batch(signer=SIGNER)
    assert AuditEntry.objects.filter(seq__isnull=True).count() == 1


# --------------------------------------------------------------------------------- commands


@pytest.mark.django_db
def test_the_command_once_sequences_everything_waiting_and_says_so():
    record(12)
    out = io.StringIO()
    call_command("audit_sequencer", "--once", "--batch", "5", stdout=out)
    assert out.getvalue().splitlines() == [
        f"Sequencing the audit log tests.example/audit ({VERIFIER_KEY}).",
        "12 entries sequenced; tree size 12.",
    ]
    assert list(
        AuditCheckpoint.objects.order_by("tree_size").values_list("tree_size", flat=True)
    ) == [
        5,
        10,
        12,
    ]
    assert verify_log().entries == 12


@pytest.mark.django_db
def test_the_command_refuses_to_run_without_a_signing_key(settings):
    settings.AUDIT_SIGNING_KEY = ""
    record(1)
    with pytest.raises(
        CommandError, match="no audit signing key is configured: set AUDIT_SIGNING_KEY"
    ):
        call_command("audit_sequencer", "--once", stdout=io.StringIO())
    assert AuditEntry.objects.get().seq is None


@pytest.mark.django_db
@pytest.mark.parametrize("batch", ["0", "100001"])
def test_the_command_refuses_a_batch_out_of_bounds(batch):
    with pytest.raises(CommandError, match="--batch must be from 1 to 100000"):
        call_command("audit_sequencer", "--once", "--batch", batch, stdout=io.StringIO())


def test_keygen_prints_a_signing_key_and_its_public_half():
    out, err = io.StringIO(), io.StringIO()
    call_command("audit_keygen", "moderation.example.com/audit", stdout=out, stderr=err)
    signer = Signer.from_key(out.getvalue().strip())
    assert signer.name == "moderation.example.com/audit"
    assert err.getvalue().strip() == f"Verifier key (public): {signer.verifier_key()}"
    with pytest.raises(CommandError, match="not a valid key name"):
        call_command("audit_keygen", "two words", stdout=io.StringIO())


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AUDIT_", "DATABASE_URL"))
    }
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def test_a_bad_signing_key_stops_the_settings_naming_the_variable_and_never_the_key(tmp_path):
    secret = "AYI5p2BXFaN9Bg5jIeRH7AtnXIOHRwDOSAW3ZvyMaWAp"
    key_file = tmp_path / "key"
    key_file.write_text(f"PRIVATE+KEY+tests.example/audit+00000000+{secret}\n")
    for variable, value in (
        ("AUDIT_SIGNING_KEY", f"PRIVATE+KEY+tests.example/audit+00000000+{secret}"),
        ("AUDIT_SIGNING_KEY_FILE", str(key_file)),
    ):
        env = child_env(tmp_path, DJANGO_SETTINGS_MODULE="moderation.settings", DEBUG="1")
        env[variable] = value
        done = subprocess.run(
            [sys.executable, "-c", "import django; django.setup()"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1
        assert f"{variable} is not a signer key like PRIVATE+KEY+" in done.stderr
        assert "the key id does not match the name and key" in done.stderr
        assert secret not in done.stderr


def test_the_sequencer_stops_cleanly_on_sigterm(tmp_path):
    env = child_env(tmp_path)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=300)
    child = subprocess.Popen(
        [*manage, "audit_sequencer"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().startswith("Sequencing the audit log tests.example/audit")
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------- lag


@pytest.mark.django_db
def test_the_lag_counts_waiting_entries_and_the_age_of_the_oldest(client):
    now = datetime.now(UTC)
    with time_machine.travel(now - timedelta(seconds=90), tick=False):
        record(2)
    with time_machine.travel(now, tick=False):
        record(1)
        lag = sequencer.lag()
        health = client.get("/healthz").json()
    assert (lag.waiting, lag.capped, lag.oldest_seconds(now)) == (3, False, 90)
    assert (health["audit_entries_waiting"], health["audit_oldest_waiting_seconds"]) == (3, 90)
    assert health["status"] == "degraded"
    assert (
        "audit entries are waiting for a position: is audit_sequencer running?"
        in (health["problems"])
    )

    sequence_all()
    health = client.get("/healthz").json()
    assert (health["audit_entries_waiting"], health["audit_oldest_waiting_seconds"]) == (0, 0)
    assert not [p for p in health["problems"] if "audit" in p]


@pytest.mark.django_db
def test_healthz_says_when_no_signing_key_is_configured(client, settings):
    settings.AUDIT_SIGNING_KEY = ""
    problems = client.get("/healthz").json()["problems"]
    assert "no audit signing key is configured (AUDIT_SIGNING_KEY)" in problems


# ----------------------------------------------------------------------------- PostgreSQL


def sequencer_update(cursor: Any, entry_id: int, seq: int, *, extra: str = "", params=()) -> None:
    cursor.execute(
        f"UPDATE {TABLE} SET seq = %s, leaf_hash = sha256('\\x00'::bytea || content){extra} "
        "WHERE id = %s",
        [seq, *params, entry_id],
    )


# A different value for every column but seq and leaf_hash, which the sequencer sets.
CHANGES = {
    "id": ("id + 1000000", []),
    "created_at": ("created_at - interval '1 second'", []),
    "actor_id": ("%s", ["actor"]),
    "actor_label": ("'someone'", []),
    "action": ("'test.changed'", []),
    "image_id": ("%s", ["image"]),
    "state_before": ("'received'", []),
    "state_after": ("'approved'", []),
    "reason": ("'changed'", []),
    "detail": ("'{\"changed\": true}'::jsonb", []),
    "ip_address": ("'198.51.100.77'::inet", []),
    "user_agent": ("'changed/1.0'", []),
    "content": ("content || 'x'::bytea", []),
    # Another first digit, whatever it was ('f' over an 'f' was no change, 1 run in 16).
    "entry_hash": (
        "CASE WHEN left(entry_hash, 1) = 'f' THEN 'e' ELSE 'f' END || substr(entry_hash, 2)",
        [],
    ),
    "prev_hash": ("'0'", []),
}


@postgres_only
@pytest.mark.django_db
def test_the_trigger_refuses_a_change_to_any_other_column(admin_user, make_image):
    columns = {f.column for f in AuditEntry._meta.concrete_fields} - {"seq", "leaf_hash"}
    assert set(CHANGES) == columns, "a new column: add it to the trigger (migration) and here"
    image = make_image()
    values = {"actor": admin_user.pk, "image": image.pk}
    [entry] = record(1, action="test.trigger")
    for column, (expression, names) in CHANGES.items():
        # The leaf hash is of the new content, so only the column's change is refused.
        content = expression if column == "content" else "content"
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(
                f"UPDATE {TABLE} SET seq = 1, {column} = {expression}, "
                f"leaf_hash = sha256('\\x00'::bytea || {content}) WHERE id = %s",
                [*[values[name] for name in names], entry.pk],
            )
    with transaction.atomic(), connection.cursor() as cursor:
        sequencer_update(cursor, entry.pk, 1)
    assert AuditEntry.objects.get(pk=entry.pk).seq == 1


@postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("sql", "params"),
    [
        (f"UPDATE {TABLE} SET seq = 1, leaf_hash = %s WHERE id = %s", [b"\x00" * 32]),
        (f"UPDATE {TABLE} SET seq = 1 WHERE id = %s", []),
        (f"UPDATE {TABLE} SET leaf_hash = sha256('\\x00'::bytea || content) WHERE id = %s", []),
    ],
    ids=["wrong-leaf-hash", "position-without-leaf-hash", "leaf-hash-without-position"],
)
def test_the_trigger_lets_only_the_sequencers_exact_write_through(sql, params):
    [entry] = record(1)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [*params, entry.pk])
    with transaction.atomic(), connection.cursor() as cursor:
        sequencer_update(cursor, entry.pk, 1)
    with (  # once, and never again
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(f"UPDATE {TABLE} SET seq = 2 WHERE id = %s", [entry.pk])


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_second_sequencer_backs_off_while_the_first_holds_the_lock():
    record(3)
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [sequencer._PG_LOCK_KEY])
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert holding.wait(30)
        assert sequencer.sequence_batch(signer=SIGNER) is None
        assert AuditEntry.objects.filter(seq__isnull=False).count() == 0
    finally:
        release.set()
        thread.join(30)
    assert sequencer.sequence_batch(signer=SIGNER) == sequencer.Batch(3, 0, 3)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_an_entry_committed_late_gets_the_next_position_after_those_committed_first():
    recorded, commit = threading.Event(), threading.Event()
    late: list[int] = []

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                late.append(audit.record(action="test.late", actor=None).pk)
                recorded.set()
                commit.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert recorded.wait(30)
    early = record(3)
    assert sequence_all() == 3  # the uncommitted entry is not seen
    commit.set()
    thread.join(30)
    assert sequence_all() == 4
    [late_id] = late
    assert late_id < early[0].pk
    assert AuditEntry.objects.get(pk=late_id).seq == 4
    assert verify_log().entries == 4


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_many_writers_and_two_sequencers_leave_one_gapless_verified_log():
    writers, per_writer = 8, 60
    done = threading.Event()
    errors: list[BaseException] = []
    batches: list[sequencer.Batch | None] = []

    def writer(n: int) -> None:
        chance = random.Random(n)
        try:
            written = 0
            while written < per_writer:
                size = min(chance.randint(1, 5), per_writer - written)
                with transaction.atomic():
                    for _ in range(size):
                        audit.record(
                            action="test.concurrent",
                            actor=None,
                            detail={"writer": n, "n": written},
                        )
                        written += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def run_sequencer() -> None:
        try:
            while not done.is_set():
                batch = sequencer.sequence_batch(signer=SIGNER, batch_size=7)
                batches.append(batch)
                if batch is None or batch.sequenced < 7:
                    time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run_sequencer) for _ in range(2)]
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads[2:]:
        thread.join(120)
    done.set()
    for thread in threads[:2]:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    total = writers * per_writer
    assert sequence_all() == total
    positions = list(AuditEntry.objects.order_by("seq").values_list("seq", "detail"))
    assert [seq for seq, _ in positions] == list(range(1, total + 1))
    assert sorted((d["writer"], d["n"]) for _, d in positions) == [
        (w, n) for w in range(writers) for n in range(per_writer)
    ]
    assert any(batch and batch.sequenced for batch in batches)
    report = verify_log()
    assert (report.entries, report.waiting) == (total, 0)
    sizes = list(AuditCheckpoint.objects.order_by("tree_size").values_list("tree_size", flat=True))
    assert sizes == sorted(set(sizes))
    assert sizes[-1] == total


SQLITE_WRITERS = """
import json, sys, threading, time
import django
django.setup()
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, transaction
from moderation.audit import checkpoints, log as audit, sequencer
from moderation.audit.verify import verify_log

call_command("migrate", verbosity=0)
THREADS, PER_THREAD = int(sys.argv[1]), int(sys.argv[2])
barrier = threading.Barrier(THREADS + 1, timeout=60)
done = threading.Event()
errors = []

def writer(thread):
    try:
        barrier.wait()
        for n in range(PER_THREAD):
            with transaction.atomic():
                detail = {"thread": thread, "n": n}
                audit.record(action="test.concurrent", actor=None, detail=detail)
    except BaseException as exc:
        errors.append(repr(exc))
    finally:
        connection.close()

def sequence():
    signer = checkpoints.signer()
    try:
        barrier.wait()
        while not done.is_set():
            batch = sequencer.sequence_batch(signer=signer, batch_size=16)
            if batch.sequenced < 16:
                time.sleep(0.005)
    except BaseException as exc:
        errors.append(repr(exc))
    finally:
        connection.close()

threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
seq = threading.Thread(target=sequence)
for t in [*threads, seq]:
    t.start()
for t in threads:
    t.join(timeout=120)
done.set()
seq.join(timeout=120)
call_command("audit_sequencer", "--once", verbosity=0)
report = verify_log()
print(json.dumps({"errors": errors, "alive": sum(t.is_alive() for t in [*threads, seq]),
                  "entries": report.entries, "waiting": report.waiting}))
"""


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite variant")
def test_concurrent_writers_and_a_sequencer_on_a_sqlite_file_leave_one_gapless_log(tmp_path):
    # The test database is SQLite's shared-cache in-memory database, where a second writer fails
    # at once; a child process uses a real file, with the settings' BEGIN IMMEDIATE and WAL.
    threads, per_thread = 6, 40
    done = subprocess.run(
        [sys.executable, "-c", SQLITE_WRITERS, str(threads), str(per_thread)],
        cwd=ROOT,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    total = threads * per_thread
    assert result == {"errors": [], "alive": 0, "entries": total, "waiting": 0}


# ----------------------------------------------------------------- migrating hash-chain logs

BEFORE = [("moderation", "0012_imm_rate_limit")]
GENESIS = "0" * 64


def old_canonical_content(**values: Any) -> bytes:
    """The hash chain's canonical content, as moderation/audit/log.py wrote it before 0013."""
    return json.dumps(
        {
            "seq": values["seq"],
            "time": values["created_at"].astimezone(UTC).isoformat(timespec="microseconds"),
            "actor_id": values["actor_id"],
            "actor": values["actor_label"],
            "action": values["action"],
            "image_id": values["image_id"],
            "state_before": values["state_before"],
            "state_after": values["state_after"],
            "reason": values["reason"],
            "detail": values["detail"],
            "ip": values["ip_address"],
            "user_agent": values["user_agent"],
            "prev": values["prev_hash"],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def write_the_old_way(executor: MigrationExecutor, n: int, actor_id: int) -> list[str]:
    """n entries as the hash-chain code wrote them: each hashes its position and the previous
    entry's hash, over the values as the database hands them back. Returns their hashes."""
    Entry = executor.loader.project_state(BEFORE).apps.get_model("moderation", "AuditEntry")
    hashes, prev = [], GENESIS
    start = datetime(2025, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    for i in range(n):
        values = {
            "seq": i + 1,
            "created_at": start + timedelta(seconds=i, microseconds=i),
            "actor_id": actor_id if i % 2 else None,
            "actor_label": "ada" if i % 2 else "system",
            "action": "review.approved" if i % 2 else "imm.routed",
            "image_id": None,
            "state_before": "awaiting_review",
            "state_after": "approved",
            "reason": f"reason {i} — ünïcödé" if i % 3 else "",
            "detail": {"i": i, "score": 87.5, "nested": {"ok": True, "list": [1, None]}},
            "ip_address": "203.0.113.7" if i % 4 == 0 else None,
            "user_agent": "Mozilla/5.0 (old)" if i % 4 == 0 else "",
            "prev_hash": prev,
        }
        digest = hashlib.sha256(old_canonical_content(**values)).hexdigest()
        Entry.objects.create(**values, entry_hash=digest)
        hashes.append(digest)
        prev = digest
    return hashes


@pytest.fixture
def old_schema(transactional_db):
    """The database as it was before the verifiable log (0012); migrated back forward after."""
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE)
    executor.loader.build_graph()
    try:
        yield executor
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)


def old_user() -> Any:
    # Not accounts.create_user: it records an entry, which the old schema cannot hold.
    return get_user_model().objects.create(username="ada")


def migrate_forward(executor: MigrationExecutor) -> None:
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def tamper(sql: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = replica")
        cursor.execute(sql, params or [])
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = DEFAULT")


@pytest.mark.django_db(transaction=True)
def test_a_log_written_by_the_hash_chain_code_migrates_and_becomes_the_first_leaves(old_schema):
    hashes = write_the_old_way(old_schema, 23, old_user().pk)
    migrate_forward(old_schema)

    legacy = list(AuditEntry.objects.order_by("seq"))
    assert [e.seq for e in legacy] == list(range(1, 24))
    for entry, digest in zip(legacy, hashes, strict=True):
        content = bytes(entry.content)
        assert hashlib.sha256(content).hexdigest() == entry.entry_hash == digest
        assert bytes(entry.leaf_hash) == hashlib.sha256(b"\x00" + content).digest()
        assert json.loads(content)["seq"] == entry.seq
    report = verify_log()  # before the sequencer's first run: no checkpoint, and that is said
    assert (report.entries, report.uncovered, report.checkpoint) == (23, 23, None)

    record(4, action="test.after_migration")
    first = sequencer.sequence_batch(signer=SIGNER)
    assert first == sequencer.Batch(sequenced=4, integrated=23, tree_size=27)
    report = verify_log()
    assert (report.entries, report.uncovered, report.waiting) == (27, 0, 0)
    assert report.root == rfc_root(contents())
    for seq in (1, 23, 24, 27):
        entry = bytes(AuditEntry.objects.get(seq=seq).content)
        assert receipt.verify_receipt(entry, checkpoints.entry_receipt(seq), VERIFIER_KEY)


@pytest.mark.django_db(transaction=True)
def test_an_entry_edited_before_the_migration_is_still_reported_after_it(old_schema):
    write_the_old_way(old_schema, 10, old_user().pk)
    tamper(f"UPDATE {TABLE} SET reason = 'edited under the old code' WHERE seq = 4")
    migrate_forward(old_schema)
    sequence_all()
    with pytest.raises(LogBroken) as broken:
        verify_log()
    assert str(broken.value).startswith("entry #4 (id ")
    assert "its content does not match its content hash: the content was edited" in str(
        broken.value
    )


@pytest.mark.django_db(transaction=True)
def test_the_sequencer_will_not_build_a_tree_over_a_hash_chain_with_a_gap(old_schema):
    write_the_old_way(old_schema, 6, old_user().pk)
    tamper(f"DELETE FROM {TABLE} WHERE seq = 3")
    migrate_forward(old_schema)
    with pytest.raises(sequencer.SequencerError, match="entry #3 is missing"):
        sequencer.sequence_batch(signer=SIGNER)
    assert not AuditCheckpoint.objects.exists()
    assert not AuditTreeNode.objects.exists()
