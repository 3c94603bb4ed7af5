"""The IMM emulator, spoken to over HTTP exactly as IMM is: signed with moderation.imm.signing."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.client
import io
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image, ImageDraw

from moderation import services
from moderation.imm import signing as acs3
from moderation.imm.emulator import Emulator, RulesError
from moderation.imm.emulator.store import RETENTION_MS, Task

from .factories import png_bomb

KEY_ID = "test-access-key-id"
SECRET = "test-access-key-secret"
PROJECT = "moderation-test"
BUCKET = "imm-test-bucket"
API_VERSION = "2020-09-30"
SKIN = (224, 172, 140)
BLUE_GREY = (90, 110, 130)
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
REQUEST_ID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}")
VECTORS = json.loads((Path(__file__).parent / "data" / "signature_vectors.json").read_text())[
    "vectors"
]

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- talking to the emulator ----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def send(url: str, headers: dict[str, str], method: str = "POST", data: bytes | None = None):
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with _opener.open(request, timeout=10) as response:
            return Reply(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                json.loads(response.read()),
            )
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(
                exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read())
            )


def acs_date(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def wire(**values: Any) -> dict[str, str]:
    """Parameters as the SDK serialises them: JSON for objects and arrays, str() otherwise."""
    return {
        key: value
        if isinstance(value, str)
        else acs3.to_json(value)
        if isinstance(value, dict | list)
        else str(value)
        for key, value in values.items()
    }


def signed_headers(
    port: int,
    action: str,
    params: dict[str, str],
    *,
    secret: str = SECRET,
    key_id: str = KEY_ID,
    date: str | None = None,
    nonce: str | None = None,
    unsigned: tuple[str, ...] = (),
    method: str = "POST",
    version: str = API_VERSION,
) -> dict[str, str]:
    """Headers signed as the IMM client signs them: host and every x-acs-* header."""
    headers = {
        "host": f"127.0.0.1:{port}",
        "x-acs-action": action,
        "x-acs-version": version,
        "x-acs-date": date or acs_date(),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "x-acs-content-sha256": acs3.EMPTY_BODY_SHA256,
    }
    signature = acs3.sign(
        method=method,
        query=params,
        headers=headers,
        signed_header_names=[name for name in headers if name not in unsigned],
        access_key_id=key_id,
        access_key_secret=secret,
    )
    return headers | {"Authorization": signature.authorization}


def signed_call(
    emulator: Emulator | SimpleNamespace,
    action: str,
    params: dict[str, str] | None = None,
    *,
    query: str | None = None,
    method: str = "POST",
    sent_body: bytes = b"",
    **signing: Any,
) -> Reply:
    """Sign and send with urllib; `query` replaces the signed query string on the wire
    (tampering), `sent_body` is sent in place of the empty body that was signed."""
    params = dict(params or {})
    headers = signed_headers(emulator.port, action, params, method=method, **signing)
    query = acs3.canonical_query(params) if query is None else query
    return send(f"http://127.0.0.1:{emulator.port}/?{query}", headers, method, sent_body or None)


def create(emulator: Emulator, key: str = "images/aa/x.png", **extra: Any) -> Reply:
    params = wire(ProjectName=PROJECT, SourceURI=f"oss://{BUCKET}/{key}") | wire(**extra)
    return signed_call(emulator, "CreateImageModerationTask", params)


def create_task(emulator: Emulator, key: str = "images/aa/x.png", **extra: Any) -> str:
    reply = create(emulator, key, **extra)
    assert reply.status == 200, reply.body
    return reply.body["TaskId"]


def task_params(task_id: str) -> dict[str, str]:
    return {"ProjectName": PROJECT, "TaskType": "ImageModeration", "TaskId": task_id}


def finished(emulator: Emulator, task_id: str, timeout: float = 10) -> dict[str, Any]:
    """GetImageModerationResult once the task is no longer Running."""
    deadline = time.monotonic() + timeout
    while True:
        reply = signed_call(emulator, "GetImageModerationResult", task_params(task_id))
        assert reply.status == 200, reply.body
        if reply.body["Status"] != "Running":
            return reply.body
        assert time.monotonic() < deadline, f"{task_id} still running after {timeout} s"
        time.sleep(0.01)


def moderate(emulator: Emulator, key: str, **extra: Any) -> dict[str, Any]:
    return finished(emulator, create_task(emulator, key, **extra))


def list_tasks(emulator: Emulator, **params: Any) -> Reply:
    return signed_call(emulator, "ListTasks", wire(ProjectName=PROJECT, **params))


# --- images ---------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def with_area(share: float, colour: tuple[int, int, int], size=(320, 240)) -> Image.Image:
    """A blue-grey image whose left `share` of the width is `colour`."""
    image = Image.new("RGB", size, BLUE_GREY)
    if share:
        ImageDraw.Draw(image).rectangle((0, 0, int(size[0] * share) - 1, size[1]), fill=colour)
    return image


def qr_like(size: int = 320, module: int = 8) -> Image.Image:
    """Black and white modules at random (seeded), like a QR code or dense print."""
    rnd = random.Random(0)
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    for y in range(0, size, module):
        for x in range(0, size, module):
            if rnd.random() < 0.5:
                draw.rectangle((x, y, x + module - 1, y + module - 1), fill=0)
    return image.convert("RGB")


def animated(frames: list[Image.Image], fmt: str) -> bytes:
    out = io.BytesIO()
    lossless = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(
        out, format=fmt, save_all=True, append_images=frames[1:], duration=100, **lossless
    )
    return out.getvalue()


@pytest.fixture
def stored(db) -> Callable[[bytes, str], str]:
    """Store a file through the real intake and return its storage key."""

    def store(data: bytes, filename: str = "upload.png") -> str:
        result = services.ingest(fp=io.BytesIO(data), filename=filename, actor=None)
        assert result.image is not None, result.reason
        return result.image.file.name

    return store


# --- emulators and a notification target ----------------------------------------------------


@pytest.fixture
def start_emulator() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(**options: Any) -> Emulator:
        emulator = Emulator(
            **{
                "access_key_id": KEY_ID,
                "access_key_secret": SECRET,
                "project": PROJECT,
                "bucket": BUCKET,
                "delay": 0,
                "retry_backoff": 0.02,
            }
            | options
        )
        emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(start_emulator) -> Emulator:
    return start_emulator()


class Receiver:
    """A stdlib HTTP server that records what is POSTed to it; fails the first `fail_first`."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._changed:
                    receiver.attempts += 1
                    failing = receiver.attempts <= receiver.fail_first
                    if not failing:
                        headers = {k.lower(): v for k, v in self.headers.items()}
                        receiver.received.append((headers, body))
                    receiver._changed.notify_all()
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/imm/notifications/"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.received) >= count, timeout), (
                f"{len(self.received)} of {count} notifications arrived"
            )
            return [json.loads(body) for _, body in self.received]

    @property
    def task_ids(self) -> list[str]:
        return [json.loads(json.loads(body)["content"])["TaskId"] for _, body in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


# --- the four operations --------------------------------------------------------------------


def test_it_creates_a_task_and_answers_with_a_task_id_an_event_id_and_a_request_id(emulator):
    reply = create(emulator)

    assert reply.status == 200
    assert set(reply.body) == {"RequestId", "TaskId", "EventId"}
    assert re.fullmatch(r"ImageModeration-[0-9a-f-]{36}", reply.body["TaskId"])
    assert uuid.UUID(reply.body["TaskId"].removeprefix("ImageModeration-")).version == 4
    assert re.fullmatch(r"[0-9A-F]{3}-[A-Za-z0-9]{27}", reply.body["EventId"])
    assert REQUEST_ID.fullmatch(reply.body["RequestId"])
    assert reply.headers["x-acs-request-id"] == reply.body["RequestId"]
    assert reply.headers["content-type"].startswith("application/json")


def test_it_reports_a_finished_task_through_get_task_without_a_verdict(emulator, stored):
    key = stored(png(with_area(0, SKIN)))
    task_id = create_task(
        emulator, key, Tags={"image": "42"}, UserData='{"image_id":42}', Scenes=["porn"]
    )
    finished(emulator, task_id)

    reply = signed_call(emulator, "GetTask", task_params(task_id))

    assert reply.status == 200
    body = reply.body
    assert {k: body[k] for k in ("ProjectName", "TaskId", "TaskType", "Status")} == {
        "ProjectName": PROJECT,
        "TaskId": task_id,
        "TaskType": "ImageModeration",
        "Status": "Succeeded",
    }
    assert body["Code"] == body["Message"] == ""
    assert TIME.fullmatch(body["StartTime"])
    assert TIME.fullmatch(body["EndTime"])
    assert body["EndTime"] >= body["StartTime"]
    assert body["Tags"] == {"image": "42"}
    assert body["UserData"] == '{"image_id":42}'
    assert body["EventId"]
    assert "ModerationResult" not in body


def test_it_gives_the_verdict_through_get_image_moderation_result(emulator, stored):
    key = stored(png(with_area(0.7, SKIN)))
    task_id = create_task(emulator, key)

    body = finished(emulator, task_id)

    assert body["Status"] == "Succeeded"
    assert body["TaskId"] == task_id
    assert body["TaskType"] == "ImageModeration"
    assert TIME.fullmatch(body["EndTime"])
    assert body["ModerationResult"] == {
        "URI": f"oss://{BUCKET}/{key}",
        "Suggestion": "block",
        "Categories": ["porn"],
        "Frames": {
            "TotalCount": 1,
            "BlockFrames": [{"Label": "porn", "Offset": 0, "Rate": pytest.approx(80.1, abs=1)}],
        },
    }


def test_a_task_stays_running_without_end_time_or_verdict_until_its_delay_has_passed(
    start_emulator, stored
):
    emulator = start_emulator(delay=60)
    task_id = create_task(emulator, stored(png(with_area(0, SKIN))))

    body = signed_call(emulator, "GetImageModerationResult", task_params(task_id)).body

    assert body["Status"] == "Running"
    assert "EndTime" not in body
    assert "ModerationResult" not in body


def test_list_tasks_selects_by_tag_status_and_task_type(emulator):
    wanted = {create_task(emulator, Tags={"queue": "urgent"}) for _ in range(2)}
    create_task(emulator, Tags={"queue": "later"})
    create_task(emulator)

    by_tag = list_tasks(emulator, TagSelector="queue=urgent")
    by_other_type = list_tasks(emulator, TaskTypes=["MediaConvert"])
    by_status = list_tasks(emulator, Status="Succeeded", TaskTypes=["ImageModeration"])

    assert by_tag.status == 200
    assert {t["TaskId"] for t in by_tag.body["Tasks"]} == wanted
    assert all(t["Tags"] == {"queue": "urgent"} for t in by_tag.body["Tasks"])
    assert by_tag.body["NextToken"] == ""
    assert by_tag.body["MaxResults"] == "100"
    assert by_tag.body["ProjectName"] == PROJECT
    assert by_other_type.body["Tasks"] == []
    # The objects do not exist, so every task fails; none has Succeeded.
    assert by_status.body["Tasks"] == []
    task = by_tag.body["Tasks"][0]
    assert {"TaskId", "TaskType", "Status", "Code", "Message", "StartTime", "Progress"} <= set(task)


def test_list_tasks_pages_with_next_token_in_the_order_asked_for(emulator):
    created = [create_task(emulator, Tags={"batch": "b1"}) for _ in range(7)]
    for task_id in created:
        finished(emulator, task_id)

    pages, token = [], None
    while True:
        params = {"MaxResults": 3, "Sort": "StartTime", "Order": "desc", "TagSelector": "batch=b1"}
        reply = list_tasks(emulator, **params, **({"NextToken": token} if token else {}))
        assert reply.status == 200, reply.body
        pages.append([t["TaskId"] for t in reply.body["Tasks"]])
        token = reply.body["NextToken"]
        if not token:
            break

    assert [len(page) for page in pages] == [3, 3, 1]
    listed = [task_id for page in pages for task_id in page]
    assert sorted(listed) == sorted(created)
    starts = [signed_call(emulator, "GetTask", task_params(t)).body["StartTime"] for t in listed]
    assert starts == sorted(starts, reverse=True)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"MaxResults": 101}, "MaxResults"),
        ({"MaxResults": 0}, "MaxResults"),
        ({"Sort": "Colour"}, "Sort"),
        ({"Order": "sideways"}, "Order"),
        ({"Status": "Pending"}, "Status"),
        ({"TagSelector": "no-equals-sign"}, "TagSelector"),
        ({"NextToken": "not a token"}, "NextToken"),
    ],
)
def test_list_tasks_refuses_bad_parameters_with_invalid_argument(emulator, params, message):
    reply = list_tasks(emulator, **params)

    assert reply.status == 400
    assert reply.body["Code"] == "InvalidArgument"
    assert message in reply.body["Message"]


