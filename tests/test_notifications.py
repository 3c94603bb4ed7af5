"""POST /imm/notifications/: every wrapping, every way to be refused, never a 500."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from django.test import Client
from django_tasks import default_task_backend

from moderation.imm import client as imm
from moderation.imm import notifications
from moderation.models import (
    AuditEntry,
    Image,
    ModerationResult,
    ModerationTask,
    NotificationInboxMessage,
)

from .conftest import apply_inbox

pytestmark = pytest.mark.django_db

URL = "/imm/notifications/"
TOKEN = "test-notify-token"
CERT_URL = "https://mns-cert.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate_test.pem"


@pytest.fixture(autouse=True)
def _token(settings):
    settings.IMM_NOTIFY_TOKEN = TOKEN
    default_task_backend.clear()


@pytest.fixture
def running_task(make_image):
    image = make_image(status=Image.Status.SUBMITTED)
    return ModerationTask.objects.create(
        image=image,
        submission_key="k" * 32,
        task_id="ImageModeration-11111111-2222-3333-4444-555555555555",
        state=ModerationTask.State.RUNNING,
    )


def task_message(task_id: str, suggestion: str | None = "block", **extra) -> dict:
    message = {
        "ProjectName": "moderation-local",
        "TaskType": "ImageModeration",
        "TaskId": task_id,
        "Status": "Succeeded",
        "Code": "",
        "Message": "",
        "StartTime": "2026-11-25T08:30:01.123Z",
        "EndTime": "2026-11-25T08:30:03.456Z",
        "UserData": "",
    }
    if suggestion:
        message["ModerationResult"] = {
            "URI": "oss://bucket/key.png",
            "Suggestion": suggestion,
            "Categories": ["porn"] if suggestion == "block" else [],
            "Frames": {"TotalCount": 1, "BlockFrames": []},
        }
    message.update(extra)
    return message


def envelope(message: dict) -> dict:
    return {
        "id": "25E-EXAMPLE",
        "source": "acs.imm",
        "type": "imm:Task:ImageModeration",
        "subject": "acs:imm:cn-hangzhou:123:moderation-local/imm:Task:ImageModeration",
        "time": "1764059403456",
        "content": json.dumps(message),
    }


def post(body, *, token: str | None = TOKEN, content_type="application/json", **headers):
    if token is not None:
        headers["X-IMM-Notify-Token"] = token
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return Client().post(URL, data=data, content_type=content_type, headers=headers)


def stored_nothing() -> bool:
    return not NotificationInboxMessage.objects.exists() and not ModerationResult.objects.exists()


def test_a_cloudevents_envelope_is_stored_and_the_applier_routes_the_image(running_task):
    response = post(envelope(task_message(running_task.task_id)))
    assert response.status_code == 200
    assert response.json() == {"status": "accepted", "task_id": running_task.task_id}
    stored = NotificationInboxMessage.objects.get()
    assert (stored.source, stored.task_id, stored.applied_at) == (
        "notification",
        running_task.task_id,
        None,
    )
    assert stored.message == task_message(running_task.task_id)
    # Nothing is routed, recorded or audited inside the request.
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.SUBMITTED
    assert not ModerationResult.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="imm.").exists()

    assert apply_inbox() == ["recorded"]
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.REJECTED
    stored.refresh_from_db()
    assert stored.applied_at is not None
    assert stored.applied_at >= stored.received_at
    result = ModerationResult.objects.get()
    assert result.source == "notification"
    assert result.raw["TaskId"] == running_task.task_id
    assert result.applied


def test_the_same_notification_twice_changes_nothing(running_task):
    body = envelope(task_message(running_task.task_id))
    post(body)
    assert apply_inbox() == ["recorded"]
    entries = AuditEntry.objects.count()
    response = post(body)
    assert response.json()["status"] == "accepted"
    assert apply_inbox() == ["duplicate"]
    assert ModerationResult.objects.count() == 1
    assert AuditEntry.objects.count() == entries


def test_a_bare_task_message_is_accepted(running_task):
    response = post(task_message(running_task.task_id, suggestion="pass"))
    assert response.status_code == 200
    apply_inbox()
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.APPROVED


def test_an_mns_json_push_with_a_base64_message_is_unwrapped(running_task):
    inner = json.dumps(envelope(task_message(running_task.task_id, suggestion="review")))
    body = {
        "TopicOwner": "123",
        "TopicName": "imm-results",
        "Subscriber": "123",
        "SubscriptionName": "dashboard",
        "MessageId": "ABC",
        "Message": base64.b64encode(inner.encode()).decode(),
        "MessageMD5": "x",
        "PublishTime": "1764059403456",
    }
    assert post(body).status_code == 200
    apply_inbox()
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.AWAITING_REVIEW


def test_an_mns_xml_push_is_unwrapped(running_task):
    inner = json.dumps(task_message(running_task.task_id, suggestion="pass"))
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<Notification xmlns="http://mns.aliyuncs.com/doc/v1/">'
        "<TopicOwner>123</TopicOwner><TopicName>imm-results</TopicName>"
        f"<MessageId>ABC</MessageId><Message>{base64.b64encode(inner.encode()).decode()}</Message>"
        "</Notification>"
    )
    assert post(body, content_type="text/xml").status_code == 200
    apply_inbox()
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.APPROVED


def test_a_message_without_its_verdict_is_fetched_not_guessed(running_task):
    response = post(envelope(task_message(running_task.task_id, suggestion=None)))
    assert response.json()["status"] == "accepted"
    assert default_task_backend.results == []  # nothing is enqueued inside the request
    assert apply_inbox() == ["needs_verdict"]
    assert not ModerationResult.objects.exists()
    queued = [r for r in default_task_backend.results if r.task.name == "fetch_result"]
    assert [r.args for r in queued] == [[running_task.task_id]]


def test_a_result_for_an_unknown_task_is_kept(db):
    response = post(envelope(task_message("ImageModeration-unknown")))
    assert response.json()["status"] == "accepted"
    assert apply_inbox() == ["unmatched"]
    kept = ModerationResult.objects.get()
    assert kept.task is None
    assert "no task" in kept.outcome


@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [
        (None, 401, "missing X-IMM-Notify-Token header"),
        ("wrong", 403, "wrong X-IMM-Notify-Token"),
    ],
)
def test_it_refuses_a_missing_or_wrong_token(running_task, caplog, token, status, reason):
    with caplog.at_level(logging.WARNING, logger="moderation.views"):
        response = post(envelope(task_message(running_task.task_id)), token=token)
    assert response.status_code == status
    assert response.json() == {"error": reason}
    assert stored_nothing()
    assert reason in caplog.text
    assert TOKEN not in caplog.text


def test_it_refuses_everything_but_mns_when_no_token_is_configured(settings, running_task):
    settings.IMM_NOTIFY_TOKEN = ""
    response = post(envelope(task_message(running_task.task_id)), token="")
    assert response.status_code == 403
    assert "IMM_NOTIFY_TOKEN is not set" in response.json()["error"]
    assert stored_nothing()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "the body is empty"),
        (b"{not json", "the body is not valid JSON"),
        (b"[1, 2]", "the body is a JSON list, not an object"),
        (b'{"hello": "world"}', "no IMM task message found"),
        (
            json.dumps({"source": "acs.imm", "type": "x", "content": "{oops"}).encode(),
            "the envelope's content is not valid JSON",
        ),
        (
            json.dumps({"source": "acs.imm", "type": "x", "content": 42}).encode(),
            "neither a JSON string nor an object",
        ),
        (json.dumps({"TaskId": ""}).encode(), "the message has no TaskId"),
        (json.dumps({"TaskId": 7}).encode(), "the message has no TaskId"),
        (
            json.dumps({"TaskId": "t", "TaskType": "MediaConvert"}).encode(),
            "not ImageModeration",
        ),
        (
            json.dumps({"TopicName": "t", "MessageId": "m", "Message": "%%%"}).encode(),
            "neither JSON nor base64",
        ),
        (b"<Notification><Nope/></Notification>", "has no Message element"),
        (b"<Notification><Message>", "does not parse"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
    ],
)
def test_a_malformed_body_gets_400_with_the_reason(db, caplog, body, reason):
    with caplog.at_level(logging.WARNING, logger="moderation.views"):
        response = post(body)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert "IMM notification refused (400)" in caplog.text
    assert stored_nothing()


def test_only_post_is_allowed(db):
    assert Client().get(URL).status_code == 405


def test_the_endpoint_needs_no_login_and_no_csrf(running_task):
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        URL,
        data=json.dumps(task_message(running_task.task_id)),
        content_type="application/json",
        headers={"X-IMM-Notify-Token": TOKEN},
    )
    assert response.status_code == 200


# --- MNS signatures --------------------------------------------------------------------------

TOPIC = "imm-results"
OWNER = "1234567890123456"


@functools.cache
def signing_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A key and its self-signed PEM certificate, standing in for MNS's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mns test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, certificate.public_bytes(serialization.Encoding.PEM)


def serve_certificates(monkeypatch, pem: bytes, status: int = 200) -> list[str]:
    """Play Alibaba's certificate host at the transport; returns the URLs fetched, in order."""
    fetched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(status, content=pem)

    clear_certificate_caches()
    monkeypatch.setattr(imm, "MNS_CERTIFICATE_TRANSPORT", httpx.MockTransport(handler))
    return fetched


