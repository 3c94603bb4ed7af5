"""Issue 9.1: verdicts cannot be forged or replayed. Each test replays a finding as an attacker
would, over HTTP against POST /imm/notifications/; Alibaba's certificate host is a transport
that counts what the server fetches."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.db import transaction
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moderation.imm import client as imm
from moderation.models import (
    AuditEntry,
    Image,
    ModerationResult,
    ModerationTask,
    NotificationInboxMessage,
)

from .conftest import apply_inbox
from .test_notifications import (
    CERT_URL,
    OWNER,
    TOKEN,
    TOPIC,
    URL,
    clear_certificate_caches,
    envelope,
    md5_as_rfc_1864_says,
    mns_body,
    mns_headers,
    post,
    post_mns,
    serve_certificates,
    signing_key,
    task_message,
)

pytestmark = pytest.mark.django_db

TASK_ID = "ImageModeration-11111111-2222-3333-4444-555555555555"
CERT_HOST = "https://mns-cert.oss-cn-hangzhou.aliyuncs.com"


@pytest.fixture(autouse=True)
def _token(settings):
    settings.IMM_NOTIFY_TOKEN = TOKEN


@pytest.fixture
def running_task(make_image) -> ModerationTask:
    image = make_image(status=Image.Status.SUBMITTED)
    return ModerationTask.objects.create(
        image=image,
        submission_key="k" * 32,
        task_id=TASK_ID,
        state=ModerationTask.State.RUNNING,
    )


@pytest.fixture
def fetched(settings, monkeypatch) -> list[str]:
    """A deployment notified by MNS topic TOPIC; the certificate URLs the server fetched."""
    settings.IMM_NOTIFICATION = f"mns:{TOPIC}"
    settings.IMM_REGION = "cn-hangzhou"
    settings.IMM_MNS_TOPIC_OWNER = ""
    return serve_certificates(monkeypatch, signing_key()[1])


def assert_nothing_changed(task: ModerationTask) -> None:
    task.image.refresh_from_db()
    assert task.image.status == Image.Status.SUBMITTED
    assert not NotificationInboxMessage.objects.exists()
    assert not ModerationResult.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="imm.").exists()


# --- The body is the body that was signed ----------------------------------------------------


def test_a_push_whose_body_was_swapped_after_signing_is_refused_before_any_fetch(
    running_task, fetched
):
    # MNS signs Content-MD5, not the body: an attacker replays a captured push (a "review")
    # with its signed headers and a body of their own that says "pass".
    captured = mns_body(task_message(TASK_ID, suggestion="review"))
    forged = mns_body(task_message(TASK_ID, suggestion="pass"))
    response = post_mns(forged, mns_headers(captured))
    assert response.status_code == 403
    assert response.json() == {"error": "the MNS push's Content-MD5 is not the MD5 of its body"}
    assert fetched == []
    assert_nothing_changed(running_task)


def test_a_push_without_content_md5_is_refused_before_any_fetch(running_task, fetched):
    body = mns_body(task_message(TASK_ID, suggestion="pass"))
    response = post_mns(body, mns_headers(body, content_md5=""))
    assert response.status_code == 400
    assert "no Content-MD5 header" in response.json()["error"]
    assert fetched == []
    assert_nothing_changed(running_task)


@pytest.mark.parametrize(
    "encode",
    [
        lambda body: __import__("hashlib").md5(body).hexdigest(),  # the hex digest, bare
        lambda body: base64.b64encode(
            __import__("hashlib").md5(body).hexdigest().upper().encode()
        ).decode(),
        lambda body: base64.b64encode(__import__("hashlib").sha256(body).digest()).decode(),
    ],
    ids=["bare-hex", "base64-of-uppercase-hex", "sha256"],
)
def test_content_md5_in_no_other_encoding_is_taken(running_task, fetched, encode):
    body = mns_body(task_message(TASK_ID, suggestion="pass"))
    response = post_mns(body, mns_headers(body, content_md5=encode(body)))
    assert response.status_code == 403
    assert fetched == []
    assert_nothing_changed(running_task)


# --- Only the configured topic ---------------------------------------------------------------


def test_a_push_from_another_topic_is_refused_before_any_fetch(running_task, fetched):
    # Anyone can subscribe this endpoint to a topic of their own, and MNS signs those pushes too.
    body = mns_body(task_message(TASK_ID, suggestion="pass"), topic="someone-elses-topic")
    response = post_mns(body, mns_headers(body))
    assert response.status_code == 403
    assert response.json() == {"error": "the MNS push is not from the topic IMM_NOTIFICATION names"}
    assert fetched == []
    assert_nothing_changed(running_task)


def test_a_push_from_a_topic_of_the_same_name_in_another_account_is_refused(
    running_task, fetched, settings
):
    settings.IMM_MNS_TOPIC_OWNER = OWNER
    body = mns_body(task_message(TASK_ID, suggestion="pass"), owner="6666666666666666")
    response = post_mns(body, mns_headers(body))
    assert response.status_code == 403
    assert "TopicOwner" in response.json()["error"]
    assert fetched == []
    assert_nothing_changed(running_task)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(envelope(task_message(TASK_ID, suggestion="pass"))).encode(),
        json.dumps(task_message(TASK_ID, suggestion="pass")).encode(),
    ],
    ids=["envelope", "bare-task-message"],
)
def test_a_simplified_push_has_no_topic_to_check_and_is_refused_with_the_fix(
    running_task, fetched, body
):
    response = post_mns(body, mns_headers(body))
    assert response.status_code == 400
    assert "NotifyContentFormat JSON or XML" in response.json()["error"]
    assert fetched == []
    assert_nothing_changed(running_task)


@pytest.mark.parametrize("channel", ["none", "rocketmq:MQ_INST_1:imm-results", "mns:"])
def test_a_deployment_not_on_mns_refuses_every_mns_push_before_any_fetch(
    running_task, fetched, settings, channel
):
    settings.IMM_NOTIFICATION = channel
    body = mns_body(task_message(TASK_ID, suggestion="pass"))
    headers = mns_headers(body)
    headers["X-IMM-Notify-Token"] = TOKEN  # a token alongside does not open the MNS door
    response = post_mns(body, headers)
    assert response.status_code == 403
    assert "IMM_NOTIFICATION is not mns:<topic>" in response.json()["error"]
    assert fetched == []
    assert_nothing_changed(running_task)


# --- Nothing is fetched before the request has proved what it can ----------------------------


def _stale(headers: dict) -> None:
    headers["Date"] = "Mon, 01 Jan 2024 00:00:00 GMT"


def _cert_url(url: str):
    def change(headers: dict) -> None:
        headers["x-mns-signing-cert-url"] = base64.b64encode(url.encode()).decode()

    return change


def _set(name: str, value: str | None):
    def change(headers: dict) -> None:
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value

    return change


REFUSED_WITHOUT_A_FETCH = {
    "stale-date": _stale,
    "no-date": _set("Date", None),
    "garbage-date": _set("Date", "yesterday-ish"),
    "future-date": _set("Date", "Fri, 01 Jan 2100 00:00:00 GMT"),
    "no-authorization": _set("Authorization", None),
    "authorization-not-base64": _set("Authorization", "MNS not-base64!"),
    "cert-url-not-base64": _set("x-mns-signing-cert-url", "%%%"),
    "cert-url-http": _cert_url(
        "http://mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem"
    ),
    "cert-url-port": _cert_url(f"{CERT_HOST}:8443/x509_public_certificate.pem"),
    "cert-url-userinfo": _cert_url(
        "https://me@mns-cert.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem"
    ),
    "cert-url-query": _cert_url(f"{CERT_HOST}/x509_public_certificate.pem?v=1"),
    "cert-url-fragment": _cert_url(f"{CERT_HOST}/x509_public_certificate.pem#a"),
    "cert-url-escapes": _cert_url(f"{CERT_HOST}/x509%5Fpublic_certificate.pem"),
    "cert-url-dot-segments": _cert_url(f"{CERT_HOST}/a/../x509_public_certificate.pem"),
    "cert-url-other-path": _cert_url(f"{CERT_HOST}/attacker-chosen-object.pem"),
    "cert-url-other-region": _cert_url(
        "https://mns-cert.oss-cn-shenzhen.aliyuncs.com/x509_public_certificate.pem"
    ),
    "cert-url-lookalike-host": _cert_url(
        "https://mns-cert.oss-cn-hangzhou.aliyuncs.com.example.net/x509_public_certificate.pem"
    ),
    "cert-url-internal-host": _cert_url("https://169.254.169.254/x509_public_certificate.pem"),
}


@pytest.mark.parametrize("change", REFUSED_WITHOUT_A_FETCH.values(), ids=REFUSED_WITHOUT_A_FETCH)
def test_a_push_that_fails_a_check_needing_no_certificate_causes_no_fetch(
    running_task, fetched, change
):
    body = mns_body(task_message(TASK_ID, suggestion="pass"))
    headers = mns_headers(body)
    change(headers)
    response = post_mns(body, headers)
    assert 400 <= response.status_code < 500
    assert fetched == []
    assert_nothing_changed(running_task)


@pytest.mark.parametrize(
    "message",
    [
        task_message("x" * 129),
        task_message(TASK_ID, ModerationResult={"Suggestion": "block", "Frames": [1]}),
        {"hello": "world"},
    ],
    ids=["long-task-id", "frames-a-list", "no-task-message"],
)
def test_a_push_whose_message_does_not_parse_causes_no_fetch(running_task, fetched, message):
    body = mns_body(message)
    response = post_mns(body, mns_headers(body))
    assert response.status_code == 400
    assert fetched == []
    assert_nothing_changed(running_task)


def test_an_attacker_rotating_certificate_urls_gets_a_handful_of_fetches_a_minute(
    running_task, fetched
):
    # Every URL has the published form, so only the limit stands between a flood of pushes
    # (signed by the attacker's own key) and a flood of fetches from Alibaba's host.
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    statuses = []
    for n in range(imm.MNS_CERTIFICATE_URLS_PER_MINUTE * 3):
        url = f"{CERT_HOST}/x509_public_certificate.pem.v{n}"
        body = mns_body(task_message(TASK_ID, suggestion="pass"))
        response = post_mns(body, mns_headers(body, cert_url=url, key=attacker))
        statuses.append(response.status_code)
    limit = imm.MNS_CERTIFICATE_URLS_PER_MINUTE
    assert len(fetched) == limit == len(set(fetched))
    assert statuses == [403] * limit + [429] * (len(statuses) - limit)
    assert_nothing_changed(running_task)


def test_the_limit_holds_for_a_process_that_has_cached_nothing_yet(running_task, fetched):
    # Another worker process starts with an empty certificate cache but shares Django's cache.
    limit = imm.MNS_CERTIFICATE_URLS_PER_MINUTE
    for n in range(limit):
        clear_certificate_caches()
        url = f"{CERT_HOST}/x509_public_certificate.pem.v{n}"
        body = mns_body(task_message(TASK_ID, suggestion="pass"))
        post_mns(body, mns_headers(body, cert_url=url))
    clear_certificate_caches()
    body = mns_body(task_message(TASK_ID, suggestion="block"))
    response = post_mns(
        body, mns_headers(body, cert_url=f"{CERT_HOST}/x509_public_certificate.pem.new")
    )
    assert response.status_code == 429
    assert len(fetched) == limit


def test_a_url_that_failed_is_not_fetched_again_at_once(running_task, monkeypatch, settings):
    settings.IMM_NOTIFICATION = f"mns:{TOPIC}"
    fetched = serve_certificates(monkeypatch, b"Not Found", status=404)
    for _ in range(5):
        body = mns_body(task_message(TASK_ID, suggestion="pass"))
        assert post_mns(body, mns_headers(body)).status_code == 502
    assert fetched == [CERT_URL]
    assert_nothing_changed(running_task)


# --- Bodies that cannot be parsed: a 400 with the reason, never a 500, nothing stored ---------


def _task(**extra) -> bytes:
    return json.dumps(task_message(TASK_ID, **extra)).encode()


def _verdict(**frames) -> bytes:
    return _task(
        ModerationResult={
            "Suggestion": "block",
            "Categories": ["porn"],
            "Frames": {"TotalCount": 1, "BlockFrames": [], **frames},
        }
    )


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Notification><TopicName>imm-results</TopicName><Message>&lol3;</Message></Notification>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE n [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Notification><TopicName>imm-results</TopicName><Message>&xxe;</Message></Notification>"""