def test_list_tasks_refuses_a_next_token_from_a_listing_in_another_order(emulator):
    for _ in range(2):
        create_task(emulator)
    token = list_tasks(emulator, MaxResults=1).body["NextToken"]

    reply = list_tasks(emulator, MaxResults=1, Order="desc", NextToken=token)

    assert reply.body["Code"] == "InvalidArgument"


@pytest.mark.parametrize("action", ["GetTask", "GetImageModerationResult"])
def test_an_unknown_task_id_is_resource_not_found(emulator, action):
    reply = signed_call(emulator, action, task_params(f"ImageModeration-{uuid.uuid4()}"))

    assert reply.status == 400
    assert reply.body["Code"] == "ResourceNotFound"
    assert reply.body["Message"] == "The specified resource TaskId is not found."
    assert set(reply.body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}


def test_tasks_older_than_seven_days_are_not_found_or_listed(emulator):
    now_ms = int(time.time() * 1000)
    for task_id, age_ms in (
        ("ImageModeration-old", RETENTION_MS + 1000),
        ("ImageModeration-new", RETENTION_MS - 60_000),
    ):
        emulator.store.save(
            Task(
                task_id=task_id,
                project=PROJECT,
                source_uri=f"oss://{BUCKET}/images/aa/x.png",
                start_ms=now_ms - age_ms,
                request_id="R",
                event_id="E",
                scenes=["porn"],
                status="Succeeded",
                end_ms=now_ms - age_ms + 1000,
            )
        )

    old = signed_call(emulator, "GetTask", task_params("ImageModeration-old"))
    new = signed_call(emulator, "GetTask", task_params("ImageModeration-new"))
    listed = list_tasks(emulator)

    assert old.body["Code"] == "ResourceNotFound"
    assert new.body["Status"] == "Succeeded"
    assert [t["TaskId"] for t in listed.body["Tasks"]] == ["ImageModeration-new"]


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        ({"ProjectName": ""}, "MissingProjectName", "ProjectName is mandatory"),
        ({"ProjectName": "someone-else"}, "ResourceNotFound", "resource Project"),
        ({"SourceURI": ""}, "MissingSourceURI", "SourceURI is mandatory"),
        ({"SourceURI": "https://example.com/a.png"}, "InvalidArgument", "oss://"),
        ({"SourceURI": f"oss://{BUCKET}/"}, "InvalidArgument", "oss://"),
        ({"Scenes": '["porn",'}, "InvalidJSON", "Scenes"),
        ({"Scenes": '"porn"'}, "InvalidArgument", "Scenes"),
        ({"Scenes": '["porn","gossip"]'}, "InvalidArgument", "gossip"),
        ({"Tags": "{queue: 1}"}, "InvalidJSON", "Tags"),
        ({"Tags": '{"queue": 1}'}, "InvalidArgument", "Tags"),
        ({"Notification": "{"}, "InvalidJSON", "Notification"),
        ({"CredentialConfig": "[1]"}, "InvalidArgument", "CredentialConfig"),
        ({"Interval": "0"}, "InvalidArgument", "Interval"),
        ({"MaxFrames": "two"}, "InvalidArgument", "MaxFrames"),
        ({"UserData": "x" * 2049}, "InvalidArgument", "2,049 bytes"),
        ({"UserData": "é" * 1025}, "InvalidArgument", "2,050 bytes"),
    ],
)
def test_create_refuses_bad_parameters(emulator, params, code, message):
    base = {"ProjectName": PROJECT, "SourceURI": f"oss://{BUCKET}/images/aa/x.png"}
    reply = signed_call(emulator, "CreateImageModerationTask", {**base, **params})

    assert reply.status == 400
    assert reply.body["Code"] == code
    assert message in reply.body["Message"]


