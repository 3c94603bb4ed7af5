"""Soak under faults: `python bench/soak.py` (DATABASE_URL: a PostgreSQL database of its own).

Runs the processes of `make serve` (the lines of Procfile.serve: gunicorn with 4 workers, two
task workers, the poller, the audit sequencer, the IMM emulator) for --minutes (10) and keeps
them busy at once:
- --reviewers (32) reviewers signed in through the sign-in page, each claiming and deciding
  through the review pages (POST /reviews/next/, then /reviews/<id>/decide/) back to back;
- notifications at --notify-rate (500) a second through /imm/notifications/, 20% of them
  delivered twice, for tasks made beforehand;
- uploads through the upload page (--upload-rate a second), which the task workers submit to
  the emulator and the emulator notifies back;
- every --kill-every (60) seconds a `kill -9` of one of: a task worker, the sequencer, a gunicorn
  worker, the poller, the webhook deliverer, in turn. This script is their supervisor (honcho,
  which `make serve` uses, stops everything when one process ends): it starts each again within
  a second, and gunicorn's master starts its killed worker again itself;
- one webhook endpoint: a receiver in this script that verifies every signature.
Then it stops the load, waits for the work to drain (the inbox applied, the uploads routed, the
log sequenced, the webhooks delivered) and checks, printing each: every upload has exactly one
IMM task (in the database and at the emulator), every notified task has one result and was
routed once, every decision has its audit entry, every outcome event reached the receiver
(at least once, signed), no audit entry is left without a position, `verify_audit` passes, and
no request got a 5xx, nor lost its connection other than to a gunicorn worker's kill. Exits 1 if
one fails.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_soak python bench/soak.py
    ... bench/soak.py --minutes 2 --kill-every 20 --notify-rate 100 --reviewers 8   # shorter
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path is set
    Process,
    answers,
    free_port,
    has_command,
    load,
    machine_info,
    post_notification,
    recreate_database,
    require_postgres,
    seed,
    wait_for,
)
from bench.pipeline import INBOX_TABLE, ROUTES, envelope, make_images, scalar  # noqa: E402

DB_MARK = "bench/soak.py database"
NOTIFY_TOKEN = "soak-notify-token"  # noqa: S105 - the soak's own shared secret
VICTIMS = ["worker", "sequencer", "web", "poller", "webhooks"]
TASK_WORKERS = 2
UPLOAD_PREFIX = "soak-upload-"
# After a gunicorn worker's kill, a lost connection within this many seconds was cut by it.
CUT_WINDOW = 5.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The production set under load and kill -9.")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--reviewers", type=int, default=32)
    parser.add_argument("--notify-rate", type=float, default=500.0, help="notifications a second")
    parser.add_argument("--upload-rate", type=float, default=2.0, help="uploads a second")
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="give up draining after this many seconds without progress",
    )
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args()
    if min(args.minutes, args.notify_rate, args.upload_rate, args.kill_every) <= 0:
        parser.error("--minutes, the rates and --kill-every must be positive")
    if args.reviewers < 1:
        parser.error("--reviewers must be at least 1")
    return args


# --- The supervised set ------------------------------------------------------------------------


class Supervisor:
    """Procfile.serve's processes, each started again when it dies (checked twice a second)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.lines: dict[str, str] = {}
        self.processes: dict[str, Process] = {}
        self.restarts: Counter[str] = Counter()
        self.skipped: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        from django.core.management import get_commands

        for line in (ROOT / "Procfile.serve").read_text().splitlines():
            if not line.strip():
                continue
            kind, command = line.split(": ", 1)
            named = re.search(r"manage\.py (\w+)", command)
            if named and named[1] not in get_commands():
                self.skipped.append(f"{kind} (this code has no manage.py {named[1]})")
                continue
            copies = TASK_WORKERS if kind == "worker" else 1
            for n in range(1, copies + 1):
                self.lines[f"{kind}.{n}"] = command

    def start(self) -> None:
        for name in self.lines:
            self._start(name)
        self._thread.start()

    def _start(self, name: str) -> None:
        # exec: the process killed is the program itself, not a shell around it.
        command = ["sh", "-c", f"exec {self.lines[name]}"]
        self.processes[name] = Process(name, command, cwd=ROOT, env=self.env, logs=self.logs)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for name, process in list(self.processes.items()):
                    if not process.running():
                        self.restarts[name] += 1
                        self._start(name)

    def pid_of(self, kind: str, rng: random.Random) -> tuple[str, int] | None:
        """A process of this kind to kill: for "web", one of gunicorn's workers."""
        with self._lock:
            names = [name for name in self.processes if name.split(".")[0] == kind]
            if kind == "web":
                if not names:
                    return None
                master = self.processes[names[0]].popen.pid
                children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
                return (
                    (f"gunicorn worker of {names[0]}", int(rng.choice(children)))
                    if children
                    else None
                )
            if not names:
                return None
            name = rng.choice(names)
            return name, self.processes[name].popen.pid

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for process in self.processes.values():
            process.stop()