def mns_body(message: dict, *, topic=TOPIC, owner=OWNER, xml=False, encode=True) -> bytes:
    """An MNS notification (NotifyContentFormat JSON or XML) carrying the IMM body."""
    inner = json.dumps(message)
    text = base64.b64encode(inner.encode()).decode() if encode else inner
    if xml:
        return (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<Notification xmlns="http://mns.aliyuncs.com/doc/v1/">'
            f"<TopicOwner>{owner}</TopicOwner><TopicName>{topic}</TopicName>"
            "<Subscriber>123</Subscriber><SubscriptionName>dashboard</SubscriptionName>"
            f"<MessageId>ABC</MessageId><Message>{text}</Message>"
            "<PublishTime>1764059403456</PublishTime></Notification>"
        ).encode()
    return json.dumps(
        {
            "TopicOwner": owner,
            "TopicName": topic,
            "Subscriber": "123",
            "SubscriptionName": "dashboard",
            "MessageId": "ABC",
            "Message": text,
            "MessageMD5": "x",
            "PublishTime": "1764059403456",
        }
    ).encode()


def md5_as_mns_sdk_sends_it(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).hexdigest().encode()).decode()  # noqa: S324


def md5_as_rfc_1864_says(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324


def mns_headers(
    body: bytes,
    *,
    key=None,
    cert_url=CERT_URL,
    date=None,
    content_md5=None,
    content_type="text/xml;charset=utf-8",
    tamper=False,
) -> dict:
    """Headers as MNS sends them, signed with `key` (the test signing key by default)."""
    headers = {
        "Content-Type": content_type,
        "Content-MD5": md5_as_mns_sdk_sends_it(body) if content_md5 is None else content_md5,
        "Date": format_datetime(date or datetime.now(UTC), usegmt=True),
        "x-mns-request-id": "REQ1",
        "x-mns-version": "2015-06-06",
        "x-mns-signing-cert-url": base64.b64encode(cert_url.encode()).decode(),
    }
    to_sign = notifications.mns_string_to_sign("POST", URL, headers)
    if tamper:
        to_sign += "x"
    signature = (key or signing_key()[0]).sign(
        to_sign.encode(),
        padding.PKCS1v15(),
        hashes.SHA1(),  # noqa: S303
    )
    headers["Authorization"] = base64.b64encode(signature).decode()
    return headers


def post_mns(body: bytes, headers: dict):
    content_type = headers.get("Content-Type", "")
    headers = {k: v for k, v in headers.items() if k != "Content-Type"}
    return Client().post(URL, data=body, content_type=content_type, headers=headers)


@pytest.fixture
def mns(settings, monkeypatch) -> list[str]:
    """A deployment notified by MNS topic TOPIC; returns the certificate URLs fetched."""
    settings.IMM_NOTIFICATION = f"mns:{TOPIC}"
    settings.IMM_REGION = "cn-hangzhou"
    settings.IMM_MNS_TOPIC_OWNER = ""
    return serve_certificates(monkeypatch, signing_key()[1])


@pytest.mark.parametrize("xml", [False, True], ids=["json", "xml"])
def test_a_signed_mns_push_is_accepted_without_a_token(running_task, mns, xml):
    body = mns_body(envelope(task_message(running_task.task_id)), xml=xml)
    response = post_mns(body, mns_headers(body))
    assert response.status_code == 201  # what MNS's own sample answers
    assert response.json() == {"status": "accepted", "task_id": running_task.task_id}
    assert apply_inbox() == ["recorded"]
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.REJECTED
    assert mns == [CERT_URL]


@pytest.mark.parametrize(
    "content_md5", [md5_as_mns_sdk_sends_it, md5_as_rfc_1864_says], ids=["sdk", "rfc1864"]
)
def test_content_md5_is_accepted_in_both_encodings_mns_sources_give(running_task, mns, content_md5):
    body = mns_body(task_message(running_task.task_id, suggestion="pass"))
    response = post_mns(body, mns_headers(body, content_md5=content_md5(body)))
    assert response.status_code == 201
    apply_inbox()
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.APPROVED


def test_the_topic_owner_is_checked_when_it_is_configured(running_task, mns, settings):
    settings.IMM_MNS_TOPIC_OWNER = OWNER
    body = mns_body(task_message(running_task.task_id), owner="999")
    response = post_mns(body, mns_headers(body))
    assert response.status_code == 403
    assert "TopicOwner" in response.json()["error"]
    assert stored_nothing()

    body = mns_body(task_message(running_task.task_id), owner=OWNER)
    assert post_mns(body, mns_headers(body)).status_code == 201
    assert apply_inbox() == ["recorded"]
    assert ModerationResult.objects.count() == 1


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"tamper": True}, 403, "signature does not verify"),
        ({"date": datetime.now(UTC) - timedelta(minutes=20)}, 403, "more than 15 minutes old"),
        (
            {"cert_url": "https://evil.example.com/x509_public_certificate.pem"},
            403,
            "not one of Alibaba Cloud's published certificate URLs",
        ),
    ],
)
def test_a_bad_mns_push_is_refused(running_task, mns, change, status, reason):
    body = mns_body(envelope(task_message(running_task.task_id)))
    response = post_mns(body, mns_headers(body, **change))
    assert response.status_code == status
    assert reason in response.json()["error"]
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.SUBMITTED
    assert stored_nothing()