def test_create_accepts_user_data_of_exactly_2048_bytes_and_echoes_it(emulator):
    user_data = "ü" * 1024
    task_id = create_task(emulator, UserData=user_data)

    assert signed_call(emulator, "GetTask", task_params(task_id)).body["UserData"] == user_data


# --- the gateway: signatures, clock, nonces, flow control -----------------------------------


def test_a_wrong_secret_is_refused_with_the_servers_string_to_sign_but_not_the_secret(emulator):
    params = task_params("ImageModeration-x")
    reply = signed_call(emulator, "GetTask", params, secret="not-the-secret")

    assert reply.status == 400
    assert reply.body["Code"] == "SignatureDoesNotMatch"
    match = re.search(r"server StringToSign is \[(.*)\]", reply.body["Message"], re.S)
    assert match is not None
    assert match[1].startswith("ACS3-HMAC-SHA256\n")
    assert SECRET not in json.dumps(reply.body)


def test_a_query_tampered_with_after_signing_is_refused(emulator):
    params = task_params("ImageModeration-x")
    tampered = acs3.canonical_query({**params, "TaskId": "ImageModeration-y"})

    reply = signed_call(emulator, "GetTask", params, query=tampered)

    assert reply.body["Code"] == "SignatureDoesNotMatch"


@pytest.mark.parametrize("left_out", ["host", "x-acs-date", "x-acs-signature-nonce"])
def test_signed_headers_must_include_host_and_every_acs_header(emulator, left_out):
    reply = signed_call(emulator, "GetTask", task_params("t"), unsigned=(left_out,))

    assert reply.status == 400
    assert reply.body["Code"] == "IncompleteSignature"
    assert left_out in reply.body["Message"]


