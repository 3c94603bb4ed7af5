"""Submissions a second for one `manage.py imm_submitter` process, against the emulator.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_bench_submit \\
        .venv/bin/python bench/submissions.py [--images 3000] [--latency-ms 0,100] [--baseline]

For each latency:
1. stores --images received images (rows only: the emulator is told to check them an hour
   later, so it reads no image while the submitter is timed) and queues one submit_image task
   for each, as uploads do. It refuses a database holding users, or images it did not make;
   earlier runs' rows stay (the audit log cannot be emptied), and each run counts its own;
2. starts `manage.py imm_emulator --latency-ms L` (its own process, tasks kept in memory, no
   notifications) on a free port;
3. runs `manage.py imm_submitter --batch` (one process, IMM_SUBMIT_CONCURRENCY threads) and
   reports images / (last submission - first submission), and the wall time with start-up;
4. checks the outcome: every image submitted, each with exactly one task, and the emulator holds
   exactly one task per image (counted with ListTasks).

With --baseline it does the same with one `manage.py db_worker` running the same queue (one task
at a time, as every submission ran before imm_submitter) over --baseline-images images.

IMM_MAX_QPS is lifted to 0 (no limit) unless set: this measures the submitter, not the budget.
Not a test: it prints numbers and exits 1 only when the outcome check fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this folder comes first on sys.path, and its queue.py would shadow the
# standard library's queue.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moderation.settings")
os.environ["DEBUG"] = "0"
os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("IMM_MAX_QPS", "0")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="images per run")
    parser.add_argument(
        "--latency-ms", default="0,100", help="emulator latencies to run, comma-separated"
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="default: IMM_SUBMIT_CONCURRENCY"
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also time one db_worker over the same queue"
    )
    parser.add_argument(
        "--baseline-images", type=int, default=200, help="images for the db_worker run"
    )
    args = parser.parse_args()
    args.latencies = [int(v) for v in args.latency_ms.split(",") if v.strip()]
    if args.images < 2 or args.baseline_images < 2 or not args.latencies:
        parser.error("--images must be 2 or more and --latency-ms name at least one latency")
    return args


def require_postgres() -> None:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit(
            "bench/submissions.py needs DATABASE_URL=postgres://... naming a database of its own"
        )


def setup_django() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def seed(images: int) -> list[int]:
    """Seed `images` received images with a task queued for each (earlier runs' rows stay)."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django_tasks_db.models import DBTaskResult

    from moderation.imm import pipeline
    from moderation.models import Image

    if (
        get_user_model().objects.exists()
        or Image.objects.exclude(original_filename__startswith="bench-submit-").exists()
    ):
        sys.exit("this database holds users or images of its own: give the bench an empty one")
    # Tasks an interrupted run left would be run with this one's.
    DBTaskResult.objects.all().delete()
    rows = []
    stamp = time.time_ns()
    for n in range(images):
        digest = f"{stamp:032x}{n:032x}"[-64:]
        rows.append(
            Image(
                file=f"images/{digest[:2]}/{digest}.png",
                sha256=digest,
                format="PNG",
                width=512,
                height=512,
                byte_size=1000,
                original_filename=f"bench-submit-{n}.png",
            )
        )
    with transaction.atomic():
        created = Image.objects.bulk_create(rows, batch_size=1000)
        for image in created:
            pipeline.submit_image.enqueue(image.pk)
    # Statistics as autovacuum keeps them on a server in use: the tables just grew in one go.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return [image.pk for image in created]


def start_emulator(latency_ms: int) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        "manage.py",
        "imm_emulator",
        "--port",
        "0",
        "--state",
        ":memory:",
        "--notify-url",
        "",
        "--delay",
        "3600",
        "--latency-ms",
        str(latency_ms),
    ]
    process = subprocess.Popen(  # noqa: S603
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"on (http://[\d.]+:\d+)", line)
    if not found:
        process.terminate()
        sys.exit(f"the emulator did not start: {line!r}")
    return process, found.group(1)