UNPARSABLE = {
    "json-nested-100k-deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    "envelope-content-nested-deep": (
        json.dumps({"source": "acs.imm", "type": "x", "content": "[" * 50_000}).encode(),
        "nested too deep",
    ),
    "message-nested-40-deep": (
        _task(Tags={"a": json.loads("[" * 40 + "]" * 40)}),
        "nested more than 32 levels",
    ),
    "nan": (_task(Extra=float("nan")), "NaN"),
    "infinity": (b'{"TaskId": "' + TASK_ID.encode() + b'", "X": -Infinity}', "Infinity"),
    "float-overflow": (b'{"TaskId": "' + TASK_ID.encode() + b'", "X": 1e999}', "infinite"),
    "huge-integer": (
        b'{"TaskId": "' + TASK_ID.encode() + b'", "X": ' + b"9" * 4000 + b"}",
        "larger than 64 bits",
    ),
    "integer-over-4300-digits": (
        b'{"TaskId": "' + TASK_ID.encode() + b'", "X": ' + b"9" * 5000 + b"}",
        "not valid JSON",
    ),
    "nul-in-message": (_task(Status="Failed", Message="a\u0000b"), "NUL"),
    "nul-in-a-key": (_task(**{"K\u0000": 1}), "NUL"),
    "lone-surrogate": (b'{"TaskId": "' + TASK_ID.encode() + b'", "Code": "\\ud800"}', "surrogate"),
    "task-id-129-chars": (json.dumps(task_message("T" * 129)).encode(), "longer than 128"),
    "status-too-long": (_task(Status="S" * 17), "Status is longer than 16"),
    "code-too-long": (_task(Status="Failed", Code="C" * 129), "Code is longer than 128"),
    "status-an-object": (_task(Status={"a": 1}), "Status is not text"),
    "moderation-result-a-list": (_task(ModerationResult=["block"]), "not an object"),
    "suggestion-a-number": (_task(ModerationResult={"Suggestion": 7}), "not a string"),
    "suggestion-too-long": (_task(ModerationResult={"Suggestion": "b" * 17}), "longer than 16"),
    "uri-too-long": (
        _task(ModerationResult={"Suggestion": "pass", "URI": "oss://" + "u" * 1100}),
        "URI is longer than 1024",
    ),
    "categories-a-string": (
        _task(ModerationResult={"Suggestion": "block", "Categories": "porn"}),
        "Categories is a string",
    ),
    "frames-a-list": (_task(ModerationResult={"Suggestion": "block", "Frames": []}), "Frames"),
    "block-frames-an-object": (_verdict(BlockFrames={"0": {}}), "BlockFrames is an object"),
    "block-frame-a-string": (_verdict(BlockFrames=["porn"]), "BlockFrames[0] is a string"),
    "offset-negative": (_verdict(BlockFrames=[{"Offset": -1}]), "Offset is out of range"),
    "offset-over-32-bits": (_verdict(BlockFrames=[{"Offset": 2**40}]), "out of range"),
    "total-count-huge": (_verdict(TotalCount=10**18), "TotalCount is out of range"),
    "rate-not-a-number": (_verdict(BlockFrames=[{"Rate": "high"}]), "Rate is not a number"),
    "end-time-impossible": (_task(EndTime="2026-13-45T25:61:00Z"), "EndTime is not a valid"),
    "end-time-overflows": (_task(EndTime="9999-12-31T23:59:59-10:00"), "EndTime is not a valid"),
    "xml-billion-laughs": (BILLION_LAUGHS, "DOCTYPE"),
    "xml-external-entity": (EXTERNAL_ENTITY, "DOCTYPE"),
    "xml-undeclared-entity": (b"<N><Message>&boom;</Message></N>", "does not parse"),
    "xml-nested-deep": (b"<a>" * 10_000 + b"</a>" * 10_000, "nested more than 8"),
    "xml-unknown-encoding": (
        b'<?xml version="1.0" encoding="x-unknown"?><N><Message>e30=</Message></N>',
        "XML body",
    ),
    "utf-16-json-with-bad-surrogate": (b"\xff\xfe{\x00\x00\xd8}\x00", "not valid JSON"),
}


