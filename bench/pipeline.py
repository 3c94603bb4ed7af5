"""Benchmark of the IMM pipeline and the audit log: `make bench-pipeline` (PostgreSQL only).

Runs the production set as `make serve` does (gunicorn with 4 workers, the IMM poller, the audit
sequencer when the code has one) against a database of its own, with the IMM emulator answering
every request --latency-ms (100) late, and measures:

1. Submission: --images images wait for IMM; one submit worker (SUBMIT_WORKER below) sends them;
   images submitted per second, from the first submission to the last (at most --seconds).
2. Notifications: the emulator's envelope for --tasks running tasks, 25% of them sent twice,
   plus forged (wrong token) and malformed bodies (10% of the tasks each), all shuffled, POSTed
   through gunicorn by --in-flight (32) concurrent senders: accepted per second and the answer
   time p50/p95; then, once the inbox is drained (when the code has one), the database must show
   every task recorded once and every image routed once, to where its verdict says; and the
   time from a task's first delivery to its image being routed, p50/p95.
3. Claim + decide: 16 reviewers back to back in 4 processes for --seconds (bench/common.claims,
   as `make bench` runs them): decisions per second and the share of reviewer sessions waiting
   for a lock (pg_stat_activity, sampled every 20 ms).
4. The audit sequencer (skipped, saying so, when the code has no `manage.py audit_sequencer`):
   entries sequenced per second over a backlog, `verify_audit` over --log-entries (1,000,000)
   entries (time and peak memory), and one entry's receipt: its size and verification time.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_bench_pipeline make bench-pipeline
    ... bench/pipeline.py --quick                    # a tiny run, for checking the bench itself
    ... bench/pipeline.py --baseline [REF]           # also the code at REF (default 1ee12e0)

With --baseline the same measurements run first on REF's code, checked out in a temporary git
worktree with this bench copied in, against a second database (<name>_baseline); the emulator
and the load come from this tree in both runs, so the two columns are one machine, one run.
Each database is dropped and created again (the script refuses one it did not create).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path, where queue.py would shadow the
# standard library's `queue`; the tree's root (the app and `bench`) is put there instead.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path is set
    ClaimRun,
    Process,
    _weighted,
    answers,
    free_port,
    git_commit,
    has_command,
    load,
    machine_info,
    pct,
    people,
    post_notification,
    recreate_database,
    require_postgres,
    seed,
    vacuum_analyze,
    vacuum_claims,
    wait_for,
)

# The process that sends images to IMM, run from the tree being measured: `imm_submitter` where
# the code has it (issue 10), else the task worker, which ran every submission before.
SUBMIT_WORKER = ["manage.py", "imm_submitter"]
SUBMIT_WORKER_BEFORE = ["manage.py", "db_worker", "--no-startup-delay", "--interval", "0.1"]
WEB_WORKERS = 4
REVIEWERS = 16
REVIEWER_PROCESSES = 4
BASELINE = "1ee12e0"  # main before issue 10's work
DB_MARK = "bench/pipeline.py database"
NOTIFY_TOKEN = "bench-notify-token"  # noqa: S105 - a benchmark's own shared secret
INBOX_TABLE = "moderation_notificationinboxmessage"
ROUTES = {"pass": "approved", "block": "rejected", "review": "awaiting_review"}
VERDICTS = [("pass", 0.7), ("review", 0.2), ("block", 0.1)]

# The targets and what it measured before (the README's numbers for the old code).
TARGETS = {
    "submissions_per_s": (">= 300/s", lambda v: v >= 300),
    "notifications_per_s": (">= 1,000/s", lambda v: v >= 1000),
    "notify_p95_ms": ("<= 50 ms", lambda v: v <= 50),
    "decisions_per_s": (">= 1.5 x 210-233/s", lambda v: v >= 1.5 * 233),
    "lock_wait_share": ("< 5% of sessions", lambda v: v < 5),
    "sequenced_per_s": (">= 5,000/s", lambda v: v >= 5000),
    "verify_seconds": ("<= 30 s", lambda v: v <= 30),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time submission, notifications, claims and the audit sequencer end to end."
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run, to check the bench")
    parser.add_argument(
        "--baseline",
        nargs="?",
        const=BASELINE,
        metavar="REF",
        help=f"also measure the code at REF (default {BASELINE}) in a temporary worktree",
    )
    parser.add_argument("--latency-ms", type=float, default=100.0, help="IMM's answer time")
    parser.add_argument("--images", type=int, help="images waiting for submission (6000)")
    parser.add_argument("--tasks", type=int, help="tasks notified (5000)")
    parser.add_argument("--in-flight", type=int, default=32, help="concurrent notifications")
    parser.add_argument("--seconds", type=float, help="longest submission run, claim run (20)")
    parser.add_argument("--waiting", type=int, help="images waiting for review (20000)")
    parser.add_argument("--log-entries", type=int, help="audit entries verified (1,000,000)")
    parser.add_argument("--backlog", type=int, help="audit entries sequenced at once (50000)")
    parser.add_argument("--seed", type=int, default=20261201, help="random seed")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    # Internal: one measuring run in this tree (the orchestrating run starts these).
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (
        {
            "images": 300,
            "tasks": 300,
            "seconds": 4.0,
            "waiting": 2000,
            "log_entries": 20_000,
            "backlog": 5000,
        }
        if args.quick
        else {
            "images": 6000,
            "tasks": 5000,
            "seconds": 20.0,
            "waiting": 20_000,
            "log_entries": 1_000_000,
            "backlog": 50_000,
        }
    )
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.images, args.tasks, args.in_flight, args.waiting, args.backlog) < 1:
        parser.error("sizes must be positive")
    if args.seconds <= 0 or args.latency_ms < 0:
        parser.error("--seconds must be positive and --latency-ms not negative")
    return args


def scalar(query: str, params: list[Any] | None = None) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(query, params or [])
        row = cursor.fetchone()
    return row[0] if row else None


def table_exists(name: str) -> bool:
    return bool(scalar("SELECT to_regclass(%s) IS NOT NULL", [name]))


def app_module(*names: str) -> Any:
    """The first of `names` that imports: the module's place in this tree (it moved in 10)."""
    import importlib

    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise SystemExit(f"none of {', '.join(names)} exists in {ROOT}")