def test_a_date_more_than_fifteen_minutes_off_is_refused(emulator):
    stale = acs_date(datetime.now(UTC) - timedelta(minutes=16))
    early = acs_date(datetime.now(UTC) + timedelta(minutes=16))

    assert (
        signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}, date=stale).body["Code"]
        == "InvalidTimeStamp.Expired"
    )
    assert (
        signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}, date=early).body["Code"]
        == "InvalidTimeStamp.Expired"
    )
    assert (
        signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}, date="yesterday").body["Code"]
        == "InvalidTimeStamp.Format"
    )


def test_a_nonce_is_accepted_once(emulator):
    first = signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}, nonce="same-nonce")
    second = signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}, nonce="same-nonce")

    assert first.status == 200
    assert second.status == 400
    assert second.body["Code"] == "SignatureNonceUsed"


def test_an_unknown_access_key_id_is_not_found(emulator):
    reply = signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}, key_id="someone-else")

    assert reply.status == 404
    assert reply.body["Code"] == "InvalidAccessKeyId.NotFound"


def test_a_body_that_does_not_match_its_content_sha256_is_refused(emulator):
    reply = signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}, sent_body=b"extra")

    assert reply.status == 400
    assert reply.body["Code"] == "SignatureDoesNotMatch"
    assert "x-acs-content-sha256" in reply.body["Message"]


def test_a_request_without_authorization_is_refused(emulator):
    reply = send(
        f"http://127.0.0.1:{emulator.port}/?ProjectName={PROJECT}",
        {"x-acs-action": "ListTasks", "x-acs-version": API_VERSION},
    )

    assert reply.status == 400
    assert reply.body["Code"] == "IncompleteSignature"


def test_a_malformed_content_length_gets_a_json_error_with_a_request_id(emulator):
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as conn:
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n")
        response = http.client.HTTPResponse(conn)
        response.begin()
        body = json.loads(response.read())

    assert response.status == 400
    assert REQUEST_ID.fullmatch(body["RequestId"])
    assert response.getheader("x-acs-request-id") == body["RequestId"]


def test_it_reads_plus_as_a_space_as_the_sdk_sends_it_and_accepts_get(emulator):
    user_data = "two words & more"
    params = {"ProjectName": PROJECT, "SourceURI": f"oss://{BUCKET}/images/aa/x.png"}
    params["UserData"] = user_data
    sdk_wire = urlencode(params)  # what the SDK sends: '+' for a space
    assert "+" in sdk_wire

    created = signed_call(emulator, "CreateImageModerationTask", params, query=sdk_wire)
    task_id = created.body["TaskId"]
    fetched = signed_call(emulator, "GetTask", task_params(task_id), method="GET")

    assert created.status == 200, created.body
    assert fetched.body["UserData"] == user_data


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_it_accepts_requests_signed_by_alibabas_sdk(start_emulator, vector):
    inputs, request = vector["inputs"], vector["request"]
    moment = datetime.strptime(inputs["x_acs_date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    emulator = start_emulator(
        access_key_id=inputs["access_key_id"],
        access_key_secret=inputs["access_key_secret"],
        project="moderation-demo",
        bucket="review-bucket",
        clock=moment.timestamp,
    )
    url = request.get("wire_url_as_sdk_sends_it") or request["wire_url_rfc3986_equivalent"]
    query = urlsplit(url).query

    reply = send(f"http://127.0.0.1:{emulator.port}/?{query}", request["headers_sent"])

    action = request["headers_sent"]["x-acs-action"]
    if action in ("CreateImageModerationTask", "ListTasks"):
        assert reply.status == 200, reply.body
    else:  # the vectors ask about a task that does not exist
        assert reply.body["Code"] == "ResourceNotFound"


def test_unknown_actions_and_versions_are_refused(emulator):
    action = signed_call(emulator, "DeleteEverything", {"ProjectName": PROJECT})
    version = signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}, version="2017-09-06")

    assert action.status == 404
    assert action.body["Code"] == "InvalidAction.NotFound"
    assert version.status == 400
    assert version.body["Code"] == "InvalidVersion"


def test_requests_above_the_rate_limit_get_throttling_with_retry_after(start_emulator):
    emulator = start_emulator(throttle_rps=2)

    replies = [signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}) for _ in range(3)]

    assert [r.status for r in replies[:2]] == [200, 200]
    throttled = replies[2]
    assert throttled.status == 400
    assert throttled.body["Code"] == "Throttling.User"
    assert throttled.body["Message"] == "Request was denied due to user flow control."
    assert 0 < int(throttled.headers["x-acs-retry-after"]) <= 1000
    assert REQUEST_ID.fullmatch(throttled.body["RequestId"])


def test_with_latency_every_answer_waits_that_long_errors_included(start_emulator):
    emulator = start_emulator(latency=0.05)

    started = time.monotonic()
    listed = signed_call(emulator, "ListTasks", {"ProjectName": PROJECT})
    between = time.monotonic()
    refused = signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}, secret="wrong")
    ended = time.monotonic()

    assert listed.status == 200, listed.body
    assert refused.status == 400
    assert between - started >= 0.05
    assert ended - between >= 0.05