@pytest.mark.parametrize(("body", "reason"), UNPARSABLE.values(), ids=UNPARSABLE)
def test_a_body_that_cannot_be_parsed_or_stored_gets_400_with_the_reason(
    running_task, body, reason
):
    response = post(body)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert_nothing_changed(running_task)


def test_user_data_nested_too_deep_for_json_is_stored_as_text(running_task):
    response = post(_task(UserData="[" * 2000))
    assert response.status_code == 200
    assert NotificationInboxMessage.objects.get().message["UserData"] == "[" * 2000
    assert apply_inbox() == ["recorded"]
    assert ModerationResult.objects.get().raw["UserData"] == "[" * 2000


# --- Fuzzing: no 5xx, and a refusal stores nothing -------------------------------------------

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# NUL, lone surrogates, line separators: what PostgreSQL's text and jsonb or a log line refuse.
odd_text = st.text(alphabet=st.sampled_from("a\x00\ud800\udc00\udfff\u2028\n<&"), max_size=6)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | odd_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | odd_text, children, max_size=4)
    ),
    max_leaves=20,
)
# Values of the right type for most fields: mutations that still parse reach the database.
plausible_values = (
    st.text(max_size=20)
    | st.integers(min_value=0, max_value=2**31 - 1)
    | st.floats(min_value=0, max_value=100)
    | st.lists(st.text(max_size=8), max_size=3)
    | st.none()
)
FIELDS = [
    "TaskId",
    "TaskType",
    "Status",
    "Code",
    "Message",
    "StartTime",
    "EndTime",
    "UserData",
    "Tags",
    "ModerationResult",
    "Suggestion",
]
VERDICT_FIELDS = ["URI", "Suggestion", "Categories", "Frames"]
FRAME_FIELDS = ["TotalCount", "BlockFrames"]