# --- Load -------------------------------------------------------------------------------------


@dataclass
class Log:
    """Every request's outcome: (what, status or 0 for a lost connection, when)."""

    rows: list[tuple[str, int, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, status: int) -> None:
        with self.lock:
            self.rows.append((what, status, time.time()))


def session(base: str, username: str, password: str) -> Any:
    """An httpx client signed in through the sign-in page (cookies, CSRF as a browser has)."""
    import httpx

    client = httpx.Client(base_url=base, timeout=60, follow_redirects=False)
    client.get("/accounts/login/")
    answer = client.post(
        "/accounts/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
    )
    if answer.status_code != 302:
        raise SystemExit(f"{username} could not sign in: {answer.status_code}")
    return client


def post(client: Any, log: Log, what: str, url: str, **kwargs: Any) -> Any:
    import httpx

    headers = {"X-CSRFToken": client.cookies.get("csrftoken", "")}
    try:
        answer = client.post(url, headers=headers, **kwargs)
    except httpx.TransportError:
        log.add(what, 0)
        return None
    log.add(what, answer.status_code)
    return answer


def reviewer(
    base: str, username: str, password: str, stop: threading.Event, log: Log, decided: Counter[str]
) -> None:
    rng = random.Random(username)  # noqa: S311 - load, not secrets
    client = session(base, username, password)
    here = None
    while not stop.is_set():
        if here is None:
            answer = post(client, log, "claim", "/reviews/next/")
        else:
            reject = rng.random() < 0.2
            data = {"action": "reject", "reason": "soak"} if reject else {"action": "approve"}
            answer = post(client, log, "decide", f"/reviews/{here}/decide/", data=data)
            if answer is not None and answer.status_code == 302:
                decided[username] += 1
        if answer is None or answer.status_code >= 500:
            here = None
            time.sleep(0.2)
            continue
        found = re.fullmatch(r"/reviews/(\d+)/", answer.headers.get("location", ""))
        here = found[1] if found else None
        if here is None:
            time.sleep(0.5)  # nothing waiting, or refused: ask again shortly


def uploader(
    base: str,
    username: str,
    password: str,
    rate: float,
    stop: threading.Event,
    log: Log,
    uploaded: list[str],
) -> None:
    from PIL import Image as PILImage

    client = session(base, username, password)
    n = 0
    while not stop.wait(1 / rate):
        n += 1
        picture = PILImage.new("RGB", (320, 240), tuple(random.randrange(256) for _ in range(3)))  # noqa: S311
        picture.putpixel((n % 320, n // 320 % 240), (n % 256, n // 256 % 256, 7))
        data = io.BytesIO()
        picture.save(data, "PNG")
        name = f"{UPLOAD_PREFIX}{n:06d}.png"
        answer = post(
            client,
            log,
            "upload",
            "/images/upload/",
            files={"files": (name, data.getvalue(), "image/png")},
        )
        if answer is not None and answer.status_code == 200:
            uploaded.append(name)


def notifier(
    port: int, bodies: list[tuple[str, bytes]], rate: float, threads: int, until: float
) -> list:
    """POST the bodies at `rate` a second in this process until the epoch time `until` (a server
    slower than the rate is not given more time: what was not sent by then is not sent);
    [(task, status, when)]."""
    import http.client

    results: list[tuple[str, int, float]] = []
    lock = threading.Lock()
    work = iter(enumerate(bodies))
    started = time.monotonic()

    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                item = next(work, None) if time.time() < until else None
            if item is None:
                break
            n, (task_id, body) = item
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            status = post_notification(connection, body, NOTIFY_TOKEN)
            with lock:
                results.append((task_id, status, time.time()))
        connection.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


# --- Checks -----------------------------------------------------------------------------------


def webhook_receiver() -> Any:
    """A receiver in this process that verifies every signature (bench/webhook_delivery.py's),
    registered as the one webhook endpoint; None when this code has no webhooks."""
    from django.core.management import get_commands

    if "deliver_webhooks" not in get_commands():
        return None
    from standardwebhooks.webhooks import Webhook

    from bench.webhook_delivery import Receiver
    from moderation.webhooks import services, signing

    receiver = Receiver({})
    endpoint = services.add_endpoint(url=receiver.url("/soak"), actor=None).endpoint
    receiver.verifiers["/soak"] = Webhook(signing.secret(endpoint))
    receiver.ids["/soak"] = Counter()
    return receiver


def pending_deliveries() -> int:
    from django.apps import apps

    if not apps.is_installed("moderation.webhooks"):
        return 0
    from moderation.webhooks.models import Delivery

    return Delivery.objects.filter(state=Delivery.State.PENDING).count()


def drain(args: argparse.Namespace, supervisor: Supervisor, sequencer: bool) -> list[str]:
    """Wait until the work left is done; what was still waiting at the timeout."""
    from moderation.models import AuditEntry, Image

    uploads = Image.objects.filter(original_filename__startswith=UPLOAD_PREFIX)
    checks = {
        "uploads not yet routed": lambda: uploads.filter(
            status__in=[Image.Status.RECEIVED, Image.Status.SUBMITTED]
        ).count(),
        "inbox messages not applied": lambda: (
            scalar(f"SELECT count(*) FROM {INBOX_TABLE} WHERE applied_at IS NULL")  # noqa: S608
            if scalar("SELECT to_regclass(%s) IS NOT NULL", [INBOX_TABLE])
            else 0
        ),
        "audit entries without a position": lambda: (
            AuditEntry.objects.filter(seq__isnull=True).count() if sequencer else 0
        ),
        "webhook deliveries not yet delivered": pending_deliveries,
    }
    # The inbox may hold minutes of work when notifications arrive faster than they are applied:
    # wait as long as the work left keeps shrinking, and give up only when it stalls.
    started = last_report = time.monotonic()
    best: int | None = None
    progressed = started
    while True:
        left = {what: count() for what, count in checks.items()}
        total = sum(left.values())
        if not total:
            print(f"  drained in {time.monotonic() - started:.0f} s", flush=True)
            return []
        now = time.monotonic()
        if best is None or total < best:
            best, progressed = total, now
        if now - progressed > args.drain_timeout:
            return [f"{n:,} {what}" for what, n in left.items() if n]
        if now - last_report > 30:
            last_report = now
            waiting = ", ".join(f"{n:,} {what}" for what, n in left.items() if n)
            print(f"  draining, {now - started:.0f} s: {waiting}", flush=True)
        time.sleep(1)


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moderation.settings")
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "soak-only-not-a-secret-" + "x" * 40)
    args = parse_args()
    config = require_postgres(
        "bench/soak.py",
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_soak python bench/soak.py",
    )
    recreate_database(config, mark=DB_MARK, script="bench/soak.py")
    logs = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    port, emulator_port = free_port(), free_port()
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECURE_COOKIES": "0",
        "PORT": str(port),
        "WEB_CONCURRENCY": "4",
        "IMM_NOTIFY_TOKEN": NOTIFY_TOKEN,
        "IMM_EMULATOR_PORT": str(emulator_port),
        "IMM_EMULATOR_NOTIFY_URL": f"http://127.0.0.1:{port}/imm/notifications/",
        "IMM_EMULATOR_DELAY": "1",
        "IMM_EMULATOR_STATE": str(logs / "imm.sqlite3"),
        # Webhooks go to a receiver in this process (see below), which verifies every signature.
        "WEBHOOK_SECRET_KEY": secrets.token_urlsafe(48),
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "MEDIA_ROOT": str(logs / "media"),
        "STATIC_ROOT": str(logs / "static"),
        "LOG_LEVEL": "WARNING",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("IMM_ENDPOINT", None)
    if has_command(ROOT, "audit_keygen") and not env.get("AUDIT_SIGNING_KEY"):
        import subprocess

        env["AUDIT_SIGNING_KEY"] = subprocess.run(
            [sys.executable, "manage.py", "audit_keygen", "soak.invalid/audit"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    os.environ.update(env)

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections
    from django.utils import timezone

    from moderation.accounts import create_user
    from moderation.models import AuditEntry, Image, ModerationResult, ModerationTask

    print(
        "bench/soak.py: the production set under load, with kill -9 every "
        f"{args.kill_every:g} s, for {args.minutes:g} minutes"
    )
    for line in machine_info():
        print(line)
    call_command("migrate", interactive=False, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    hooks = webhook_receiver()
    rng = random.Random(args.seed)  # noqa: S311 - load, not secrets
    password = secrets.token_urlsafe(16)
    users = [
        create_user(
            username=f"soak-reviewer-{n:02d}", role="reviewer", password=password, validate=False
        )
        for n in range(1, args.reviewers + 1)
    ]
    admin = create_user(username="soak-admin", role="admin", password=password, validate=False)
    seconds = args.minutes * 60
    waiting = int(args.reviewers * 10 * seconds)  # more than 32 reviewers can decide
    seed(min(waiting, 200_000), min(waiting, 200_000), [admin.pk], rng)
    # Notified tasks: one delivery each at the rate, one in five sent twice.
    unique = int(args.notify_rate * seconds / 1.2)
    ids = make_images(unique, status=Image.Status.SUBMITTED, tag="soak-notify")
    now = timezone.now()
    tasks = ModerationTask.objects.bulk_create(
        [
            ModerationTask(
                image_id=pk,
                submission_key=secrets.token_hex(16),
                task_id=f"ImageModeration-soak-{n}-{secrets.token_hex(8)}",
                state=ModerationTask.State.RUNNING,
                submitted_at=now,
                next_poll_at=now + timedelta(days=1),
            )
            for n, pk in enumerate(ids)
        ],
        batch_size=2000,
    )
    verdicts = {task.task_id: rng.choice(list(ROUTES)) for task in tasks}
    bodies = []
    for n, task in enumerate(tasks):
        body = envelope(task.task_id, django.conf.settings.IMM_PROJECT, verdicts[task.task_id], n)
        bodies.append((task.task_id, body))
        if rng.random() < 0.2:
            bodies.insert(
                rng.randrange(max(1, len(bodies) - 50), len(bodies) + 1), (task.task_id, body)
            )
    print(
        f"Seeded {min(waiting, 200_000):,} images waiting for review and {unique:,} running "
        f"tasks ({len(bodies):,} notifications to send)",
        flush=True,
    )
    connections.close_all()

    supervisor = Supervisor(env, logs)
    for note in supervisor.skipped:
        print(f"Not started: {note}")
    supervisor.start()
    base = f"http://127.0.0.1:{port}"
    wait_for("gunicorn", lambda: answers(port), timeout=120)
    wait_for("the emulator", lambda: answers(emulator_port, "/"), timeout=120)

    import multiprocessing

    log = Log()
    stop = threading.Event()
    decided: Counter[str] = Counter()
    uploaded: list[str] = []
    threads = [
        threading.Thread(target=reviewer, args=(base, u.username, password, stop, log, decided))
        for u in users
    ]
    threads.append(
        threading.Thread(
            target=uploader,
            args=(base, admin.username, password, args.upload_rate, stop, log, uploaded),
        )
    )
    senders = 2
    context = multiprocessing.get_context("fork")
    pool = context.Pool(senders)
    pending = pool.starmap_async(
        notifier,
        [
            (port, bodies[n::senders], args.notify_rate / senders, 16, time.time() + seconds)
            for n in range(senders)
        ],
    )
    for thread in threads:
        thread.start()
    kills: list[tuple[float, str, int]] = []
    started = time.monotonic()
    turn = 0
    print(f"Load started ({load()})", flush=True)
    while time.monotonic() - started < seconds:
        time.sleep(min(args.kill_every, max(0.0, started + seconds - time.monotonic())))
        if time.monotonic() - started >= seconds:
            break
        for _ in VICTIMS:
            kind = VICTIMS[turn % len(VICTIMS)]
            turn += 1
            victim = supervisor.pid_of(kind, rng)
            if victim is not None:
                name, pid = victim
                os.kill(pid, 9)
                kills.append((time.time(), name, pid))
                print(
                    f"  {time.monotonic() - started:6.0f} s  kill -9 {name} (pid {pid})  "
                    f"({load()})",
                    flush=True,
                )
                break
    stop.set()
    for thread in threads:
        thread.join()
    sent = pending.get()
    pool.close()
    pool.join()
    print(f"Load stopped; draining ({load()})", flush=True)
    sequencer = any(name.startswith("sequencer.") for name in supervisor.lines)
    left = drain(args, supervisor, sequencer)
    supervisor.stop()

    # --- checks
    results: list[tuple[str, bool | None, str]] = []
    notified = [row for part in sent for row in part]
    for _, status, when in notified:
        log.rows.append(("notify", status, when))
    web_kills = [when for when, name, _ in kills if name.startswith("gunicorn worker")]
    errors = [row for row in log.rows if row[1] >= 500]
    lost = [row for row in log.rows if row[1] == 0]
    cut = [row for row in lost if any(0 <= row[2] - k <= CUT_WINDOW for k in web_kills)]
    results.append(("work drained", not left, "; ".join(left) or "everything applied"))
    results.append(
        (
            "no 5xx answer",
            not errors,
            f"{len(errors)} of {len(log.rows):,} requests"
            + "".join(
                f"; {what} {status} x{n}"
                for (what, status), n in Counter(
                    (what, status) for what, status, _ in errors
                ).items()
            ),
        )
    )
    results.append(
        (
            "no connection lost but to a worker's kill",
            len(cut) == len(lost),
            f"{len(lost)} lost, {len(cut)} within {CUT_WINDOW:g} s of a gunicorn worker's kill",
        )
    )

    uploads = list(
        Image.objects.filter(original_filename__startswith=UPLOAD_PREFIX).values_list(
            "pk", flat=True
        )
    )
    from django.db.models import Count

    tasks_per_upload = Counter(
        dict(
            ModerationTask.objects.filter(image_id__in=uploads, task_id__isnull=False)
            .values_list("image_id")
            .annotate(n=Count("id"))
        )
    )
    imm_tasks: Counter[str] = Counter()
    with sqlite3.connect(logs / "imm.sqlite3") as state:
        for (tags,) in state.execute("SELECT tags FROM tasks"):
            image = json.loads(tags or "{}").get("image")
            imm_tasks[image] += 1
    not_one = [pk for pk in uploads if tasks_per_upload[pk] != 1 or imm_tasks[str(pk)] != 1]
    results.append(
        (
            "every upload has exactly one IMM task",
            not not_one and bool(uploads),
            f"{len(uploads):,} uploads ({len(uploaded):,} answered 200); "
            f"{len(not_one)} without exactly one task here and at IMM",
        )
    )

    accepted = {task_id for task_id, status, _ in notified if 200 <= status < 300}
    recorded = Counter(
        dict(
            ModerationResult.objects.filter(imm_task_id__in=accepted)
            .values_list("imm_task_id")
            .annotate(n=Count("id"))
        )
    )
    by_task = dict(
        ModerationTask.objects.filter(task_id__in=accepted).values_list("task_id", "image_id")
    )
    routed = Counter(
        dict(
            AuditEntry.objects.filter(image_id__in=by_task.values(), action="imm.routed")
            .values_list("image_id")
            .annotate(n=Count("id"))
        )
    )
    wrong = [t for t in accepted if recorded[t] != 1 or routed[by_task[t]] != 1]
    results.append(
        (
            "every notification applied once",
            not wrong,
            f"{len(accepted):,} tasks notified; {len(wrong)} not recorded and routed exactly once",
        )
    )

    unaudited = scalar(
        "SELECT count(*) FROM reviews_decision d WHERE NOT EXISTS (SELECT 1 FROM "
        "moderation_auditentry a WHERE a.image_id = d.image_id AND a.actor_id = d.reviewer_id "
        "AND a.action LIKE 'review.%%')"
    )
    decisions = scalar("SELECT count(*) FROM reviews_decision")
    results.append(
        (
            "every decision has its audit entry",
            unaudited == 0 and decisions >= sum(decided.values()),
            f"{decisions:,} decisions ({sum(decided.values()):,} answered as made), "
            f"{unaudited} without an entry",
        )
    )
    if hooks is not None:
        from moderation.events.models import Event

        events = set(Event.objects.values_list("public_id", flat=True))
        got = hooks.ids["/soak"]
        missing = events - set(got)
        strangers = set(got) - events
        twice = sum(1 for n in got.values() if n > 1)
        results.append(
            (
                "every outcome event reached the webhook receiver",
                not missing and not strangers and hooks.bad_signatures == 0,
                f"{len(events):,} events, {len(missing)} never delivered, {len(strangers)} "
                f"unknown, {twice} delivered more than once (at-least-once allows it after a "
                f"kill), {hooks.bad_signatures} bad signatures",
            )
        )
        hooks.stop()
    if sequencer:
        waiting_entries = AuditEntry.objects.filter(seq__isnull=True).count()
        results.append(
            (
                "no audit entry without a position",
                waiting_entries == 0,
                f"{waiting_entries} waiting",
            )
        )
    else:
        results.append(("no audit entry without a position", None, "this code has no sequencer"))
    import subprocess

    verified = subprocess.run(
        [sys.executable, "manage.py", "verify_audit"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    results.append(
        (
            "verify_audit passes",
            verified.returncode == 0,
            (verified.stdout + verified.stderr).strip().splitlines()[0],
        )
    )

    print()
    print(f"{len(kills)} kills: " + ", ".join(f"{name}" for _, name, _ in kills))
    print(
        "Restarts by the supervisor: "
        + (", ".join(f"{k} x{n}" for k, n in supervisor.restarts.items()) or "none")
    )
    rate = sum(1 for _, s, _ in notified if 200 <= s < 300) / seconds
    print(
        f"Requests: {len(log.rows):,} ({Counter(w for w, _, _ in log.rows)}); notifications "
        f"accepted {rate:.0f}/s of {args.notify_rate:g}/s asked ({len(notified):,} of "
        f"{len(bodies):,} sent in the time); decisions "
        f"{sum(decided.values()) / seconds:.0f}/s"
    )
    print(f"Process logs: {logs}")
    print()
    failed = False
    for label, ok, detail in results:
        print(
            f"  {'PASS' if ok else 'NOT CHECKED' if ok is None else 'FAIL':<12} {label}: {detail}"
        )
        failed |= ok is False
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