def test_latency_delays_answers_concurrently_not_one_after_another(start_emulator):
    in_flight = 0
    most = 0
    waits: list[float] = []
    lock = threading.Lock()
    together = threading.Barrier(8)

    def sleep(seconds: float) -> None:
        # Every request's wait ends only once all eight are waiting at the same time: a server
        # that answered one request at a time would break the barrier instead.
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
            waits.append(seconds)
        try:
            together.wait(timeout=10)
        finally:
            with lock:
                in_flight -= 1

    emulator = start_emulator(latency=0.1, sleep=sleep)
    replies: list[Reply] = []

    def call() -> None:
        replies.append(signed_call(emulator, "ListTasks", {"ProjectName": PROJECT}))

    callers = [threading.Thread(target=call) for _ in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()

    assert [reply.status for reply in replies] == [200] * 8
    assert waits == [0.1] * 8
    assert most == 8


@pytest.mark.parametrize("latency", [-0.001, 60.5, float("nan")])
def test_latency_must_be_from_zero_to_a_minute(latency):
    with pytest.raises(ValueError, match="latency must be from 0 to 60 seconds"):
        Emulator(
            access_key_id=KEY_ID,
            access_key_secret=SECRET,
            project=PROJECT,
            bucket=BUCKET,
            latency=latency,
        )


# --- processing: storage, limits, detector --------------------------------------------------


def test_it_reads_the_image_from_the_projects_storage(emulator, stored):
    key = stored(png(with_area(0, SKIN)))

    body = moderate(emulator, key)

    assert body["Status"] == "Succeeded"
    assert body["ModerationResult"]["URI"] == f"oss://{BUCKET}/{key}"
    assert body["ModerationResult"]["Suggestion"] == "pass"
    assert body["ModerationResult"]["Categories"] == []
    assert body["ModerationResult"]["Frames"] == {"TotalCount": 1, "BlockFrames": []}


def test_a_source_in_another_bucket_fails_the_task_naming_the_bucket(emulator, stored):
    key = stored(png(with_area(0, SKIN)))
    reply = signed_call(
        emulator,
        "CreateImageModerationTask",
        {"ProjectName": PROJECT, "SourceURI": f"oss://other-bucket/{key}"},
    )

    body = finished(emulator, reply.body["TaskId"])

    assert body["Status"] == "Failed"
    assert body["Code"] == "ResourceNotFound"
    assert "other-bucket" in body["Message"]
    assert "ModerationResult" not in body


def test_a_missing_object_fails_the_task(emulator):
    body = moderate(emulator, "images/00/nothing-here.png")

    assert body["Status"] == "Failed"
    assert body["Code"] == "ResourceNotFound"
    assert "images/00/nothing-here.png" in body["Message"]


def test_an_image_over_imms_limits_fails_the_task_with_the_reason(emulator):
    key = default_storage.save("images/zz/too-wide.png", ContentFile(png_bomb(30_001, 10)))

    body = moderate(emulator, key)

    assert body["Status"] == "Failed"
    assert body["Code"] == "InvalidArgument"
    assert "30,001 x 10 px" in body["Message"]
    assert "at most 30,000 px" in body["Message"]


@pytest.mark.parametrize(
    ("image", "suggestion", "categories"),
    [
        pytest.param(with_area(0, SKIN), "pass", [], id="plain blue-grey"),
        pytest.param(with_area(0.7, SKIN), "block", ["porn"], id="mostly skin"),
        pytest.param(with_area(0.25, SKIN), "review", ["sexy"], id="some skin"),
        pytest.param(with_area(0.5, (170, 10, 20)), "review", ["bloody"], id="half blood red"),
        pytest.param(qr_like(), "review", ["ad"], id="black and white print"),
    ],
)
def test_the_default_detector_judges_by_the_pixels(emulator, stored, image, suggestion, categories):
    result = moderate(emulator, stored(png(image)))["ModerationResult"]

    assert result["Suggestion"] == suggestion
    assert result["Categories"] == categories
    block_frames = result["Frames"]["BlockFrames"]
    assert [f["Label"] for f in block_frames] == categories[:1]
    assert all(50 <= f["Rate"] < 100 and f["Offset"] == 0 for f in block_frames)


def test_only_the_scenes_asked_for_are_checked(emulator, stored):
    key = stored(png(with_area(0.7, SKIN)))

    without_porn = moderate(emulator, key, Scenes=["terrorism", "ad"])["ModerationResult"]
    default = moderate(emulator, key)["ModerationResult"]

    assert without_porn["Suggestion"] == "pass"
    assert default["Suggestion"] == "block"


def test_the_same_bytes_and_parameters_always_get_the_same_verdict(emulator, stored):
    key = stored(png(with_area(0.3, SKIN)))

    results = [moderate(emulator, key)["ModerationResult"] for _ in range(2)]

    assert results[0] == results[1]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_frames_are_sampled_by_interval_and_max_frames(emulator, stored, fmt):
    frames = [with_area(0, (90, 110, 130 + i)) for i in range(6)]
    frames[1] = with_area(0.8, SKIN)  # not sampled with Interval 2
    frames[2] = with_area(0.25, SKIN)
    frames[4] = with_area(0.7, SKIN)
    key = stored(animated(frames, fmt), f"animated.{fmt.lower()}")

    sampled = moderate(emulator, key, Interval=2, MaxFrames=3)["ModerationResult"]
    first_only = moderate(emulator, key)["ModerationResult"]
    capped = moderate(emulator, key, Interval=1, MaxFrames=2)["ModerationResult"]

    assert sampled["Frames"]["TotalCount"] == 3
    assert [(f["Offset"], f["Label"]) for f in sampled["Frames"]["BlockFrames"]] == [
        (2, "sexy"),
        (4, "porn"),
    ]
    assert sampled["Suggestion"] == "block"
    assert sampled["Categories"] == ["porn", "sexy"]
    assert first_only["Frames"] == {"TotalCount": 1, "BlockFrames": []}
    assert first_only["Suggestion"] == "pass"
    assert [(f["Offset"], f["Label"]) for f in capped["Frames"]["BlockFrames"]] == [(1, "porn")]


def write_rules(tmp_path: Path, rules: list[dict[str, Any]]) -> Path:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    return path


def test_the_first_rule_whose_key_glob_matches_decides(start_emulator, stored, tmp_path):
    key = stored(png(with_area(0.7, SKIN)))
    folder = key.rsplit("/", 1)[0]
    rules = write_rules(
        tmp_path,
        [
            {"match": {"key": "images/*.gif"}, "suggestion": "block", "categories": ["porn"]},
            {"match": {"key": f"{folder}/*.png"}, "suggestion": "pass"},
            {"match": {"key": "*"}, "suggestion": "review", "categories": ["ad"]},
        ],
    )
    emulator = start_emulator(rules=rules)

    result = moderate(emulator, key)["ModerationResult"]

    assert result["Suggestion"] == "pass"  # despite the skin: the rule wins
    assert result["Categories"] == []
    assert result["Frames"] == {"TotalCount": 1, "BlockFrames": []}


def test_a_rule_can_match_the_files_sha256(start_emulator, stored, tmp_path):
    data = png(with_area(0, SKIN))
    key = stored(data)
    digest = hashlib.sha256(data).hexdigest()
    rules = write_rules(
        tmp_path,
        [
            {
                "match": {"sha256": digest.upper()},
                "suggestion": "review",
                "categories": ["bloody", "weapon"],
                "rate": 77.5,
            }
        ],
    )
    emulator = start_emulator(rules=rules)

    result = moderate(emulator, key, Scenes=["porn"])["ModerationResult"]

    assert result["Suggestion"] == "review"
    assert result["Categories"] == ["bloody", "weapon"]
    assert result["Frames"]["BlockFrames"] == [{"Label": "bloody", "Offset": 0, "Rate": 77.5}]


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        ({"match": {}}, "list"),
        ([{"match": {"key": "*"}, "suggestion": "maybe"}], "rule 1"),
        ([{"match": {"key": "*"}, "suggestion": "block"}], "category"),
        ([{"match": {"name": "*"}, "suggestion": "pass"}], "match"),
        ([{"match": {"sha256": "abc"}, "suggestion": "pass"}], "64 hex"),
        ([{"match": {"key": "*"}, "suggestion": "pass", "rate": 101}], "rate"),
        (
            [
                {
                    "match": {"key": "*"},
                    "suggestion": "review",
                    "categories": ["ad"],
                    "manual_review": "maybe",
                }
            ],
            "manual_review. must be pass or block",
        ),
        (
            [
                {
                    "match": {"key": "*"},
                    "suggestion": "block",
                    "categories": ["ad"],
                    "manual_review": "pass",
                }
            ],
            "for review rules only",
        ),
    ],
)
def test_a_malformed_rules_file_is_refused_at_start(tmp_path, rules, problem):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))

    with pytest.raises(RulesError, match=problem):
        Emulator(
            access_key_id=KEY_ID,
            access_key_secret=SECRET,
            project=PROJECT,
            bucket=BUCKET,
            rules=path,
        )