@st.composite
def mutated_task_messages(draw) -> dict:
    """A valid task message with a few of its values, at any level, replaced by anything."""
    message = task_message(
        draw(st.sampled_from([TASK_ID, "ImageModeration-unknown"])),
        suggestion=draw(st.sampled_from(["block", "pass", "review", None])),
    )
    message["ModerationResult"] = message.get("ModerationResult") or {
        "Suggestion": "block",
        "Frames": {"TotalCount": 1, "BlockFrames": [{"Label": "porn", "Offset": 0, "Rate": 9}]},
    }
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = draw(st.sampled_from(["top", "verdict", "frames", "frame"]))
        value = draw(plausible_values | json_values)
        verdict = message["ModerationResult"]
        if where == "top":
            message[draw(st.sampled_from(FIELDS))] = value
        elif where == "verdict" and isinstance(verdict, dict):
            verdict[draw(st.sampled_from(VERDICT_FIELDS))] = value
        elif where == "frames" and isinstance(verdict, dict):
            if isinstance(verdict.get("Frames"), dict):
                verdict["Frames"][draw(st.sampled_from(FRAME_FIELDS))] = value
        elif where == "frame" and isinstance(verdict, dict):
            frames = verdict.get("Frames")
            if isinstance(frames, dict) and isinstance(frames.get("BlockFrames"), list):
                frames["BlockFrames"].append(
                    {draw(st.sampled_from(["Label", "Offset", "Rate"])): value}
                )
    return message