def test_an_mns_push_signed_by_another_key_is_refused(running_task, mns):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = mns_body(envelope(task_message(running_task.task_id)))
    response = post_mns(body, mns_headers(body, key=other))
    assert response.status_code == 403
    assert stored_nothing()


@pytest.mark.parametrize("status", [404, 503])
def test_an_mns_certificate_that_cannot_be_fetched_is_a_502_so_mns_retries(
    running_task, mns, monkeypatch, status
):
    fetched = serve_certificates(monkeypatch, b"nothing here", status=status)
    body = mns_body(task_message(running_task.task_id))
    response = post_mns(body, mns_headers(body))
    assert response.status_code == 502
    assert response.json() == {"error": "the MNS signing certificate could not be fetched"}
    assert fetched == [CERT_URL]
    assert stored_nothing()


def test_mns_certificates_are_fetched_once_and_cached(running_task, mns):
    for suggestion in ("review", "block"):
        message = task_message(running_task.task_id, suggestion=suggestion)
        body = mns_body(message)
        assert post_mns(body, mns_headers(body)).status_code == 201
    assert mns == [CERT_URL]
    assert apply_inbox() == ["recorded", "recorded"]
    assert ModerationResult.objects.count() == 2


def test_a_failed_certificate_fetch_is_remembered_for_a_minute(monkeypatch):
    url = "https://mns-cert.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem"
    fetched = serve_certificates(monkeypatch, b"", status=404)
    clock = iter([1000.0, 1030.0, 1061.0])
    for _ in range(3):
        with pytest.raises(imm.ImmError):
            imm.mns_certificate(url, clock=lambda: next(clock))
    assert fetched == [url, url]  # not at 30 s, again after 60 s