def test_the_example_rules_file_loads():
    example = (
        Path(__file__).parent.parent / "moderation" / "imm" / "emulator" / "rules.example.json"
    )
    emulator = Emulator(
        access_key_id=KEY_ID,
        access_key_secret=SECRET,
        project=PROJECT,
        bucket=BUCKET,
        rules=example,
    )

    assert len(emulator.rules) == 3
    emulator.stop()


# --- notifications --------------------------------------------------------------------------


def test_a_finished_task_is_notified_with_the_envelope_and_the_token(
    start_emulator, stored, receiver
):
    emulator = start_emulator(
        notify_url=receiver.url, notify_token="s3cret-token", delay=0.2, region="cn-shanghai"
    )
    key = stored(png(with_area(0.25, SKIN)))
    created = create(emulator, key, Tags={"image": "7"}, UserData="u-7")

    [message] = receiver.wait_for(1)

    headers, _ = receiver.received[0]
    assert headers["content-type"] == "application/json"
    assert headers["x-imm-notify-token"] == "s3cret-token"
    assert set(message) == {"id", "source", "type", "subject", "time", "content"}
    assert message["source"] == "acs.imm"
    assert message["type"] == "imm:Task:ImageModeration"
    assert message["subject"] == (
        f"acs:imm:cn-shanghai:{emulator.account_id}:{PROJECT}/imm:Task:ImageModeration"
    )
    assert message["time"].isdigit()
    content = json.loads(message["content"])
    assert list(content)[:12] == [
        "ProjectName", "DatasetName", "RequestId", "StartTime", "EndTime", "UserData",
        "TaskType", "TaskId", "Status", "Code", "Message", "EventSourceId",
    ]  # fmt: skip
    assert content["TaskId"] == created.body["TaskId"]
    assert content["RequestId"] == created.body["RequestId"]
    assert content["Status"] == "Succeeded"
    assert content["UserData"] == "u-7"
    assert content["Tags"] == {"image": "7"}
    assert content["ModerationResult"]["Suggestion"] == "review"
    assert content["ModerationResult"]["Categories"] == ["sexy"]
    assert TIME.fullmatch(content["EndTime"])
    started = datetime.fromisoformat(content["StartTime"])
    ended = datetime.fromisoformat(content["EndTime"])
    assert ended - started >= timedelta(seconds=0.2)  # the delay was waited for
    assert int(message["time"]) == round(ended.timestamp() * 1000)


def test_a_failed_task_is_notified_without_a_verdict(start_emulator, receiver):
    emulator = start_emulator(notify_url=receiver.url)
    create(emulator, "images/00/missing.png")

    [message] = receiver.wait_for(1)

    content = json.loads(message["content"])
    assert content["Status"] == "Failed"
    assert content["Code"] == "ResourceNotFound"
    assert "ModerationResult" not in content
    assert "Tags" not in content


def test_a_failed_delivery_is_retried_and_logged_without_the_token(start_emulator, caplog):
    receiver = Receiver(fail_first=2)
    caplog.set_level(logging.INFO, logger="moderation.imm.emulator")
    try:
        emulator = start_emulator(
            notify_url=receiver.url + "?key=in-the-url", notify_token="t0ken-value"
        )
        create(emulator)
        receiver.wait_for(1)
    finally:
        receiver.stop()

    assert receiver.attempts == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "HTTP 500" in warnings[0].getMessage()
    assert "t0ken-value" not in caplog.text
    assert "in-the-url" not in caplog.text


def expected_deliveries(seed: int, drop_rate: float, duplicate_rate: float, tasks: list[str]):
    """What the documented draws decide: per finished task, drop? then duplicate?"""
    rnd = random.Random(seed)
    counts = collections.Counter()
    for task_id in tasks:
        drop = rnd.random() < drop_rate
        duplicate = rnd.random() < duplicate_rate
        if not drop:
            counts[task_id] = 2 if duplicate else 1
    return counts


def test_notifications_are_dropped_and_duplicated_as_the_seed_decides(start_emulator, receiver):
    seed = 5
    emulator = start_emulator(notify_url=receiver.url, drop_rate=0.4, duplicate_rate=0.4, seed=seed)
    tasks = [create_task(emulator) for _ in range(8)]
    expected = expected_deliveries(seed, 0.4, 0.4, tasks)
    # The seed exercises both switches.
    assert len(expected) < 8
    assert 2 in expected.values()

    receiver.wait_for(sum(expected.values()))
    emulator.stop()

    assert collections.Counter(receiver.task_ids) == expected
    bodies = collections.defaultdict(set)
    for _, body in receiver.received:
        bodies[json.loads(json.loads(body)["content"])["TaskId"]].add(body)
    assert all(len(copies) == 1 for copies in bodies.values())  # a duplicate is the same message


