"""`make serve`: the production-like set (Procfile.serve) with DEBUG=0, gunicorn and WhiteNoise."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def procfile(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def database_url() -> str:
    """The test database, as DATABASE_URL names it, for a process of its own."""
    config = connection.settings_dict
    if config["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{config['NAME']}"
    user = quote(config["USER"] or "")
    password = f":{quote(config['PASSWORD'])}" if config["PASSWORD"] else ""
    return (
        f"postgres://{user}{password}@{config['HOST'] or '127.0.0.1'}:{config['PORT'] or 5432}"
        f"/{config['NAME']}"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with _opener.open(url, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers.items()), error.read()


@pytest.fixture
def served(transactional_db, tmp_path) -> Iterator[str]:
    """Procfile.serve's web process (one gunicorn worker) on a free port, against the test
    database, with the environment `make serve` gives it; its base URL."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "SECRET_KEY_FILE"}
    } | {
        "DEBUG": "0",
        "SECRET_KEY": "serve-test-" + "x" * 50,
        "DATABASE_URL": database_url(),
        "STATIC_ROOT": str(tmp_path / "static"),
        "MEDIA_ROOT": str(tmp_path / "media"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    # Through the shell, as honcho runs it: the line expands ${WEB_CONCURRENCY:-4} and $PORT.
    web = subprocess.Popen(  # noqa: S602 - the project's own Procfile line
        procfile("Procfile.serve")["web"],
        shell=True,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(f"{base}/healthz")
                break
            except OSError:
                if web.poll() is not None or time.monotonic() > deadline:
                    assert web.stderr is not None
                    pytest.fail(f"gunicorn did not start: {web.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
        yield base
    finally:
        os.killpg(web.pid, 15)
        web.wait(timeout=30)
        assert web.stderr is not None
        web.stderr.close()
        shutil.rmtree(tmp_path / "static", ignore_errors=True)


def test_gunicorn_serves_the_sign_in_page_health_and_static_files_with_debug_off(served):
    login_status, login_headers, login = get(f"{served}/accounts/login/")
    health_status, _, health = get(f"{served}/healthz")
    css_status, css_headers, css = get(f"{served}/static/css/app.css")
    missing_status, _, missing = get(f"{served}/no-such-page")

    assert login_status == 200
    assert b'name="username"' in login
    assert b'name="password"' in login
    assert "script-src 'self'" in login_headers["Content-Security-Policy"]
    assert login_headers["Server"] == "gunicorn"
    assert health_status == 200
    assert b'"database": "ok"' in health
    assert css_status == 200
    assert css_headers["Content-Type"].startswith("text/css")
    assert css == (ROOT / "static" / "css" / "app.css").read_bytes()
    # DEBUG is off: no technical 404 page listing the URL patterns.
    assert missing_status == 404
    assert b"URLconf" not in missing


def test_the_serve_procfile_runs_gunicorn_the_worker_poller_sequencer_and_emulator():
    processes = procfile("Procfile.serve")

    assert list(processes) == [
        "web",
        "worker",
        "submitter",
        "poller",
        "inbox",
        "sequencer",
        "webhooks",
        "rollups",
        "imm",
    ]
    assert processes["web"].startswith("gunicorn moderation.wsgi ")
    assert "--workers ${WEB_CONCURRENCY:-4}" in processes["web"]
    assert processes["sequencer"] == "python manage.py audit_sequencer"
    assert processes["inbox"] == "python manage.py imm_poller --inbox-only"
    assert processes["webhooks"] == "python manage.py deliver_webhooks"
    assert processes["rollups"] == "python manage.py oversight_rollups"


@pytest.mark.parametrize(
    ("endpoint", "started"),
    [
        ("", "web worker submitter poller inbox sequencer webhooks rollups imm"),
        ("https://imm.example", "web worker submitter poller inbox sequencer webhooks rollups"),
    ],
)
def test_make_serve_starts_the_emulator_only_without_an_imm_endpoint(endpoint, started):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k != "IMM_ENDPOINT"}
    if endpoint:
        env["IMM_ENDPOINT"] = endpoint
    # -n prints the recipe without running it; -o install skips (re)installing the venv.
    plan = subprocess.run(
        ["make", "-n", "-o", "install", "serve", "TASK_WORKERS=3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    honcho = re.search(r"honcho --procfile Procfile\.serve start .*", plan.replace("\\\n", " "))
    assert honcho is not None, plan
    assert re.sub(r"\s+", " ", honcho[0]).strip().endswith(f"--concurrency worker=3 {started}")
    assert "export DEBUG=0 " in plan
