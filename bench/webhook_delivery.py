"""Webhook deliveries/s: manage.py deliver_webhooks sending to a local receiver.

In a PostgreSQL database of its own (dropped and created again), it registers three endpoints on
one local receiver (a ThreadingHTTPServer in this process that verifies every signature with the
standardwebhooks library): `live`, which receives everything; `off`, disabled before any event;
and `late`, which receives the first LATE_EVENTS events' deliveries and is then disabled with
them still pending. It writes the events through the real outbox (emit() in transactions, the
fan-out on post_save), then starts the deliverer as `make serve` does and times it until every
live delivery is delivered. It checks that every event reached `live` (none lost), how many came
twice (at-least-once allows it only after a retry), and that `off` and `late` received nothing.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_bench_webhooks \\
        python bench/webhook_delivery.py [--events 20000] [--workers 1] [--concurrency 32]

`main(argv)` returns the numbers as a dict too (bench/api.py calls it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path is set
    Process,
    git_commit,
    machine_info,
    recreate_database,
    require_postgres,
    wait_for,
)

DB_MARK = "bench/webhook_delivery.py database"
TARGET = 500.0
LATE_EVENTS = 1000
EVENTS_PER_IMAGE = 10
WEBHOOK_KEY = "bench-only-webhook-key-not-a-secret-0123456789abcdef"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events (default 20,000)")
    parser.add_argument("--workers", type=int, default=1, help="deliver_webhooks processes")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight per process (32)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait at most")
    return parser.parse_args(argv)


class Receiver:
    """Counts what each path received, by webhook-id, after verifying the signature."""

    def __init__(self, secrets: dict[str, str]) -> None:
        from standardwebhooks.webhooks import Webhook

        self.verifiers = {path: Webhook(secret) for path, secret in secrets.items()}
        self.ids: dict[str, Counter[str]] = {path: Counter() for path in secrets}
        self.bad_signatures = 0
        self.first = self.last = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verifier = receiver.verifiers.get(self.path)
                try:
                    assert verifier is not None
                    verifier.verify(body, headers, json_parse=False)
                    ok = True
                except Exception:
                    ok = False
                now = time.monotonic()
                with receiver.lock:
                    if not receiver.first:
                        receiver.first = now
                    receiver.last = now
                    if ok:
                        receiver.ids[self.path][headers["webhook-id"]] += 1
                    else:
                        receiver.bad_signatures += 1
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # the listen backlog: many senders connect at once

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A sender killed mid-request (the soak's kill -9) resets its connection: expected.
                if isinstance(sys.exc_info()[1], ConnectionError):
                    return
                super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_images(count: int) -> list[Any]:
    import uuid

    from django.utils import timezone

    from moderation.models import Image

    now = timezone.now()
    rows = []
    for n in range(count):
        sha = uuid.uuid5(uuid.NAMESPACE_URL, f"webhook-bench-{n}").hex * 2
        rows.append(
            Image(
                file=f"images/{sha[:2]}/{sha}.png",
                sha256=sha,
                format="PNG",
                width=640,
                height=480,
                byte_size=40_000,
                original_filename=f"webhook-bench-{n}.png",
                status=Image.Status.APPROVED,
                status_changed_at=now,
            )
        )
    return Image.objects.bulk_create(rows, batch_size=2000)


def write_events(count: int, images: list[Any], *, after_late: Any) -> list[str]:
    """`count` events through the real outbox, 500 to a transaction; calls after_late() once
    LATE_EVENTS have been written."""
    from django.db import transaction

    from moderation.events.models import Event
    from moderation.events.outbox import emit

    types = Event.Type.values
    ids: list[str] = []
    for start in range(0, count, 500):
        with transaction.atomic():
            for n in range(start, min(count, start + 500)):
                image = images[n // EVENTS_PER_IMAGE]
                kind = types[n % len(types)]
                event = emit(
                    image=image,
                    type=kind,
                    data={"type": kind, "image_id": image.pk, "n": n},
                )
                ids.append(event.public_id)
        if start < LATE_EVENTS <= start + 500:
            after_late()
    return ids


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moderation.settings")
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret-" + "x" * 40)
    os.environ["WEBHOOK_SECRET_KEY"] = WEBHOOK_KEY
    os.environ["WEBHOOK_ALLOWED_HOSTS"] = "127.0.0.1"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    args = parse_args(argv)
    if args.events < LATE_EVENTS + 1:
        sys.exit(f"--events must be more than {LATE_EVENTS}")
    config = require_postgres(
        "bench/webhook_delivery.py",
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_bench_webhooks "
        "make bench-webhooks",
    )
    recreate_database(config, mark=DB_MARK, script="bench/webhook_delivery.py")

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from moderation.webhooks import services, signing
    from moderation.webhooks.models import Delivery, Endpoint

    call_command("migrate", verbosity=0)
    print("bench/webhook_delivery.py: webhook deliveries to a local receiver")
    for line in machine_info():
        print(f"  {line}")
    print(f"  commit {git_commit()[:7]}")

    receiver = Receiver({})  # secrets are known once the endpoints exist
    endpoints = {
        path: services.add_endpoint(url=receiver.url(path), actor=None).endpoint
        for path in ("/live", "/off", "/late")
    }
    for path, endpoint in endpoints.items():
        from standardwebhooks.webhooks import Webhook

        receiver.verifiers[path] = Webhook(signing.secret(endpoint))
        receiver.ids[path] = Counter()
    services.set_enabled(endpoint_id=endpoints["/off"].pk, enabled=False, actor=None)

    started = time.monotonic()
    images = make_images((args.events + EVENTS_PER_IMAGE - 1) // EVENTS_PER_IMAGE)
    event_ids = write_events(
        args.events,
        images,
        after_late=lambda: services.set_enabled(
            endpoint_id=endpoints["/late"].pk, enabled=False, actor=None
        ),
    )
    written = time.monotonic() - started
    live = Delivery.objects.filter(endpoint=endpoints["/live"])
    late_pending = Delivery.objects.filter(endpoint=endpoints["/late"]).count()
    print(
        f"  {len(event_ids):,} events written through the outbox in {written:.1f} s "
        f"({len(event_ids) / written:,.0f}/s): {live.count():,} deliveries to live, "
        f"{late_pending:,} pending to late (disabled), "
        f"{Delivery.objects.filter(endpoint=endpoints['/off']).count()} to off (disabled)"
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE webhooks_delivery")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    workers = [
        Process(
            f"deliver_webhooks-{n}",
            [
                sys.executable,
                "manage.py",
                "deliver_webhooks",
                "--concurrency",
                str(args.concurrency),
                "--interval",
                "0.2",
            ],
            cwd=ROOT,
            env=env,
            logs=logs,
        )
        for n in range(args.workers)
    ]
    t0 = time.monotonic()
    try:
        total = len(event_ids)

        def done() -> bool:
            return live.filter(state=Delivery.State.DELIVERED).count() >= total

        wait_for("every live delivery", done, timeout=args.timeout, process=workers[0])
        wall = time.monotonic() - t0
        worker_cpu = sum(cpu_seconds(worker.popen.pid) for worker in workers)
        time.sleep(1)  # anything still in flight to late or off would arrive by now
    finally:
        for worker in workers:
            worker.stop()
        receiver.stop()

    got = receiver.ids["/live"]
    lost = len(set(event_ids) - set(got))
    duplicated = sum(n - 1 for n in got.values() if n > 1)
    retried = live.filter(attempts__gt=1).count()
    to_disabled = sum(receiver.ids["/off"].values()) + sum(receiver.ids["/late"].values())
    span = receiver.last - receiver.first
    rate = (len(got) - 1) / span if span > 0 else 0.0
    results = {
        "events": len(event_ids),
        "workers": args.workers,
        "concurrency": args.concurrency,
        "deliveries_per_s": round(rate, 1),
        "seconds_first_to_last": round(span, 2),
        "seconds_from_start": round(wall, 2),
        "lost": lost,
        "duplicated": duplicated,
        "retried": retried,
        "bad_signatures": receiver.bad_signatures,
        "to_disabled_endpoints": to_disabled,
        "late_pending_kept": Delivery.objects.filter(
            endpoint=endpoints["/late"], state=Delivery.State.PENDING
        ).count(),
        "endpoints_disabled_now": Endpoint.objects.filter(enabled=False).count(),
    }
    ok = (
        rate >= TARGET
        and lost == 0
        and duplicated <= retried
        and to_disabled == 0
        and receiver.bad_signatures == 0
    )
    print(
        f"  {len(got):,} deliveries in {span:.1f} s, first to last: "
        f"{rate:,.0f} deliveries/s (target >= {TARGET:.0f}/s); {wall:.1f} s from the "
        f"deliverer's start ({args.workers} process(es), {args.concurrency} in flight each)"
    )
    per_delivery_ms = worker_cpu * 1000 / max(1, len(got))
    results["worker_cpu_ms_per_delivery"] = round(per_delivery_ms, 3)
    print(
        f"  the deliverer used {worker_cpu:.1f} s of CPU (start-up included): "
        f"{per_delivery_ms:.2f} ms a delivery, so about {1000 / per_delivery_ms:,.0f}/s per "
        "core it has to itself (the receiver, verifying every signature, runs in this process)"
    )
    print(
        f"  lost {lost}, sent twice {duplicated} (retried {retried}), bad signatures "
        f"{receiver.bad_signatures}, sent to disabled endpoints {to_disabled} "
        f"(late kept {results['late_pending_kept']:,} pending)"
    )
    print(f"  {'PASS' if ok else 'FAIL'}")
    results["ok"] = ok
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
