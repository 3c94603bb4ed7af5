"""Benchmark of the platform API: `make bench-api` (PostgreSQL only).

Runs gunicorn as `make serve` does (4 workers, DEBUG off) against a database of its own, and
measures, in one run, side by side:

1. Submissions: --images small distinct PNGs sent by --in-flight (16) concurrent senders on
   kept connections, once through the upload page (an admin's session, one file per request as
   the page's script sends them, the htmx fragment back) and once through the API
   (`POST /api/v1/images` with a key); images stored per second, answer time p50/p95, and a
   check that every image was stored once (and, for the API, one submission each).

2. Webhook deliveries: bench/webhook_delivery.py in a process and a database of its own (this
   database's name + "_webhooks"): --events outcome events through the real outbox, delivered by
   `manage.py deliver_webhooks` to a local receiver that verifies every signature; deliveries/s,
   none lost, none to a disabled endpoint.

The sections are functions in SECTIONS, each given the running server and returning its rows.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_bench_api make bench-api
    ... bench/api.py --quick          # a tiny run, for checking the bench itself

The database is dropped and created again (the script refuses one it did not create).
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path is set
    Process,
    answers,
    free_port,
    git_commit,
    machine_info,
    ms,
    pct,
    recreate_database,
    require_postgres,
    wait_for,
)

WEB_WORKERS = 4
DB_MARK = "bench/api.py database"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images per door (2000)")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent senders (16)")
    parser.add_argument(
        "--events", type=int, default=20_000, help="webhook events to deliver (20,000)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="200 images per door, 2,000 webhook events"
    )
    args = parser.parse_args()
    if args.quick:
        args.images = 200
        args.events = 2_000
    return args


# --- Images and requests ------------------------------------------------------------------------


def small_pngs(count: int, offset: int) -> list[bytes]:
    """`count` distinct 64 x 64 PNGs (a colour and a few pixels from the index)."""
    from PIL import Image

    made = []
    for n in range(offset, offset + count):
        picture = Image.new("RGB", (64, 64), (n % 251, (n // 251) % 251, 90))
        for bit in range(24):
            if n >> bit & 1:
                picture.putpixel((bit, 7), (255, 255, 255))
        out = io.BytesIO()
        picture.save(out, format="PNG")
        made.append(out.getvalue())
    return made


def multipart(field_name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@dataclass
class Door:
    """How one way in is asked: the path, the multipart field, the headers, a good answer."""

    name: str
    path: str
    field: str
    headers: dict[str, str]
    ok: Callable[[int, bytes], bool]


@dataclass
class Run:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    bad: int = 0


def send_all(port: int, door: Door, images: list[bytes], in_flight: int) -> Run:
    """POST every image through `door` with `in_flight` senders, each on a kept connection."""
    run = Run()
    lock = threading.Lock()
    work = iter(enumerate(images))
    start_line = threading.Barrier(in_flight + 1)

    def sender() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start_line.wait()
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                break
            n, data = item
            body, content_type = multipart(door.field, f"bench-{door.name}-{n}.png", data)
            headers = {**door.headers, "Content-Type": content_type}
            began = time.perf_counter()
            try:
                connection.request("POST", door.path, body=body, headers=headers)
                response = connection.getresponse()
                content = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                status, content = 0, b""
            took = time.perf_counter() - began
            with lock:
                run.latencies.append(took)
                run.statuses[status] += 1
                if not door.ok(status, content):
                    run.bad += 1
        connection.close()

    threads = [threading.Thread(target=sender) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - began
    return run


# --- The server ---------------------------------------------------------------------------------


@contextmanager
def web_server(env: dict[str, str], logs: Path) -> Iterator[int]:
    port = free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    web = Process(
        "gunicorn",
        [
            gunicorn,
            "moderation.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(WEB_WORKERS),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        logs=logs,
    )
    try:
        wait_for("gunicorn", lambda: answers(port), timeout=60, process=web)
        yield port
    finally:
        web.stop()


@dataclass
class Context:
    port: int
    args: argparse.Namespace
    logs: Path
    extra: dict[str, Any] = field(default_factory=dict)


# --- Sections -----------------------------------------------------------------------------------


def admin_session() -> dict[str, str]:
    """Cookies and headers of a signed-in admin, as the upload page's script sends them."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from moderation.accounts import create_user

    user = create_user(
        username="bench-admin", role="admin", password=secrets.token_urlsafe(16), validate=False
    )
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    csrf = secrets.token_hex(16)  # a 32-character secret, sent as cookie and header alike
    return {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}; "
        f"{settings.CSRF_COOKIE_NAME}={csrf}",
        "X-CSRFToken": csrf,
        "HX-Request": "true",
    }