def wrapped(message: dict, how: str) -> bytes:
    if how == "envelope":
        return json.dumps(envelope(message)).encode()
    if how == "envelope-object":
        return json.dumps({**envelope(message), "content": message}).encode()
    if how == "mns-json":
        return mns_body(message)
    if how == "mns-xml":
        return mns_body(message, xml=True)
    return json.dumps(message).encode()


WRAPPINGS = ["bare", "envelope", "envelope-object", "mns-json", "mns-xml"]
fuzzed_bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.builds(wrapped, mutated_task_messages(), st.sampled_from(WRAPPINGS))
    | st.builds(
        lambda prefix, body: prefix + body,
        st.sampled_from([b"[" * 5000, b"<a>" * 50, b"\xef\xbb\xbf", b"<!DOCTYPE a>"]),
        st.builds(wrapped, mutated_task_messages(), st.sampled_from(WRAPPINGS)),
    )
)


def deliver_and_check(send) -> None:
    """Send one request in a savepoint rolled back afterwards; no 5xx, a refusal stores nothing,
    and what is accepted the applier applies without an error."""
    with transaction.atomic():
        results, entries = ModerationResult.objects.count(), AuditEntry.objects.count()
        waiting = NotificationInboxMessage.objects.count()
        response = send()
        assert response.status_code < 500, response.content
        if response.status_code >= 400:
            assert "error" in response.json()
            assert NotificationInboxMessage.objects.count() == waiting
            assert ModerationResult.objects.count() == results
            assert AuditEntry.objects.count() == entries
        else:
            assert NotificationInboxMessage.objects.count() == waiting + 1
            assert "" not in apply_inbox()
            assert not NotificationInboxMessage.objects.filter(attempts__gt=0).exists()
        transaction.set_rollback(True)