def test_reordering_sends_each_held_batch_in_reverse(start_emulator, receiver):
    emulator = start_emulator(
        notify_url=receiver.url, reorder=True, reorder_batch=3, reorder_window=0.3
    )
    tasks = [create_task(emulator) for _ in range(4)]

    receiver.wait_for(4)

    assert receiver.task_ids == [tasks[2], tasks[1], tasks[0], tasks[3]]


def test_no_notification_is_sent_without_a_notify_url(emulator):
    assert emulator.notifier is None


# --- IMM's manual review ---------------------------------------------------------------------


def contents(receiver: Receiver, count: int) -> list[dict[str, Any]]:
    return [json.loads(message["content"]) for message in receiver.wait_for(count)]


def test_manual_review_follows_a_review_verdict_with_a_second_notification(
    start_emulator, stored, receiver
):
    emulator = start_emulator(notify_url=receiver.url, manual_review=0.3)
    strong = create_task(emulator, stored(png(with_area(0.35, SKIN))))  # sexy, rate about 90
    weak = create_task(emulator, stored(png(with_area(0.25, SKIN))))  # sexy, rate about 70

    messages = contents(receiver, 4)

    by_task = collections.defaultdict(list)
    for content in messages:
        by_task[content["TaskId"]].append(content)
    first, second = by_task[strong]
    assert first["ModerationResult"]["Suggestion"] == "review"
    assert first["ModerationResult"]["Frames"]["BlockFrames"][0]["Rate"] >= 75
    assert second["Status"] == "Succeeded"
    assert second["ModerationResult"] == first["ModerationResult"] | {"Suggestion": "block"}
    assert second["StartTime"] == first["StartTime"]
    waited = datetime.fromisoformat(second["EndTime"]) - datetime.fromisoformat(first["EndTime"])
    assert waited >= timedelta(seconds=0.3)
    first, second = by_task[weak]
    assert first["ModerationResult"]["Frames"]["BlockFrames"][0]["Rate"] < 75
    assert second["ModerationResult"] == {
        "URI": first["ModerationResult"]["URI"],
        "Suggestion": "pass",
        "Categories": [],
        "Frames": {"TotalCount": 1, "BlockFrames": []},
    }
    # Polling now gives the word after the manual review.
    assert finished(emulator, strong)["ModerationResult"]["Suggestion"] == "block"
    assert finished(emulator, weak)["ModerationResult"]["Suggestion"] == "pass"


def test_manual_review_leaves_pass_and_block_verdicts_alone(start_emulator, stored, receiver):
    emulator = start_emulator(notify_url=receiver.url, manual_review=0.01)
    passed = create_task(emulator, stored(png(with_area(0, SKIN))))
    blocked = create_task(emulator, stored(png(with_area(0.7, SKIN))))
    reviewed = create_task(emulator, stored(png(with_area(0.35, SKIN))))

    messages = contents(receiver, 4)

    # Tasks are processed in the order they are due, so the review's second word comes last.
    assert [m["TaskId"] for m in messages] == [passed, blocked, reviewed, reviewed]
    assert [m["ModerationResult"]["Suggestion"] for m in messages] == [
        "pass", "block", "review", "block",
    ]  # fmt: skip


def test_a_rule_says_what_manual_review_concludes(start_emulator, stored, receiver, tmp_path):
    rules = write_rules(
        tmp_path,
        [
            {"match": {"key": "*"}, "suggestion": "review", "categories": ["ad"], "rate": 99,
             "manual_review": "pass"},
        ],
    )  # fmt: skip
    emulator = start_emulator(notify_url=receiver.url, manual_review=0.01, rules=rules)
    create_task(emulator, stored(png(with_area(0, SKIN))))

    first, second = contents(receiver, 2)

    assert first["ModerationResult"]["Suggestion"] == "review"
    assert second["ModerationResult"]["Suggestion"] == "pass"  # despite the rate of 99


def test_without_manual_review_a_review_verdict_stands(emulator, stored):
    task_id = create_task(emulator, stored(png(with_area(0.35, SKIN))))
    assert finished(emulator, task_id)["ModerationResult"]["Suggestion"] == "review"

    task = emulator.store.get(task_id, now_ms=emulator.now_ms())
    assert (task.review_due_ms, task.review_outcome) == (None, None)


def test_a_pending_manual_review_survives_a_restart(start_emulator, stored, tmp_path, receiver):
    state = tmp_path / "state.sqlite3"
    first = start_emulator(state=state, manual_review=60)
    task_id = create_task(first, stored(png(with_area(0.35, SKIN))))
    assert finished(first, task_id)["ModerationResult"]["Suggestion"] == "review"
    first.stop()

    # Restarted two minutes later with manual review switched off: the review already under
    # way ends (its time has come), and is notified.
    second = start_emulator(state=state, notify_url=receiver.url, clock=lambda: time.time() + 120)

    [content] = contents(receiver, 1)
    assert content["TaskId"] == task_id
    assert content["ModerationResult"]["Suggestion"] == "block"
    assert finished(second, task_id)["ModerationResult"]["Suggestion"] == "block"