def measure_submissions(ctx: Context) -> list[tuple[str, str, str]]:
    from moderation.api import keys
    from moderation.api.models import ApiSubmission
    from moderation.models import Image

    count = ctx.args.images
    page_images, api_images = small_pngs(count, 0), small_pngs(count, count)
    key = keys.create_key(client_name="bench", scopes=["submit", "read"], created_by=None).key
    page = Door(
        "page",
        "/images/upload/",
        "files",
        admin_session(),
        lambda status, body: status == 200 and b'data-outcome="stored"' in body,
    )
    api = Door(
        "api",
        "/api/v1/images",
        "file",
        {"Authorization": f"Bearer {key}"},
        lambda status, body: status == 201 and b'"duplicate_of": null' in body,
    )
    rows = []
    results = {}
    for door, images in ((page, page_images), (api, api_images)):
        print(f"  {door.name}: {count} images, {ctx.args.in_flight} in flight ...", flush=True)
        run = send_all(ctx.port, door, images, ctx.args.in_flight)
        results[door.name] = run
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(run.statuses.items()))
        rows.append(
            (
                "upload page" if door.name == "page" else "API",
                f"{count / run.seconds:,.0f} images/s",
                f"p50 {ms(pct(run.latencies, 50))} ms, p95 {ms(pct(run.latencies, 95))} ms; "
                f"answers {statuses}; not stored: {run.bad}",
            )
        )
    stored = Image.objects.count()
    submissions = ApiSubmission.objects.count()
    whole = stored == 2 * count and submissions == count
    rows.append(
        (
            "check",
            "ok" if whole else "FAILED",
            f"{stored:,} images stored (expected {2 * count:,}), {submissions:,} API submissions "
            f"(expected {count:,})",
        )
    )
    page_rate = count / results["page"].seconds
    api_rate = count / results["api"].seconds
    rows.append(
        (
            "target",
            "met" if api_rate >= page_rate * 0.95 else "NOT MET",
            f"API at least the upload page's rate: {api_rate / page_rate:.2f} x",
        )
    )
    return rows


def measure_webhooks(ctx: Context) -> list[tuple[str, str, str]]:
    """bench/webhook_delivery.py in a process of its own (it sets up Django for its database)."""
    import json

    url = os.environ["DATABASE_URL"].rstrip("/")
    env = {**os.environ, "DATABASE_URL": f"{url}_webhooks"}
    code = (
        "import json; from bench.webhook_delivery import main; "
        f"print('RESULT ' + json.dumps(main(['--events', '{ctx.args.events}']), default=str))"
    )
    done = subprocess.run(  # noqa: S603 - our own script; --events is an int from argparse
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    result: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
        else:
            print(f"  | {line}")
    if not result:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return [("webhooks", "FAILED", " / ".join(tail) or f"exit {done.returncode}")]
    return [
        (
            "deliveries",
            f"{result['deliveries_per_s']:,.0f}/s",
            f"{ctx.args.events:,} events to one live endpoint (target >= 500/s)",
        ),
        (
            "check",
            "ok" if result["ok"] else "FAILED",
            f"lost {result['lost']}, sent twice {result['duplicated']} (retried "
            f"{result['retried']}), to disabled endpoints {result['to_disabled_endpoints']}, "
            f"bad signatures {result['bad_signatures']}",
        ),
    ]


# One function per section: (label, value, detail) rows.
SECTIONS: list[tuple[str, Callable[[Context], list[tuple[str, str, str]]]]] = [
    ("Submissions through gunicorn (small distinct PNGs)", measure_submissions),
    ("Webhook deliveries to a local receiver", measure_webhooks),
]


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moderation.settings")
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret-" + "x" * 40)
    args = parse_args()
    config = require_postgres(
        "bench/api.py",
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/moderation_bench_api make bench-api",
    )
    recreate_database(config, mark=DB_MARK, script="bench/api.py")
    logs = Path(tempfile.mkdtemp(prefix="bench-api-"))
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECURE_COOKIES": "0",
        "API_RATE_LIMIT": "0",  # the bench measures throughput, not the limit
        "MEDIA_ROOT": str(logs / "media"),
        "STATIC_ROOT": str(logs / "static"),
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, check=True
    )
    import django

    django.setup()
    print(f"bench/api.py at {git_commit(ROOT)[:7]}: the platform API through gunicorn")
    for line in machine_info():
        print(f"  {line}")
    print(f"  gunicorn: {WEB_WORKERS} workers, {args.in_flight} requests in flight")
    with web_server(env, logs) as port:
        ctx = Context(port=port, args=args, logs=logs)
        for title, section in SECTIONS:
            print(f"\n{title}")
            rows = section(ctx)
            width = max(len(label) for label, _, _ in rows)
            for label, value, detail in rows:
                print(f"  {label:<{width}}  {value:>16}  {detail}")
    print(f"\nprocess logs in {logs}")


if __name__ == "__main__":
    main()