@FUZZ
@given(body=fuzzed_bodies)
def test_fuzzed_bodies_with_the_token_never_get_a_5xx_and_refusals_store_nothing(
    running_task, body
):
    deliver_and_check(lambda: post(body))


@st.composite
def fuzzed_mns_pushes(draw) -> tuple[bytes, dict]:
    message = draw(mutated_task_messages())
    body = draw(
        st.sampled_from(["mns-json", "mns-xml", "envelope"]).map(lambda how: wrapped(message, how))
        | st.binary(max_size=200)
    )
    headers = mns_headers(body)
    for name in draw(
        st.lists(
            st.sampled_from(
                ["Date", "Authorization", "Content-MD5", "x-mns-signing-cert-url", "none"]
            ),
            max_size=2,
        )
    ):
        if name != "none":
            headers[name] = draw(
                st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
            )
    if draw(st.booleans()):
        headers["Content-MD5"] = md5_as_rfc_1864_says(body)
    return body, headers


@FUZZ
@given(push=fuzzed_mns_pushes())
def test_fuzzed_mns_pushes_never_get_a_5xx_and_refusals_store_nothing(running_task, fetched, push):
    body, headers = push
    deliver_and_check(lambda: post_mns(body, headers))
    assert set(fetched) <= {CERT_URL}


def test_an_old_signed_push_cannot_be_replayed_after_15_minutes(running_task, fetched):
    body = mns_body(task_message(TASK_ID, suggestion="pass"))
    headers = mns_headers(body, date=datetime.now(UTC) - timedelta(minutes=16))
    response = Client().post(
        URL, data=body, content_type=headers.pop("Content-Type"), headers=headers
    )
    assert response.status_code == 403
    assert fetched == []
    assert_nothing_changed(running_task)
