"""What the benchmarks (bench/queue.py, bench/pipeline.py) share: the PostgreSQL checks, the
machine description, percentiles, the seeded images and people, and the reviewers claiming and
deciding.

Every Django import is inside a function: the scripts set the environment (DEBUG off) first, and
bench/pipeline.py imports this module from an older commit's tree too (its --baseline mode), so
the functions use only what the app has had since the review queue was written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

REVIEWER_APP = "bench-reviewer"
CATEGORIES = [("sexy", 0.35), ("porn", 0.2), ("ad", 0.2), ("bloody", 0.15), ("weapon", 0.1)]
UPLOADERS = 4
SIZES = [(1920, 1080), (1080, 1920), (1280, 720), (800, 600), (4032, 3024), (640, 640), (200, 150)]
WAITING_SPREAD = timedelta(days=4)
HISTORY_SPREAD = timedelta(days=60)


def require_postgres(script: str, example: str) -> dict[str, Any]:
    """DATABASE_URL parsed, or exit saying that `script` needs PostgreSQL, with an example."""
    import dj_database_url

    url = os.environ.get("DATABASE_URL", "")
    config = dj_database_url.parse(url) if url else {}
    if config.get("ENGINE") != "django.db.backends.postgresql":
        sys.exit(
            f"{script} measures PostgreSQL, not SQLite: set DATABASE_URL to a database of "
            f"its own (it is emptied and seeded), e.g.\n  {example}"
        )
    return config


def connect_params(config: dict[str, Any]) -> dict[str, Any]:
    """psycopg.connect() keywords for the server in a Django database config (no dbname)."""
    return {
        "host": config.get("HOST") or None,
        "port": config.get("PORT") or None,
        "user": config.get("USER") or None,
        "password": config.get("PASSWORD") or None,
    }


def ensure_database(config: dict[str, Any]) -> None:
    """Create the benchmark database if it does not exist yet."""
    import psycopg
    from psycopg import sql

    params = connect_params(config)
    try:
        psycopg.connect(dbname=config["NAME"], **params).close()
    except psycopg.OperationalError as error:
        if "does not exist" not in str(error):
            raise
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(config["NAME"])))
        print(f"Created database {config['NAME']}.")


# --- Processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """A child in a session of its own, its output in a log file, stopped with its children."""

    def __init__(
        self, name: str, command: list[str], *, cwd: Path, env: dict[str, str], logs: Path
    ):
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(  # noqa: S603 - the bench's own commands
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        if self.running():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()

    def check(self) -> None:
        if not self.running():
            raise SystemExit(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")


def post_notification(connection: Any, body: bytes, token: str) -> int:
    """POST one notification body on a kept http.client connection; its status, 0 when the
    connection failed (it is closed then, and opens again on the next request)."""
    import http.client

    headers = {"Content-Type": "application/json", "X-IMM-Notify-Token": token}
    try:
        connection.request("POST", "/imm/notifications/", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
        return response.status
    except (OSError, http.client.HTTPException):
        connection.close()
        return 0


def wait_for(what: str, ready: Any, *, timeout: float, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None:
            process.check()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def answers(port: int, path: str = "/healthz") -> bool:
    import http.client

    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", path)
        connection.getresponse().read()
        connection.close()
        return True
    except OSError:
        return False


def has_command(tree: Path, name: str) -> bool:
    return any(
        (tree / app / "management" / "commands" / f"{name}.py").exists()
        for app in ("moderation", "moderation/audit", "reviews")
    )


# --- Database ---------------------------------------------------------------------------------


def recreate_database(config: dict[str, Any], *, mark: str, script: str) -> None:
    """Drop and create the database, refusing one that `script` (whose mark the database's
    comment holds) did not create."""
    import psycopg
    from psycopg import sql

    name = config["NAME"]
    with psycopg.connect(dbname="postgres", autocommit=True, **connect_params(config)) as admin:
        row = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            [name],
        ).fetchone()
        if row is not None:
            if (row[0] or "") != mark:
                with psycopg.connect(dbname=name, **connect_params(config)) as existing:
                    tables = existing.execute(
                        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                    ).fetchone()
                if tables and tables[0]:
                    sys.exit(
                        f"Database {name} holds tables that {script} did not make; it will not "
                        "drop it. Point DATABASE_URL at a database of its own."
                    )
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(mark))
        )


# --- Small helpers ---------------------------------------------------------------------------


def pct(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def git_commit(root: Path = ROOT) -> str:
    """The commit checked out at `root` (and its branch), or "unknown" without git."""
    try:
        commit, branch = (
            subprocess.run(  # noqa: S603 - git, on this tree
                ["git", "-C", str(root), "rev-parse", *extra, "HEAD"],  # noqa: S607
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for extra in (["--short=10"], ["--abbrev-ref"])
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit if branch == "HEAD" else f"{commit} ({branch})"


def machine_info() -> list[str]:
    from django.db import connection

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'), "
            "current_setting('work_mem'), current_setting('synchronous_commit'), "
            "current_setting('autovacuum')"
        )
        version, shared_buffers, work_mem, sync_commit, autovacuum = cursor.fetchone()
    import django

    return [
        f"Machine: {os.cpu_count()} CPUs ({cpu}), {memory} RAM, {platform.system()} "
        f"{platform.release()}",
        f"PostgreSQL {version} on {connection.settings_dict['HOST'] or 'local socket'} "
        f"(shared_buffers {shared_buffers}, work_mem {work_mem}, "
        f"synchronous_commit {sync_commit}, autovacuum {autovacuum}), same machine",
        f"Python {platform.python_version()}, Django {django.get_version()}, DEBUG off, "
        f"code at commit {git_commit()} plus any uncommitted changes",
        f"At start: {load()} (the machine is shared: other jobs may run meanwhile)",
    ]


# --- Seeding ---------------------------------------------------------------------------------


@dataclass
class People:
    reviewers: list[Any]
    admin: Any
    uploaders: list[Any]


def people(threads: int) -> People:
    """Reviewers, an admin and uploaders, created (audited) through accounts.create_user."""
    from django.contrib.auth import get_user_model
    from django.test import override_settings

    from moderation.accounts import create_user

    user_model = get_user_model()

    def user(username: str, role: str) -> Any:
        existing = user_model.objects.filter(username=username).first()
        if existing is not None:
            return existing
        # Hashing bench passwords slowly would only slow the setup down.
        with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
            return create_user(
                username=username, role=role, password=f"{username}-pw", validate=False
            )

    return People(
        reviewers=[user(f"bench-reviewer-{i:02d}", "reviewer") for i in range(1, threads + 1)],
        admin=user("bench-admin", "admin"),
        uploaders=[user(f"bench-uploader-{i}", "admin") for i in range(1, UPLOADERS + 1)],
    )


def _weighted(rng: random.Random, choices: list[tuple[str, float]]) -> str:
    r = rng.random()
    for value, weight in choices:
        r -= weight
        if r < 0:
            return value
    return choices[-1][0]


def seed(images: int, waiting: int, uploader_ids: list[int], rng: random.Random) -> list[str]:
    """COPY the images and their category rows in one transaction; returns timing lines."""
    from django.db import connection, transaction

    from moderation.models import EXTENSIONS, Image, ImageCategory

    status = Image.Status
    columns = [
        "id", "file", "preview", "thumbnail", "sha256", "format", "width", "height",
        "frame_count", "byte_size", "original_filename", "uploaded_by", "uploaded_at", "status",
        "status_changed_at", "human_decided_at", "imm_suggestion", "imm_categories", "imm_rate",
    ]  # fmt: skip
    image_sql = "COPY {} ({}) FROM STDIN".format(
        Image._meta.db_table, ", ".join(Image._meta.get_field(c).column for c in columns)
    )
    category_sql = "COPY {} ({}, {}) FROM STDIN".format(
        ImageCategory._meta.db_table,
        ImageCategory._meta.get_field("image").column,
        ImageCategory._meta.get_field("category").column,
    )
    others = [
        (status.APPROVED, 0.86),
        (status.REJECTED, 0.09),
        (status.SUBMITTED, 0.02),
        (status.RECEIVED, 0.02),
        (status.FAILED, 0.01),
    ]
    formats = [("JPEG", 0.6), ("PNG", 0.25), ("WEBP", 0.1), ("GIF", 0.05)]
    suggestion = {
        status.APPROVED: "pass",
        status.REJECTED: "block",
        status.AWAITING_REVIEW: "review",
    }
    uploaders: list[str] = ["\\N"] + [str(pk) for pk in uploader_ids]
    now = time.time()

    def stamp(epoch: float) -> str:
        return datetime.fromtimestamp(epoch, UTC).isoformat()

    waiting_ids = set(rng.sample(range(1, images + 1), waiting))
    lines: list[str] = []
    timings = []
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(image_sql) as copy:
            categories: list[tuple[int, list[str]]] = []
            for pk in range(1, images + 1):
                uploaded = now - HISTORY_SPREAD.total_seconds() * (1 - pk / images) - 60
                if pk in waiting_ids:
                    state = status.AWAITING_REVIEW
                    changed = now - rng.random() * WAITING_SPREAD.total_seconds()
                    uploaded = changed - rng.uniform(5, 600)
                    cats = [_weighted(rng, CATEGORIES)]
                    if rng.random() < 0.3:
                        second = _weighted(rng, CATEGORIES)
                        if second != cats[0]:
                            cats.append(second)
                    rate = f"{rng.uniform(50, 99.9):.2f}"
                else:
                    state = _weighted(rng, others)
                    changed = min(now - 1, uploaded + rng.uniform(5, 600))
                    cats = [_weighted(rng, CATEGORIES)] if state == status.REJECTED else []
                    rate = f"{rng.uniform(90, 100):.2f}" if cats else "\\N"
                if cats:
                    categories.append((pk, cats))
                fmt = _weighted(rng, formats)
                ext = EXTENSIONS[fmt]
                sha = hashlib.sha256(b"bench-image-%d" % pk).hexdigest()
                width, height = SIZES[rng.randrange(len(SIZES))]
                decided = (
                    stamp(changed) if state == status.REJECTED and rng.random() < 0.3 else "\\N"
                )
                lines.append(
                    f"{pk}\timages/{sha[:2]}/{sha}.{ext}\tpreviews/{sha[:2]}/{sha}.webp\t"
                    f"thumbnails/{sha[:2]}/{sha}.webp\t{sha}\t{fmt}\t{width}\t{height}\t"
                    f"{rng.randint(2, 40) if fmt == 'GIF' else 1}\t"
                    f"{rng.randint(20_000, 8_000_000)}\tIMG_{pk:07d}.{ext}\t"
                    f"{uploaders[0] if rng.random() < 0.2 else rng.choice(uploaders[1:])}\t"
                    f"{stamp(uploaded)}\t{state}\t{stamp(changed)}\t{decided}\t"
                    f"{suggestion.get(state, '')}\t{json.dumps(cats)}\t{rate}\n"
                )
                if len(lines) >= 20_000:
                    copy.write("".join(lines))
                    lines.clear()
            copy.write("".join(lines))
            lines.clear()
        timings.append(
            f"{images:,} images generated and copied in {time.perf_counter() - started:.1f} s"
        )
        step = time.perf_counter()
        rows = 0
        with raw.copy(category_sql) as copy:
            for pk, cats in categories:
                for category in cats:
                    lines.append(f"{pk}\t{category}\n")
                    rows += 1
                if len(lines) >= 50_000:
                    copy.write("".join(lines))
                    lines.clear()
            copy.write("".join(lines))
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{Image._meta.db_table}', 'id'), %s)",
            [images],
        )
        timings.append(f"{rows:,} category rows copied in {time.perf_counter() - step:.1f} s")
        step = time.perf_counter()
    timings.append(f"commit (deferred foreign key checks) {time.perf_counter() - step:.1f} s")
    return timings


def vacuum_analyze(*tables: str) -> float:
    """VACUUM (ANALYZE) the given tables (default: the seeded ones); the seconds it took."""
    from django.db import connection

    from moderation.models import Image, ImageCategory

    started = time.perf_counter()
    with connection.cursor() as cursor:
        for table in tables or (Image._meta.db_table, ImageCategory._meta.db_table):
            cursor.execute(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - started


def vacuum_claims() -> None:
    """Every claim inserts a row and every decision deletes it: vacuum the claims table before
    each claim run, as autovacuum would (this keeps runs alike where a server has it off)."""
    from reviews.models import Claim

    vacuum_analyze(Claim._meta.db_table)


# --- Claims ----------------------------------------------------------------------------------


@dataclass
class ReviewerRun:
    samples: list[float] = field(default_factory=list)
    claim_times: list[float] = field(default_factory=list)
    decide_times: list[float] = field(default_factory=list)
    held: list[tuple[int, int, float, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    decisions: int = 0
    ran_dry: bool = False
    finished: float = 0.0  # perf_counter() when the loop ended (the same clock in every process)


# "limits": reviewer_loop claims as Start reviewing does (reviews.exposure.limits.claim_next);
# otherwise with services.claim_next alone. An environment variable, so spawned processes see it.
CLAIM_PATH = "BENCH_CLAIM_PATH"


def reviewer_loop(
    user_id: int,
    seconds: float,
    barrier: threading.Barrier,
    seed: int,
    out: ReviewerRun,
    think: float = 0.0,
) -> None:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection

    from reviews import services
    from reviews.exposure import limits as exposure_limits
    from reviews.models import Decision

    rng = random.Random(seed)  # noqa: S311 - benchmark data, not secrets
    lease = settings.REVIEW_LEASE_SECONDS
    try:
        user = get_user_model().objects.get(pk=user_id)
        services.is_admin(user)  # the permission cache, as a request's user would have it
        with connection.cursor() as cursor:  # for the wait-event sampler
            cursor.execute("SET application_name = %s", [REVIEWER_APP])
        barrier.wait()
        deadline = time.perf_counter() + seconds
        if think:  # reviewers out of step, as people are
            time.sleep(rng.uniform(0, think))
        last: list[int] = []
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            # As the pane does after a decision: the next claim excludes the image just decided.
            if os.environ.get(CLAIM_PATH) == "limits":
                # As Start reviewing does: within the reviewer's exposure caps and opt-outs.
                claim = exposure_limits.claim_next(
                    reviewer=user, images=services.waiting(), exclude=last
                )
            else:
                claim = services.claim_next(reviewer=user, exclude=last)
            claimed = time.perf_counter()
            if claim is None:
                out.ran_dry = True
                break
            reject = rng.random() < 0.15
            try:
                services.decide(
                    image_id=claim.image_id,
                    reviewer=user,
                    verdict=Decision.Verdict.REJECT if reject else Decision.Verdict.APPROVE,
                    reason="bench: rejected" if reject else "",
                )
                out.decisions += 1
            except services.ReviewError as error:
                out.errors[type(error).__name__] += 1
            done = time.perf_counter()
            out.samples.append(done - started)
            out.claim_times.append(claimed - started)
            out.decide_times.append(done - claimed)
            out.held.append((claim.image_id, user_id, started, min(done, claimed + lease)))
            last = [claim.image_id]
            if think:
                time.sleep(rng.uniform(0.5, 1.5) * think)
    except Exception as error:  # a thread's crash is reported, not lost
        out.errors[f"{type(error).__name__}: {error}"[:120]] += 1
        if barrier.n_waiting:
            barrier.abort()
    finally:
        out.finished = time.perf_counter()
        connection.close()


def sample_waits(stop: threading.Event, counts: Counter[str]) -> None:
    """What the reviewers' database sessions are doing, every 20 ms (pg_stat_activity)."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            while not stop.is_set():
                cursor.execute(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE application_name = %s AND pid <> pg_backend_pid()",
                    [REVIEWER_APP],
                )
                for state, kind, event in cursor.fetchall():
                    if kind == "Lock" and event == "advisory":
                        counts["waiting for an advisory lock"] += 1
                    elif kind == "Lock":
                        counts[f"waiting for a {event} lock"] += 1
                    elif state == "idle in transaction":
                        counts["idle in transaction (waiting for Python)"] += 1
                    elif state == "idle":
                        counts["idle between transactions (Python)"] += 1
                    elif kind is None:
                        counts["running SQL"] += 1
                    elif event in ("WALSync", "WALWrite", "WALInsert"):
                        counts["committing (WAL write and flush)"] += 1
                    else:
                        counts[f"{state}: {kind} {event}"] += 1
                stop.wait(0.02)
    finally:
        connection.close()