def test_the_certificate_cache_keeps_the_most_recently_used_and_drops_the_rest(monkeypatch):
    monkeypatch.setattr(imm, "MNS_CERTIFICATE_URLS_PER_MINUTE", 100)
    fetched = serve_certificates(monkeypatch, signing_key()[1])
    base = "https://mns-cert.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem.v"
    first = base + "0"
    imm.mns_certificate(first)
    for n in range(1, imm.MNS_CERTIFICATE_CACHE_ENTRIES + 5):
        imm.mns_certificate(first)  # used again each time: stays
        imm.mns_certificate(f"{base}{n}")
    assert len(imm.MNS_CERTIFICATES) == imm.MNS_CERTIFICATE_CACHE_ENTRIES
    assert fetched.count(first) == 1
    assert f"{base}1" not in imm.MNS_CERTIFICATES
    imm.mns_certificate(f"{base}1")
    assert fetched.count(f"{base}1") == 2


def test_a_certificate_larger_than_the_bound_is_not_kept(monkeypatch):
    url = "https://mns-cert.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem"
    fetched = serve_certificates(monkeypatch, signing_key()[1] + b"\n" * 20_000)
    with pytest.raises(imm.ImmError, match="larger than"):
        imm.mns_certificate(url)
    assert fetched == [url]
    assert isinstance(imm.MNS_CERTIFICATE_FAILURES.get(url, 0.0), imm.ImmError)
    assert url not in imm.MNS_CERTIFICATES