def run_worker(endpoint: str, worker: str, concurrency: int | None) -> tuple[float, str]:
    """Run the submission queue to its end with imm_submitter, or with db_worker (the baseline)."""
    from moderation.imm import pipeline

    env = {
        **os.environ,
        "IMM_ENDPOINT": endpoint,
        "IMM_ACCESS_KEY_ID": "emulator-access-key-id",
        "IMM_ACCESS_KEY_SECRET": "emulator-access-key-secret",
    }
    if worker == "db_worker":
        command = [sys.executable, "manage.py", "db_worker", "--batch", "--no-startup-delay"]
        command += ["--queue-name", pipeline.SUBMIT_QUEUE, "--no-reload", "--verbosity", "0"]
    else:
        command = [sys.executable, "manage.py", "imm_submitter", "--batch"]
        if concurrency:
            command += ["--concurrency", str(concurrency)]
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603
        command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    wall = time.monotonic() - started
    if done.returncode:
        sys.exit(f"{worker} failed:\n{done.stderr}")
    return wall, done.stdout.strip() or f"{worker} ran the queue"


def count_at_emulator(endpoint: str) -> int:
    import dataclasses

    from moderation.imm.client import ImmClient, ImmConfig

    # The bench's own settings name no endpoint, so they hold the emulator's development keys.
    config = dataclasses.replace(ImmConfig.from_settings(), endpoint=endpoint)
    with ImmClient(config) as client:
        return sum(1 for _ in client.iter_tasks())


def check(image_ids: list[int], at_emulator: int) -> list[str]:
    from django.db.models import Count

    from moderation.models import Image, ModerationTask

    problems = []
    waiting = Image.objects.filter(pk__in=image_ids).exclude(status=Image.Status.SUBMITTED).count()
    if waiting:
        problems.append(f"{waiting} image(s) not submitted")
    tasks = ModerationTask.objects.filter(image_id__in=image_ids)
    doubled = tasks.values("image_id").annotate(n=Count("id")).filter(n__gt=1).count()
    if doubled:
        problems.append(f"{doubled} image(s) with more than one task")
    if at_emulator != len(image_ids):
        problems.append(f"the emulator holds {at_emulator} task(s) for {len(image_ids)} image(s)")
    return problems


def measure(latency_ms: int, worker: str, images: int, args: argparse.Namespace) -> dict[str, Any]:
    from django.db.models import Max, Min

    from moderation.models import ModerationTask

    image_ids = seed(images)
    emulator, endpoint = start_emulator(latency_ms)
    try:
        wall, summary = run_worker(endpoint, worker, args.concurrency)
        at_emulator = count_at_emulator(endpoint)
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    span = ModerationTask.objects.filter(image_id__in=image_ids).aggregate(
        first=Min("submitted_at"), last=Max("submitted_at")
    )
    seconds = (span["last"] - span["first"]).total_seconds()
    return {
        "latency_ms": latency_ms,
        "rate": (len(image_ids) - 1) / seconds if seconds > 0 else float("inf"),
        "wall_rate": len(image_ids) / wall,
        "wall": wall,
        "summary": summary,
        "problems": check(image_ids, at_emulator),
    }


def main() -> None:
    args = parse_args()
    require_postgres()
    setup_django()
    from django.conf import settings

    concurrency = args.concurrency or settings.IMM_SUBMIT_CONCURRENCY
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), Python "
        f"{platform.python_version()}; {args.images} images a run; one imm_submitter with "
        f"{concurrency} threads; IMM_MAX_QPS={settings.IMM_MAX_QPS or 'none'}"
    )
    runs = [("imm_submitter", args.images)]
    if args.baseline:
        runs.append(("db_worker", args.baseline_images))
    failed = False
    for latency in args.latencies:
        for worker, images in runs:
            load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
            result = measure(latency, worker, images, args)
            verdict = "ok" if not result["problems"] else "; ".join(result["problems"])
            print(
                f"{worker:>13}, IMM latency {latency:>4} ms: {result['rate']:7.1f} submissions/s "
                f"({result['wall_rate']:.1f}/s over {result['wall']:.1f} s with start-up); "
                f"{result['summary']}; check: {verdict} (load average before: {load})"
            )
            failed |= bool(result["problems"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