@dataclass
class ClaimRun:
    threads: int
    processes: int
    think: float
    elapsed: float
    decisions: int
    samples: list[float]
    claim_times: list[float]
    decide_times: list[float]
    per_reviewer: list[int]
    doubles_held: int
    doubles_decided: int
    errors: Counter[str]
    ran_dry: int
    audited: int
    waits: Counter[str]


def reviewer_threads(
    jobs: list[tuple[int, int]], seconds: float, think: float, start: Any
) -> list[ReviewerRun]:
    """Run one reviewer thread per (user id, seed) once `start()` returns; their results."""
    outs = [ReviewerRun() for _ in jobs]
    barrier = threading.Barrier(len(jobs) + 1)
    workers = [
        threading.Thread(
            target=reviewer_loop,
            args=(user_id, seconds, barrier, seed, out, think),
            name=f"reviewer-{user_id}",
        )
        for (user_id, seed), out in zip(jobs, outs, strict=True)
    ]
    for worker in workers:
        worker.start()
    start()
    barrier.wait()
    for worker in workers:
        worker.join()
    return outs


def reviewer_process(
    jobs: list[tuple[int, int]], seconds: float, think: float, gate: Any, results: Any
) -> None:
    """A process of its own (spawned) running some of the reviewer threads."""
    import django

    django.setup()
    try:
        outs = reviewer_threads(jobs, seconds, think, lambda: gate.wait(timeout=120))
    except Exception as error:  # reported, not lost
        outs = [ReviewerRun(errors=Counter({f"{type(error).__name__}: {error}"[:120]: 1}))]
    results.put(outs)