@pytest.mark.parametrize(
    ("url", "region", "published"),
    [
        (
            "https://mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem",
            "eu-central-1",
            True,
        ),
        (
            "https://mns-cert.oss-cn-beijing.aliyuncs.com/x509_public_certificate.pem",
            "cn-beijing",
            True,
        ),
        (
            "https://mns-cert.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem.version2",
            "cn-hangzhou",
            True,
        ),
        (
            "https://mns-cert.oss-cn-beijing.aliyuncs.com/x509_public_certificate.pem",
            "cn-hangzhou",
            False,
        ),
        (
            "http://mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem",
            "cn-hangzhou",
            False,
        ),
        (
            "https://mnstest.oss-cn-hangzhou.aliyuncs.com:443/x509_public_certificate.pem",
            "cn-hangzhou",
            False,
        ),
        (
            "https://u:p@mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem",
            "cn-hangzhou",
            False,
        ),
        (
            "https://mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem?x=1",
            "cn-hangzhou",
            False,
        ),
        (
            "https://mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem#x",
            "cn-hangzhou",
            False,
        ),
        (
            "https://mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate%2Epem",
            "cn-hangzhou",
            False,
        ),
        (
            "https://mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem/../a",
            "cn-hangzhou",
            False,
        ),
        (
            "https://mnstest.oss-cn-hangzhou.aliyuncs.com/./x509_public_certificate.pem",
            "cn-hangzhou",
            False,
        ),
        ("https://mnstest.oss-cn-hangzhou.aliyuncs.com/other.pem", "cn-hangzhou", False),
        (
            "https://mnstest.oss-cn-hangzhou.aliyuncs.com.evil.com/x509_public_certificate.pem",
            "cn-hangzhou",
            False,
        ),
        (
            "https://MNSTEST.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem",
            "cn-hangzhou",
            False,
        ),
        (
            "https://mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem\n",
            "cn-hangzhou",
            False,
        ),
    ],
)
def test_only_the_published_certificate_urls_are_accepted(url, region, published):
    assert notifications.is_published_certificate_url(url, region) is published


def clear_certificate_caches() -> None:
    """Each test starts as a new process would: nothing fetched, nothing failed."""
    imm.MNS_CERTIFICATES.clear()
    imm.MNS_CERTIFICATE_FAILURES.clear()


def test_failures_an_attacker_provokes_never_push_a_good_certificate_out(monkeypatch):
    monkeypatch.setattr(imm, "MNS_CERTIFICATE_URLS_PER_MINUTE", 1000)
    good = "https://mns-cert.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem"
    pem = signing_key()[1]
    fetched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(200 if str(request.url) == good else 404, content=pem)

    clear_certificate_caches()
    monkeypatch.setattr(imm, "MNS_CERTIFICATE_TRANSPORT", httpx.MockTransport(handler))
    assert imm.mns_certificate(good) == pem
    for n in range(imm.MNS_CERTIFICATE_CACHE_ENTRIES * 3):
        with pytest.raises(imm.ImmError):
            imm.mns_certificate(f"{good}.burn{n}")

    assert imm.mns_certificate(good) == pem
    assert fetched.count(good) == 1
    assert len(imm.MNS_CERTIFICATE_FAILURES) == imm.MNS_CERTIFICATE_CACHE_ENTRIES