def make_images(count: int, *, status: str, tag: str) -> list[int]:
    """`count` image rows (no files: IMM is never asked to read them here) in `status`."""
    from django.utils import timezone

    from moderation.models import Image

    now = timezone.now()
    rows = []
    for n in range(count):
        sha = uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}-{n}").hex * 2
        rows.append(
            Image(
                file=f"images/{sha[:2]}/{sha}.png",
                sha256=sha,
                format="PNG",
                width=640,
                height=480,
                byte_size=40_000,
                original_filename=f"{tag}-{n}.png",
                status=status,
                status_changed_at=now,
            )
        )
    created = Image.objects.bulk_create(rows, batch_size=2000)
    return [image.pk for image in created]


# --- 1. Submission ----------------------------------------------------------------------------


def measure_submission(args: argparse.Namespace, env: dict[str, str], logs: Path) -> dict[str, Any]:
    from django.db import transaction
    from django.db.models import Count, Max, Min

    from moderation.models import Image, ModerationTask

    pipeline = app_module("moderation.imm.pipeline", "moderation.pipeline")
    ids = make_images(args.images, status=Image.Status.RECEIVED, tag="submit")
    with transaction.atomic():
        for pk in ids:
            pipeline.enqueue_submission(pk)
    command = SUBMIT_WORKER if has_command(ROOT, "imm_submitter") else SUBMIT_WORKER_BEFORE
    print(f"  {len(ids):,} images queued; starting {' '.join(command)}", flush=True)
    # Fresh statistics after seeding: with stale ones a claim query took 40 ms instead of 1 ms.
    vacuum_analyze(
        "moderation_image", "moderation_moderationtask", "django_tasks_database_dbtaskresult"
    )

    submitted = ModerationTask.objects.filter(image_id__in=ids, task_id__isnull=False)
    worker = Process("submit-worker", [sys.executable, *command], cwd=ROOT, env=env, logs=logs)
    try:
        wait_for("the first submission", submitted.exists, timeout=120, process=worker)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and submitted.count() < len(ids):
            worker.check()
            time.sleep(0.2)
    finally:
        worker.stop()
    span = submitted.aggregate(first=Min("submitted_at"), last=Max("submitted_at"))
    count = submitted.count()
    seconds = (span["last"] - span["first"]).total_seconds() if count > 1 else 0.0
    doubles = (
        ModerationTask.objects.filter(image_id__in=ids, task_id__isnull=False)
        .values("image_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    return {
        "images": len(ids),
        "submitted": count,
        "seconds": seconds,
        "submissions_per_s": (count - 1) / seconds if seconds else 0.0,
        "images_with_two_tasks": doubles,
    }


# --- 2. Notifications -------------------------------------------------------------------------


def envelope(task_id: str, project: str, suggestion: str, n: int) -> bytes:
    """The emulator's delivery (moderation/imm/emulator/delivery.py: envelope, task_message)."""
    categories = {"pass": [], "review": ["sexy"], "block": ["porn"]}[suggestion]
    frames = [{"Label": categories[0], "Offset": 0, "Rate": 91.5}] if categories else []
    end_ms = int(time.time() * 1000)
    message = {
        "ProjectName": project,
        "DatasetName": "",
        "RequestId": str(uuid.uuid4()).upper(),
        "StartTime": _iso_ms(end_ms - 1500),
        "EndTime": _iso_ms(end_ms),
        "UserData": "",
        "TaskType": "ImageModeration",
        "TaskId": task_id,
        "Status": "Succeeded",
        "Code": "",
        "Message": "",
        "EventSourceId": "",
        "Tags": {"image": str(n)},
        "ModerationResult": {
            "URI": f"oss://bucket/images/{n}.png",
            "Suggestion": suggestion,
            "Categories": categories,
            "Frames": {"TotalCount": 1, "BlockFrames": frames},
        },
    }
    body = {
        "id": str(uuid.uuid4()).upper(),
        "source": "acs.imm",
        "type": "imm:Task:ImageModeration",
        "subject": f"acs:imm:cn-hangzhou:1234567890123456:{project}/imm:Task:ImageModeration",
        "time": str(end_ms),
        "content": json.dumps(message, separators=(",", ":")),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _iso_ms(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


MALFORMED = [
    b"{not json",
    b'{"id":"x","source":"acs.imm","content":"{\\"Status\\":\\"Succeeded\\"}"}',  # no TaskId
    b'{"TaskId":["a list"],"TaskType":"ImageModeration"}',
    b"[]",
]


def send_all(port: int, requests: list[tuple[str, str, bytes, str]], in_flight: int) -> list:
    """POST each (kind, task, body, token) with `in_flight` senders spread over processes;
    [(kind, task, status, seconds, sent_at)]. Each sender is a thread with its connection."""
    import multiprocessing

    processes = min(4, in_flight)
    slices = [requests[n::processes] for n in range(processes)]
    threads = [in_flight // processes + (n < in_flight % processes) for n in range(processes)]
    context = multiprocessing.get_context("fork")
    with context.Pool(processes) as pool:
        parts = pool.starmap(
            _sender, [(port, part, t) for part, t in zip(slices, threads, strict=True)]
        )
    return [row for part in parts for row in part]


def _sender(port: int, requests: list[tuple[str, str, bytes, str]], threads: int) -> list:
    import http.client

    results: list[tuple[str, str, int, float, float]] = []
    lock = threading.Lock()
    work = iter(requests)

    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                break
            kind, task, body, token = item
            sent_at = time.time()
            started = time.perf_counter()
            status = post_notification(connection, body, token)
            row = (kind, task, status, time.perf_counter() - started, sent_at)
            with lock:
                results.append(row)
        connection.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def measure_notifications(args: argparse.Namespace, port: int) -> dict[str, Any]:
    from django.conf import settings
    from django.db import connections
    from django.db.models import Count
    from django.utils import timezone

    from moderation.models import AuditEntry, Image, ModerationResult, ModerationTask

    rng = random.Random(args.seed)  # noqa: S311 - benchmark data, not secrets
    ids = make_images(args.tasks, status=Image.Status.SUBMITTED, tag="notify")
    now = timezone.now()
    tasks = ModerationTask.objects.bulk_create(
        [
            ModerationTask(
                image_id=pk,
                submission_key=uuid.uuid4().hex,
                task_id=f"ImageModeration-{uuid.uuid4()}",
                state=ModerationTask.State.RUNNING,
                scenes=["porn", "terrorism", "ad"],
                submitted_at=now,
                next_poll_at=now + timedelta(days=1),
            )
            for pk in ids
        ],
        batch_size=2000,
    )
    verdicts: dict[str, str] = {}
    requests: list[tuple[str, str, bytes, str]] = []
    for n, task in enumerate(tasks):
        suggestion = _weighted(rng, VERDICTS)
        verdicts[task.task_id] = suggestion
        body = envelope(task.task_id, settings.IMM_PROJECT, suggestion, n)
        requests.append(("valid", task.task_id, body, NOTIFY_TOKEN))
        if rng.random() < 0.25:
            requests.append(("duplicate", task.task_id, body, NOTIFY_TOKEN))
        if rng.random() < 0.1:
            requests.append(("forged", task.task_id, body, "forged-" + NOTIFY_TOKEN))
        if rng.random() < 0.1:
            requests.append(("malformed", "", rng.choice(MALFORMED), NOTIFY_TOKEN))
    rng.shuffle(requests)
    kinds = Counter(kind for kind, *_ in requests)
    print(
        f"  {len(requests):,} requests ({', '.join(f'{n:,} {k}' for k, n in kinds.items())}), "
        f"{args.in_flight} in flight ({load()})",
        flush=True,
    )
    connections.close_all()  # the senders are forked
    started = time.perf_counter()
    results = send_all(port, requests, args.in_flight)
    elapsed = time.perf_counter() - started

    expected = {
        "valid": (200, 201, 202),
        "duplicate": (200, 201, 202),
        "forged": (401, 403),
        "malformed": (400,),
    }
    wrong = Counter(
        f"{kind} answered {status or 'no answer'}"
        for kind, _, status, _, _ in results
        if status not in expected[kind]
    )
    accepted = [row for row in results if 200 <= row[2] < 300]
    times = [row[3] for row in results]
    first_sent: dict[str, float] = {}
    for kind, task_id, status, _, sent_at in results:
        if kind in ("valid", "duplicate") and 200 <= status < 300:
            first_sent[task_id] = min(first_sent.get(task_id, sent_at), sent_at)

    # Drained: nothing waits in the inbox (when there is one) and every image has moved.
    inbox = table_exists(INBOX_TABLE)
    routed = Image.objects.filter(pk__in=ids).exclude(status=Image.Status.SUBMITTED)
    deadline = time.monotonic() + max(120.0, args.tasks / 20)
    drain_started = time.perf_counter()
    waiting_sql = f"SELECT count(*) FROM {INBOX_TABLE} WHERE applied_at IS NULL"  # noqa: S608
    while time.monotonic() < deadline:
        waiting = scalar(waiting_sql) if inbox else 0
        if not waiting and routed.count() == len(ids):
            break
        time.sleep(0.2)
    drained = time.perf_counter() - drain_started

    recorded = Counter(
        dict(
            ModerationResult.objects.filter(imm_task_id__in=verdicts)
            .values_list("imm_task_id")
            .annotate(n=Count("id"))
        )
    )
    routed_entries = Counter(
        dict(
            AuditEntry.objects.filter(image_id__in=ids, action="imm.routed")
            .values_list("image_id")
            .annotate(n=Count("id"))
        )
    )
    by_task = {t.task_id: t.image_id for t in tasks}
    images = {
        pk: (status, changed)
        for pk, status, changed in Image.objects.filter(pk__in=ids).values_list(
            "pk", "status", "status_changed_at"
        )
    }
    misrouted = sum(
        1 for task_id, s in verdicts.items() if images[by_task[task_id]][0] != ROUTES[s]
    )
    latencies = [
        images[by_task[task_id]][1].timestamp() - sent
        for task_id, sent in first_sent.items()
        if images[by_task[task_id]][0] != Image.Status.SUBMITTED
    ]
    return {
        "requests": len(results),
        "kinds": dict(kinds),
        "seconds": elapsed,
        "requests_per_s": len(results) / elapsed,
        "notifications_per_s": len(accepted) / elapsed,
        "notify_p50_ms": pct(times, 50) * 1000,
        "notify_p95_ms": pct(times, 95) * 1000,
        "unexpected_answers": dict(wrong),
        "inbox": inbox,
        "drained_after_s": drained,
        "tasks": len(verdicts),
        "recorded_once": sum(1 for t in verdicts if recorded[t] == 1),
        "recorded_twice_or_more": sum(1 for t in verdicts if recorded[t] > 1),
        "not_recorded": sum(1 for t in verdicts if recorded[t] == 0),
        "routed_once": sum(1 for pk in ids if routed_entries[pk] == 1),
        "routed_twice_or_more": sum(1 for pk in ids if routed_entries[pk] > 1),
        "misrouted": misrouted,
        "routed_p50_ms": pct(latencies, 50) * 1000 if latencies else None,
        "routed_p95_ms": pct(latencies, 95) * 1000 if latencies else None,
    }


# --- 3. Claims --------------------------------------------------------------------------------


def measure_claims(args: argparse.Namespace, who: Any) -> dict[str, Any]:
    from bench.common import claims

    vacuum_claims()
    run: ClaimRun = claims(
        who, seconds=args.seconds, seed=args.seed, think=0.0, processes=REVIEWER_PROCESSES
    )
    sampled = sum(run.waits.values())
    locked = sum(n for what, n in run.waits.items() if what.startswith("waiting for"))
    return {
        "decisions": run.decisions,
        "seconds": run.elapsed,
        "decisions_per_s": run.decisions / run.elapsed if run.elapsed else 0.0,
        "claim_decide_p50_ms": pct(run.samples, 50) * 1000 if run.samples else None,
        "claim_decide_p95_ms": pct(run.samples, 95) * 1000 if run.samples else None,
        "lock_wait_share": 100 * locked / sampled if sampled else 0.0,
        "waits": {what: 100 * n / sampled for what, n in run.waits.most_common(6)}
        if sampled
        else {},
        "double_assignments": run.doubles_held + run.doubles_decided,
        "errors": dict(run.errors),
    }


# --- 4. Sequencer -----------------------------------------------------------------------------


def timed_command(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a manage.py command of this tree: (seconds, peak memory in MB, its output)."""
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - the bench's own commands
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(command)} failed:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, output


def grow_log(entries: int) -> int:
    """Add `entries` entries waiting for a position, copies of the positioned ones (their
    content and columns agree, so verification reads them as any other); how many it added."""
    from django.db import connection, transaction

    from moderation.models import AuditEntry

    columns = ", ".join(
        f.column
        for f in AuditEntry._meta.concrete_fields
        if f.name not in ("id", "seq", "leaf_hash")
    )
    table = AuditEntry._meta.db_table
    source = scalar(f"SELECT count(*) FROM {table} WHERE seq IS NOT NULL")  # noqa: S608
    if not source:
        raise SystemExit("the audit log has no positioned entry to copy")
    added = 0
    with transaction.atomic(), connection.cursor() as cursor:
        while added < entries:
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table} "  # noqa: S608
                "WHERE seq IS NOT NULL ORDER BY seq LIMIT %s",
                [min(entries - added, source)],
            )
            added += cursor.rowcount
    return added


def measure_sequencer(
    args: argparse.Namespace, env: dict[str, str], keys: dict[str, str]
) -> dict[str, Any]:
    """The sequencer over a backlog, verify_audit over --log-entries entries, one receipt."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from moderation.models import AuditEntry

    if not has_command(ROOT, "audit_sequencer"):
        return {"skipped": f"this code ({git_commit(ROOT)}) has no manage.py audit_sequencer"}
    sequencer = ["audit_sequencer", "--once"]
    timed_command(sequencer, env)  # whatever the other sections left waiting
    idle, _, _ = timed_command(sequencer, env)  # start-up and one empty batch

    added = grow_log(args.backlog)
    seconds, _, _ = timed_command(sequencer, env)
    backlog_rate = added / max(seconds - idle, 1e-9)
    print(f"  {added:,} entries sequenced in {seconds - idle:.2f} s ({load()})", flush=True)
    small = AuditEntry.objects.count()
    small_seconds, small_mb, _ = timed_command(["verify_audit"], env)
    print(
        f"  verify_audit over {small:,} entries: {small_seconds:.1f} s, {small_mb:.0f} MB",
        flush=True,
    )

    grown = grow_log(max(0, args.log_entries - AuditEntry.objects.count()))
    large_rate = None
    if grown:
        seconds, _, _ = timed_command(sequencer, env)
        large_rate = grown / max(seconds - idle, 1e-9)
        print(
            f"  {grown:,} more entries sequenced in {seconds - idle:.1f} s ({load()})", flush=True
        )
    large = AuditEntry.objects.count()
    large_seconds, large_mb, output = timed_command(["verify_audit"], env)
    print(
        f"  verify_audit over {large:,} entries: {large_seconds:.1f} s, {large_mb:.0f} MB",
        flush=True,
    )

    admin = get_user_model().objects.get(username="bench-admin")
    client = Client(HTTP_HOST="localhost")
    client.force_login(admin)
    seq = large // 2
    entry = client.get(reverse("audit_entry", args=[seq]))
    proof = client.get(reverse("audit_entry_proof", args=[seq]))
    if entry.status_code != 200 or proof.status_code != 200:
        raise SystemExit(f"entry {seq}: {entry.status_code}, proof {proof.status_code}")
    folder = Path(tempfile.mkdtemp(prefix="bench-receipt-"))
    (folder / "entry").write_bytes(entry.content)
    (folder / "proof").write_bytes(proof.content)
    verifier = [
        sys.executable,
        "-m",
        "moderation.audit.receipt",
        str(folder / "entry"),
        str(folder / "proof"),
        keys["verifier"],
    ]
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run(verifier, cwd=ROOT, env=env, check=True, capture_output=True)  # noqa: S603
        runs.append(time.perf_counter() - started)
    return {
        "backlog": added,
        "sequenced_per_s": backlog_rate,
        "grown_to": large,
        "sequenced_large_per_s": large_rate,
        "verify_small_entries": small,
        "verify_small_seconds": small_seconds,
        "verify_small_mb": small_mb,
        "verify_entries": large,
        "verify_seconds": large_seconds,
        "verify_peak_mb": large_mb,
        "verify_output": output.strip().splitlines()[:1],
        "receipt_bytes": len(proof.content),
        "receipt_verify_ms": min(runs) * 1000,
    }


# --- One run ----------------------------------------------------------------------------------


@contextmanager
def production_set(env: dict[str, str], logs: Path, args: argparse.Namespace) -> Iterator[dict]:
    """The emulator (from --emulator-root), gunicorn, the poller and the sequencer (when this
    code has one) running; yields {"web": port, "sequencer": Process | None}."""
    emulator_port, web_port = free_port(), free_port()
    env["IMM_EMULATOR_PORT"] = str(emulator_port)
    started: list[Process] = []
    try:
        emulator = Process(
            "imm-emulator",
            [
                sys.executable,
                "manage.py",
                "imm_emulator",
                "--port",
                str(emulator_port),
                "--latency-ms",
                f"{args.latency_ms:g}",
                "--delay",
                "86400",
                "--notify-url",
                "",
                "--state",
                ":memory:",  # a file store costs about 1 ms a create, one at a time
            ],
            cwd=args.emulator_root,
            env=env,
            logs=logs,
        )
        started.append(emulator)
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        web = Process(
            "gunicorn",
            [
                gunicorn,
                "moderation.wsgi",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                str(WEB_WORKERS),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            logs=logs,
        )
        started.append(web)
        poller = Process(
            "poller", [sys.executable, "manage.py", "imm_poller"], cwd=ROOT, env=env, logs=logs
        )
        started.append(poller)
        if "--inbox-only" in (ROOT / "moderation/management/commands/imm_poller.py").read_text():
            # A second applier, as Procfile.serve runs it.
            applier = Process(
                "inbox",
                [sys.executable, "manage.py", "imm_poller", "--inbox-only"],
                cwd=ROOT,
                env=env,
                logs=logs,
            )
            started.append(applier)
        sequencer = None
        if has_command(ROOT, "audit_sequencer"):
            sequencer = Process(
                "sequencer",
                [sys.executable, "manage.py", "audit_sequencer"],
                cwd=ROOT,
                env=env,
                logs=logs,
            )
            started.append(sequencer)
        wait_for("the emulator", lambda: answers(emulator_port, "/"), timeout=60, process=emulator)
        wait_for("gunicorn", lambda: answers(web_port), timeout=60, process=web)
        yield {"web": web_port, "sequencer": sequencer, "processes": started}
    finally:
        for process in reversed(started):
            process.stop()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every section, on this tree's code, against DATABASE_URL (dropped and made again)."""
    config = require_postgres(
        "bench/pipeline.py", "DATABASE_URL=postgres://... make bench-pipeline"
    )
    recreate_database(config, mark=DB_MARK, script="bench/pipeline.py")
    logs = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECURE_COOKIES": "0",
        "IMM_NOTIFY_TOKEN": NOTIFY_TOKEN,
        "IMM_POLL_AFTER": "86400",  # the bench delivers every result itself
        "IMM_MAX_QPS": os.environ.get("IMM_MAX_QPS", "10000"),
        "MEDIA_ROOT": str(logs / "media"),
        "STATIC_ROOT": str(logs / "static"),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("IMM_ENDPOINT", None)
    os.environ.update(env)
    keys = {}
    if has_command(ROOT, "audit_keygen"):
        # The sequencer signs checkpoints; a key of this run's own.
        made = subprocess.run(
            [sys.executable, "manage.py", "audit_keygen", "bench.invalid/audit"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        keys["signing"] = made.stdout.strip()
        keys["verifier"] = made.stderr.strip().rpartition(": ")[2]
        env["AUDIT_SIGNING_KEY"] = os.environ["AUDIT_SIGNING_KEY"] = keys["signing"]

    import django

    django.setup()
    from django.core.management import call_command

    commit = git_commit(ROOT)
    print(f"\n=== {commit} ({ROOT})")
    for line in machine_info():
        print(line)
    call_command("migrate", interactive=False, verbosity=0)
    rng = random.Random(args.seed)  # noqa: S311 - benchmark data, not secrets
    who = people(REVIEWERS)
    seed(args.waiting, args.waiting, [u.pk for u in who.uploaders], rng)
    results: dict[str, Any] = {"commit": commit, "logs": str(logs)}
    with production_set(env, logs, args) as running:
        print(f"\n1. Submission at {args.latency_ms:g} ms IMM latency ({load()})", flush=True)
        results["submission"] = measure_submission(args, env, logs)
        print(f"   {results['submission']}", flush=True)
        print(f"\n2. Notifications through gunicorn ({load()})", flush=True)
        results["notifications"] = measure_notifications(args, running["web"])
        print(f"   {results['notifications']}", flush=True)
        print(
            f"\n3. Claim + decide, {REVIEWERS} reviewers in {REVIEWER_PROCESSES} processes "
            f"({load()})",
            flush=True,
        )
        results["claims"] = measure_claims(args, who)
        print(f"   {results['claims']}", flush=True)
        for process in running["processes"]:
            process.check()
    print(f"\n4. Audit sequencer ({load()})", flush=True)
    results["sequencer"] = measure_sequencer(args, env, keys)
    print(f"   {results['sequencer']}", flush=True)
    return results


# --- Orchestration and report -----------------------------------------------------------------


@contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """REF's code in a temporary git worktree, with this tree's bench/ copied over its own."""
    place = Path(tempfile.mkdtemp(prefix="bench-baseline-")) / "tree"
    subprocess.run(  # noqa: S603 - git on this repository
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(place), ref],  # noqa: S607
        check=True,
    )
    try:
        shutil.rmtree(place / "bench", ignore_errors=True)
        shutil.copytree(
            ROOT / "bench", place / "bench", ignore=shutil.ignore_patterns("__pycache__")
        )
        yield place
    finally:
        subprocess.run(  # noqa: S603 - git on this repository
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(place)],  # noqa: S607
            check=False,
        )
        shutil.rmtree(place.parent, ignore_errors=True)


def run_in(tree: Path, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measuring run of `tree`'s code (a process of its own); its results."""
    out = Path(tempfile.mkstemp(prefix="bench-pipeline-", suffix=".json")[1])
    options = [
        "--latency-ms",
        "images",
        "tasks",
        "in-flight",
        "seconds",
        "waiting",
        "log-entries",
        "backlog",
        "seed",
    ]
    passed = []
    for option in options:
        name = option.removeprefix("--")
        passed += [f"--{name}", str(getattr(args, name.replace("-", "_")))]
    command = [
        sys.executable,
        str(tree / "bench" / "pipeline.py"),
        *passed,
        "--measure",
        "--emulator-root",
        str(ROOT),
        "--json",
        str(out),
    ]
    env = {**os.environ, "DATABASE_URL": database_url}
    try:
        subprocess.run(command, cwd=tree, env=env, check=True)  # noqa: S603
        return json.loads(out.read_text())
    finally:
        out.unlink()


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def report(runs: list[tuple[str, dict[str, Any]]]) -> None:
    def value(results: dict[str, Any], section: str, key: str) -> Any:
        return results.get(section, {}).get(key)

    rows = [
        ("submissions/s, one worker, IMM 100 ms", "submission", "submissions_per_s", "{:.0f}"),
        (
            "notifications/s accepted, 32 in flight",
            "notifications",
            "notifications_per_s",
            "{:.0f}",
        ),
        ("  answer time p50 (ms)", "notifications", "notify_p50_ms", "{:.1f}"),
        ("  answer time p95 (ms)", "notifications", "notify_p95_ms", "{:.1f}"),
        ("  unexpected answers", "notifications", "unexpected_answers", "{}"),
        ("  tasks recorded once", "notifications", "recorded_once", "{}"),
        ("  images routed once", "notifications", "routed_once", "{}"),
        ("  routed to the wrong state", "notifications", "misrouted", "{}"),
        ("  arrival to routed p50 (ms)", "notifications", "routed_p50_ms", "{:.0f}"),
        ("  arrival to routed p95 (ms)", "notifications", "routed_p95_ms", "{:.0f}"),
        ("decisions/s, 16 reviewers, 4 processes", "claims", "decisions_per_s", "{:.0f}"),
        ("  sessions waiting for a lock (%)", "claims", "lock_wait_share", "{:.1f}"),
        ("  claim+decide p95 (ms)", "claims", "claim_decide_p95_ms", "{:.0f}"),
        ("  double assignments", "claims", "double_assignments", "{}"),
        ("audit entries sequenced/s (--backlog)", "sequencer", "sequenced_per_s", "{:.0f}"),
        ("  ... growing to --log-entries", "sequencer", "sequenced_large_per_s", "{:.0f}"),
        ("verify_audit over --log-entries (s)", "sequencer", "verify_seconds", "{:.1f}"),
        ("  its peak memory (MB)", "sequencer", "verify_peak_mb", "{:.0f}"),
        ("  verify_audit at the backlog size (s)", "sequencer", "verify_small_seconds", "{:.1f}"),
        ("  its peak memory (MB)", "sequencer", "verify_small_mb", "{:.0f}"),
        ("receipt size (bytes)", "sequencer", "receipt_bytes", "{}"),
        ("receipt verification, own process (ms)", "sequencer", "receipt_verify_ms", "{:.0f}"),
    ]
    width = 42
    print("\n" + "=" * 100)
    header = f"{'':<{width}} {'target':<20}" + "".join(f"{label:>18}" for label, _ in runs)
    print(header)
    for label, section, key, fmt in rows:
        target = TARGETS.get(key, ("", None))[0]
        cells = []
        for _, results in runs:
            v = value(results, section, key)
            if isinstance(results.get(section), dict) and "skipped" in results[section]:
                cells.append("n/a")
            elif v is None:
                cells.append("-")
            elif isinstance(v, dict):
                cells.append(", ".join(f"{k}: {n}" for k, n in v.items()) or "none")
            else:
                cells.append(fmt.format(v))
        print(f"{label:<{width}} {target:<20}" + "".join(f"{c:>18}" for c in cells))
    print()
    for label, results in runs:
        for section in ("submission", "notifications", "claims", "sequencer"):
            part = results.get(section, {})
            if "skipped" in part:
                print(f"{label}: {section} skipped: {part['skipped']}")
        tasks = value(results, "notifications", "tasks")
        if tasks:
            print(
                f"{label}: {tasks:,} tasks notified; every recorded once: "
                f"{value(results, 'notifications', 'recorded_once') == tasks}, every routed "
                f"once: {value(results, 'notifications', 'routed_once') == tasks}"
            )
        waits = value(results, "claims", "waits") or {}
        if waits:
            print(
                f"{label}: reviewer sessions: "
                + "; ".join(f"{share:.1f}% {what}" for what, share in waits.items())
            )
        print(f"{label}: process logs in {results.get('logs')}")


def main() -> None:
    # Set before Django is imported (in this process and the ones it starts): DEBUG keeps every
    # query in memory.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moderation.settings")
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret-" + "x" * 40)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    args = parse_args()
    if args.measure:
        results = measure(args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        return
    config = require_postgres(
        "bench/pipeline.py",
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_bench_pipeline "
        "make bench-pipeline",
    )
    url = os.environ["DATABASE_URL"]
    print("bench/pipeline.py: submission, notifications, claims and the audit log, end to end")
    runs: list[tuple[str, dict[str, Any]]] = []
    if args.baseline:
        with baseline_tree(args.baseline) as tree:
            label = f"before ({git_commit(tree)[:7]})"
            runs.append(
                (label, run_in(tree, with_database(url, f"{config['NAME']}_baseline"), args))
            )
    runs.append((f"now ({git_commit(ROOT)[:7]})", run_in(ROOT, url, args)))
    report(runs)
    if args.json:
        args.json.write_text(json.dumps(dict(runs), indent=2, default=str))


if __name__ == "__main__":
    main()