def claims(who: People, *, seconds: float, seed: int, think: float, processes: int = 1) -> ClaimRun:
    """The reviewers claiming and deciding for --seconds: threads in this process, or spread
    over `processes` spawned processes (as a web server's workers would be)."""
    import multiprocessing

    from django.db import connections
    from django.db.models import Count

    from moderation.models import AuditEntry
    from reviews.models import Decision

    before = Decision.objects.count()
    last_before = Decision.objects.order_by("-id").values_list("id", flat=True).first() or 0
    audit_before = AuditEntry.objects.count()
    jobs = [(user.pk, seed + i) for i, user in enumerate(who.reviewers)]
    waits: Counter[str] = Counter()
    stop = threading.Event()
    sampler = threading.Thread(target=sample_waits, args=(stop, waits), name="sampler")
    started = 0.0

    def go() -> None:
        nonlocal started
        started = time.perf_counter()
        sampler.start()

    if processes <= 1:
        outs = reviewer_threads(jobs, seconds, think, go)
    else:
        context = multiprocessing.get_context("spawn")
        gate = context.Barrier(processes + 1)
        results = context.Queue()
        connections.close_all()
        children = [
            context.Process(
                target=reviewer_process,
                args=(jobs[n::processes], seconds, think, gate, results),
                name=f"reviewers-{n + 1}",
            )
            for n in range(processes)
        ]
        for child in children:
            child.start()
        gate.wait(timeout=120)  # a child that cannot start breaks the barrier
        go()
        outs = [out for _ in children for out in results.get(timeout=seconds + 120)]
        for child in children:
            child.join()
    # Until the last reviewer stopped: not the processes' exit, which takes a while.
    elapsed = max((out.finished for out in outs), default=started) - started
    stop.set()
    sampler.join()

    # A double assignment: an image held by two reviewers at overlapping times (claims), or an
    # image with two decisions that are not undos (database).
    holders: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    for out in outs:
        for image_id, reviewer_id, start, end in out.held:
            holders[image_id].append((reviewer_id, start, end))
    doubles_held = 0
    for spans in holders.values():
        if len({reviewer for reviewer, _, _ in spans}) > 1 and any(
            a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in spans for b in spans
        ):
            doubles_held += 1
    # Images this run decided twice (a seeded history may hold older decisions of its own).
    doubles_decided = (
        Decision.objects.filter(pk__gt=last_before)
        .exclude(verdict=Decision.Verdict.UNDO)
        .values("image_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    decisions = Decision.objects.count() - before
    errors: Counter[str] = Counter()
    for out in outs:
        errors.update(out.errors)
    return ClaimRun(
        threads=len(jobs),
        processes=max(processes, 1),
        think=think,
        elapsed=elapsed,
        decisions=decisions,
        samples=[s for out in outs for s in out.samples],
        claim_times=[s for out in outs for s in out.claim_times],
        decide_times=[s for out in outs for s in out.decide_times],
        per_reviewer=[out.decisions for out in outs],
        doubles_held=doubles_held,
        doubles_decided=doubles_decided,
        errors=errors,
        ran_dry=sum(out.ran_dry for out in outs),
        audited=AuditEntry.objects.count() - audit_before,
        waits=waits,
    )


# --- Report ----------------------------------------------------------------------------------


def pace(think: float) -> str:
    return f"{think * 1000:g} ms apart" if think else "back to back"


def verdict(ok: bool | None) -> str:
    return "NOT RUN" if ok is None else "MET" if ok else "MISSED"


def where(processes: int) -> str:
    return "one Python process" if processes == 1 else f"{processes} Python processes"


def report_claims(run: ClaimRun) -> None:
    print()
    print(
        f"Claim + decide: {run.threads} reviewer threads (one connection each, "
        f"{where(run.processes)}) for {run.elapsed:.1f} s"
        + (f", {run.think * 1000:g} ms pause between decisions" if run.think else ", back to back")
    )
    rate = run.decisions / run.elapsed if run.elapsed else 0.0
    print(f"  decisions              {run.decisions:,} ({rate:.0f} per second)")
    print(
        f"  per reviewer           min {min(run.per_reviewer)}, max {max(run.per_reviewer)}"
        + (f"; {run.ran_dry} ran out of waiting images" if run.ran_dry else "")
    )
    if run.samples:
        for label, samples in (
            ("claim + decide", run.samples),
            ("  claim_next", run.claim_times),
            ("  decide", run.decide_times),
        ):
            print(
                f"  {label:<22} p50 {ms(pct(samples, 50)):>6} ms  p95 {ms(pct(samples, 95)):>6} ms"
                f"  max {ms(max(samples)):>6} ms"
            )
    print(
        f"  double assignments     {run.doubles_held} held by two reviewers at once, "
        f"{run.doubles_decided} decided twice"
    )
    print(f"  audit entries written  {run.audited:,}")
    sampled = sum(run.waits.values())
    if sampled:
        print("  reviewer sessions      (pg_stat_activity every 20 ms)")
        for what, n in run.waits.most_common(6):
            print(f"    {100 * n / sampled:5.1f}%  {what}")
    if run.errors:
        print("  errors                 " + ", ".join(f"{k} x{v}" for k, v in run.errors.items()))
