"""Benchmark of the IMM calibration page at scale (DATABASE_URL must be PostgreSQL).

1. Makes a database of its own (dropped and made again, like bench/pipeline.py's) and seeds
   --images images with bench/common.py's seed (COPY), then gives every category row a rate
   and its image's suggestion,
   adds a category to a share of the approved images (as IMM's pass with a low rate of
   something would), and writes one person's decision for every --decide-every'th image with
   a category (INSERT ... SELECT: no ORM save per row), then VACUUM ANALYZE.
2. Fills the page's daily rollups (reviews/calibration/rollups.py: the calibration part of the
   oversight_rollups pass) and times that first fill; then writes --late decisions on old
   images (a person deciding again, an admin's override) and times the pass's calibration part
   that follows, as every pass after the first would run it, and once more with nothing new.
3. Times, through Django's test client signed in as an admin, --requests requests each after
   --warmup: the page over the last 30 and the last 90 days, and the htmx backtest of porn
   thresholds over 30 and 90 days (whole thresholds, and one inside a whole rate, which reads
   the exact rates of that whole rate too). Prints p50, p95 and the SQL queries per request.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_bench_calibration \\
        .venv/bin/python bench/calibration.py
    ... bench/calibration.py --images 100000 --requests 20     # a quick run

No target is asserted here: the numbers are for the reader (and the README).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and bench/queue.py there would
# shadow the standard library's `queue` (which psycopg imports): take the folder off.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moderation.settings")
os.environ["DEBUG"] = "0"
os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret")
os.environ.setdefault("LOG_LEVEL", "WARNING")

from bench.common import (  # noqa: E402 - after the path and the environment are set
    machine_info,
    ms,
    pct,
    people,
    recreate_database,
    require_postgres,
    seed,
    vacuum_analyze,
)

MARK = "bench/calibration.py"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--decide-every", type=int, default=2, help="decide 1 image in N")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--late", type=int, default=200, help="late decisions on old images")
    return parser.parse_args()


# Table names come from the models (moderation_image, moderation_imagecategory, reviews_decision).
ADD_CATEGORIES = """
    INSERT INTO {category} (image_id, category)
    SELECT id, (ARRAY['porn', 'sexy', 'ad', 'bloody', 'weapon'])[1 + id % 5]
    FROM {image} WHERE status = 'approved' AND id % 5 = 0
"""
ADD_RATES = """
    UPDATE {category} c SET suggestion = i.imm_suggestion, rate = CASE WHEN i.status = 'approved'
        THEN round((random() * 60)::numeric, 2) ELSE round((40 + random() * 60)::numeric, 2) END
    FROM {image} i WHERE i.id = c.image_id
"""
ADD_DECISIONS = """
    INSERT INTO {decision}
        (image_id, reviewer_id, verdict, reason, status_before, status_after, created_at)
    SELECT i.id, %s, CASE WHEN i.status = 'rejected' THEN 'reject' ELSE 'approve' END, '',
        'awaiting_review', i.status, i.status_changed_at
    FROM {image} i
    WHERE i.status IN ('approved', 'rejected') AND i.id %% %s = 0
        AND EXISTS (SELECT 1 FROM {category} c WHERE c.image_id = i.id)