def test_the_second_word_is_later_than_the_first_even_in_the_same_millisecond(
    start_emulator, stored, receiver
):
    stopped = time.time()  # a clock that does not move: both words in the same millisecond
    emulator = start_emulator(notify_url=receiver.url, manual_review=0.0001, clock=lambda: stopped)
    create_task(emulator, stored(png(with_area(0.35, SKIN))))

    first, second = contents(receiver, 2)

    assert first["EndTime"] == first["StartTime"]
    later = datetime.fromisoformat(second["EndTime"]) - datetime.fromisoformat(first["EndTime"])
    assert later == timedelta(milliseconds=1)


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_manual_review_must_be_a_positive_finite_number_of_seconds(seconds):
    with pytest.raises(ValueError, match="manual_review must be a positive number"):
        Emulator(
            access_key_id=KEY_ID,
            access_key_secret=SECRET,
            project=PROJECT,
            bucket=BUCKET,
            manual_review=seconds,
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", None), ("0", None), ("2.5", 2.5), ("-1", "error"), ("nan", "error"), ("inf", "error")],
)
def test_the_manual_review_setting(value, expected):
    code = (
        "import os; os.environ.setdefault('SECRET_KEY', 'x'); "
        "from moderation import settings; print(settings.IMM_EMULATOR_MANUAL_REVIEW)"
    )
    env = {**os.environ, "IMM_EMULATOR_MANUAL_REVIEW": value, "DEBUG": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if expected == "error":
        assert run.returncode != 0
        assert "IMM_EMULATOR_MANUAL_REVIEW must be a number of seconds" in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == str(expected)


def test_a_state_file_from_before_manual_review_is_upgraded(tmp_path):
    import sqlite3

    from moderation.imm.emulator.store import TaskStore

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE tasks (task_id TEXT PRIMARY KEY, task_type TEXT NOT NULL, "
            "project TEXT NOT NULL, status TEXT NOT NULL, code TEXT NOT NULL DEFAULT '', "
            "message TEXT NOT NULL DEFAULT '', start_ms INTEGER NOT NULL, end_ms INTEGER, "
            "request_id TEXT NOT NULL, event_id TEXT NOT NULL, source_uri TEXT NOT NULL, "
            "scenes TEXT NOT NULL, interval INTEGER NOT NULL, max_frames INTEGER NOT NULL, "
            "tags TEXT, user_data TEXT, notification TEXT, result TEXT)"
        )
        old.execute(
            "INSERT INTO tasks (task_id, task_type, project, status, start_ms, request_id, "
            "event_id, source_uri, scenes, interval, max_frames) VALUES ('t-1', "
            "'ImageModeration', 'p', 'Running', 1000, 'r', 'e', 'oss://b/k', '[]', 1, 1)"
        )
    old.close()

    store = TaskStore(str(path))
    try:
        task = store.get("t-1", now_ms=2000)
        assert task is not None
        assert (task.status, task.review_due_ms, task.review_outcome) == ("Running", None, None)
        store.save(dataclasses.replace(task, review_due_ms=5000, review_outcome="pass"))
        assert [t.task_id for t in store.in_manual_review(now_ms=2000)] == ["t-1"]
    finally:
        store.close()


# --- lifecycle ------------------------------------------------------------------------------


def test_tasks_survive_a_restart_and_running_ones_resume(start_emulator, tmp_path, stored):
    state = tmp_path / "state.sqlite3"
    key = stored(png(with_area(0, SKIN)))
    first = start_emulator(state=state, delay=60)
    task_id = create_task(first, key)
    first.stop()

    second = start_emulator(state=state, delay=0)

    assert finished(second, task_id)["ModerationResult"]["Suggestion"] == "pass"


def test_stop_closes_the_port_and_ends_the_threads(start_emulator):
    before = set(threading.enumerate())
    emulator = start_emulator()
    port = emulator.port

    emulator.stop()

    assert set(threading.enumerate()) <= before
    with pytest.raises(urllib.error.URLError):
        send(f"http://127.0.0.1:{port}/", {})


def test_a_kept_alive_connection_serves_requests_until_stop(start_emulator):
    emulator = start_emulator()
    params = {"ProjectName": PROJECT}
    connection = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=5)

    def call() -> int:
        headers = signed_headers(emulator.port, "ListTasks", params)
        connection.request("POST", f"/?{acs3.canonical_query(params)}", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status

    assert [call(), call()] == [200, 200]  # one connection, two requests
    emulator.stop()
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        call()
    connection.close()


def test_the_command_serves_until_sigterm_and_then_stops_cleanly(settings, tmp_path):
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "IMM_EMULATOR_STATE": str(tmp_path / "state.sqlite3"),
        "MEDIA_ROOT": str(tmp_path / "media"),
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "imm_emulator", "--port", "0", "--notify-url", ""],
        cwd=Path(__file__).parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", banner)[1])
        reply = signed_call(
            SimpleNamespace(port=port),
            "ListTasks",
            {"ProjectName": settings.IMM_PROJECT},
            key_id=settings.IMM_ACCESS_KEY_ID,
            secret=settings.IMM_ACCESS_KEY_SECRET,
        )
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()

    assert "no notifications" in banner
    assert reply.status == 200, reply.body
    assert process.returncode == 0, err
    assert "IMM emulator stopped." in out


@pytest.mark.parametrize(
    ("arguments", "environment"),
    [(["--latency-ms", "40"], {}), ([], {"IMM_EMULATOR_LATENCY_MS": "40"})],
    ids=["option", "setting"],
)
def test_the_command_answers_late_by_its_latency(settings, tmp_path, arguments, environment):
    env = (
        os.environ
        | environment
        | {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "IMM_EMULATOR_STATE": str(tmp_path / "state.sqlite3"),
            "MEDIA_ROOT": str(tmp_path / "media"),
        }
    )
    command = [sys.executable, "manage.py", "imm_emulator", "--port", "0", "--notify-url", ""]
    process = subprocess.Popen(
        [*command, *arguments],
        cwd=Path(__file__).parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", banner)[1])
        started = time.monotonic()
        reply = signed_call(
            SimpleNamespace(port=port),
            "ListTasks",
            {"ProjectName": settings.IMM_PROJECT},
            key_id=settings.IMM_ACCESS_KEY_ID,
            secret=settings.IMM_ACCESS_KEY_SECRET,
        )
        took = time.monotonic() - started
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    finally:
        process.kill()

    assert "every answer 40 ms late" in banner
    assert reply.status == 200, reply.body
    assert took >= 0.04


@pytest.mark.parametrize("value", ["-1", "60001", "nan", "soon"])
def test_the_latency_setting_must_be_milliseconds_from_zero_to_a_minute(value):
    code = "import os; os.environ.setdefault('SECRET_KEY', 'x'); from moderation import settings"
    env = {**os.environ, "IMM_EMULATOR_LATENCY_MS": value, "DEBUG": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )

    assert run.returncode != 0
    assert "IMM_EMULATOR_LATENCY_MS must be a number" in run.stderr