"""


def add_calibration_rows(decide_every: int, reviewer_id: int) -> list[str]:
    """Rates on every category row, categories on a fifth of the approved images, and one
    decision for every `decide_every`'th image with a category (each in one statement)."""
    from django.db import connection, transaction

    from moderation.models import Image, ImageCategory
    from reviews.models import Decision

    tables = {
        "image": Image._meta.db_table,
        "category": ImageCategory._meta.db_table,
        "decision": Decision._meta.db_table,
    }
    lines = []
    with transaction.atomic(), connection.cursor() as cursor:
        started = time.perf_counter()
        cursor.execute(ADD_CATEGORIES.format(**tables))
        cursor.execute(ADD_RATES.format(**tables))
        lines.append(f"category rows given rates in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        cursor.execute(ADD_DECISIONS.format(**tables), [reviewer_id, decide_every])
        decided = cursor.rowcount
        lines.append(f"{decided:,} decisions written in {time.perf_counter() - started:.1f} s")
    return lines


LATE_DECISIONS = """
    INSERT INTO {decision}
        (image_id, reviewer_id, verdict, reason, status_before, status_after, created_at)
    SELECT d.image_id, d.reviewer_id, 'override', '', d.status_after,
        CASE WHEN d.status_after = 'approved' THEN 'rejected' ELSE 'approved' END, %s
    FROM {decision} d WHERE d.id IN (
        SELECT id FROM {decision} WHERE created_at < %s ORDER BY random() LIMIT %s)
"""

SETTLE_LATE = """
    UPDATE {image} i SET status = d.status_after, human_decided_at = %s
    FROM {decision} d WHERE d.image_id = i.id AND d.created_at = %s
"""


def rollup_passes(late: int) -> list[str]:
    """The calibration part of the rollups pass: the first fill, a pass after `late` decisions
    on old images, and a pass with nothing new."""
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from moderation.models import Image
    from reviews.calibration import rollups
    from reviews.calibration.models import DecidedDay, UploadedDay, UploadedRate
    from reviews.dashboard.periods import floor_hour
    from reviews.models import Decision

    lines = []
    now = timezone.now()
    report = rollups.refresh(since=floor_hour(now), now=now)
    lines.append(
        f"first fill: {report.decided_days} decision days and {report.uploaded_days} upload "
        f"days in {report.seconds:.2f} s: {DecidedDay.objects.count():,} decision rows, "
        f"{UploadedDay.objects.count():,} upload rows, {UploadedRate.objects.count():,} "
        "exact-rate rows"
    )
    now = timezone.now()
    tables = {"decision": Decision._meta.db_table, "image": Image._meta.db_table}
    with connection.cursor() as cursor:
        cursor.execute(LATE_DECISIONS.format(**tables), [now, now - timedelta(days=2), late])
        written = cursor.rowcount
        cursor.execute(SETTLE_LATE.format(**tables), [now, now])
    # The pass after it, as the loop runs it: from the hour before the horizon on.
    report = rollups.refresh(since=floor_hour(now) - timedelta(hours=1), now=now)
    lines.append(
        f"a pass after {written} late decisions on old images: {report.decided_days} decision "
        f"days and {report.uploaded_days} upload days recomputed in {report.seconds:.2f} s"
    )
    now = timezone.now()
    report = rollups.refresh(since=floor_hour(now) - timedelta(hours=1), now=now)
    lines.append(
        f"the next pass, nothing new (those hours are not final yet): {report.decided_days} "
        f"decision days and {report.uploaded_days} upload days in {report.seconds:.2f} s"
    )
    return lines


def timed(
    client, url: str, *, requests: int, warmup: int, htmx: bool
) -> tuple[float, float, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    for _ in range(warmup):
        assert client.get(url, **headers).status_code == 200
    samples, cpu = [], []
    queries = 0
    for _ in range(requests):
        with CaptureQueriesContext(connection) as captured:
            started, cpu_started = time.perf_counter(), time.process_time()
            response = client.get(url, **headers)
            samples.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        assert response.status_code == 200, response.status_code
        queries = len(captured.captured_queries)
    return pct(samples, 50), pct(samples, 95), pct(cpu, 50), queries


def main() -> None:
    args = parse_args()
    config = require_postgres(
        MARK,
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_bench_calibration "
        ".venv/bin/python bench/calibration.py",
    )
    recreate_database(config, mark=MARK, script=MARK)

    import django

    django.setup()

    from django.core.management import call_command
    from django.test import Client

    from moderation.models import Image, ImageCategory
    from reviews.models import Decision

    print("bench/calibration.py: the IMM calibration page at scale")
    for line in machine_info():
        print(line)
    call_command("migrate", interactive=False, verbosity=0)
    who = people(1)
    print(f"\nSeeding {args.images:,} images ...", flush=True)
    rng = random.Random(args.seed)  # noqa: S311 - benchmark data, not secrets
    for line in seed(args.images, args.images // 100, [u.pk for u in who.uploaders], rng):
        print(f"  {line}", flush=True)
    for line in add_calibration_rows(args.decide_every, who.reviewers[0].pk):
        print(f"  {line}", flush=True)
    tables = (Image._meta.db_table, ImageCategory._meta.db_table, Decision._meta.db_table)
    print(f"  VACUUM (ANALYZE) in {vacuum_analyze(*tables):.1f} s")
    print(
        f"Database: {args.images:,} images, {ImageCategory.objects.count():,} category rows, "
        f"{Decision.objects.count():,} decisions"
    )

    print("\nThe calibration part of the rollups pass:", flush=True)
    for line in rollup_passes(args.late):
        print(f"  {line}", flush=True)
    print(f"  {load_average()}")

    client = Client(HTTP_HOST="localhost")
    client.force_login(who.admin)
    backtest = "/reviews/calibration/?category=porn&approve_below=30&reject_from=95&days={}"
    split = "/reviews/calibration/?category=porn&approve_below=30&reject_from=97.5&days={}"
    print(f"\n{args.requests} requests each after {args.warmup} warm-up:")
    print(f"  {'request':<44} {'p50 ms':>8} {'p95 ms':>8} {'CPU p50':>8} {'queries':>8}")
    for label, url, htmx in (
        ("page, last 30 days", "/reviews/calibration/?days=30", False),
        ("page, last 90 days", "/reviews/calibration/?days=90", False),
        ("backtest of porn (htmx), last 30 days", backtest.format(30), True),
        ("backtest of porn (htmx), last 90 days", backtest.format(90), True),
        ("backtest, reject from 97.5, last 90 days", split.format(90), True),
    ):
        p50, p95, cpu, queries = timed(
            client, url, requests=args.requests, warmup=args.warmup, htmx=htmx
        )
        print(f"  {label:<44} {ms(p50):>8} {ms(p95):>8} {ms(cpu):>8} {queries:>8}", flush=True)
    print(f"  {load_average()}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


if __name__ == "__main__":
    main()
