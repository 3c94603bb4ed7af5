"""POST /imm/notifications/: every wrapping, every way to be refused, never a 500."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from django.test import Client
from django_tasks import default_task_backend

from moderation import imm, notifications
from moderation.models import AuditEntry, Image, ModerationResult, ModerationTask

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


def test_a_cloudevents_envelope_routes_the_image(running_task):
    response = post(envelope(task_message(running_task.task_id)))
    assert response.status_code == 200
    assert response.json() == {"status": "recorded", "task_id": running_task.task_id}
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.REJECTED
    result = ModerationResult.objects.get()
    assert result.source == "notification"
    assert result.raw["TaskId"] == running_task.task_id
    assert result.applied


def test_the_same_notification_twice_changes_nothing(running_task):
    body = envelope(task_message(running_task.task_id))
    post(body)
    entries = AuditEntry.objects.count()
    response = post(body)
    assert response.json()["status"] == "duplicate"
    assert ModerationResult.objects.count() == 1
    assert AuditEntry.objects.count() == entries


def test_a_bare_task_message_is_accepted(running_task):
    response = post(task_message(running_task.task_id, suggestion="pass"))
    assert response.status_code == 200
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
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.APPROVED


def test_a_message_without_its_verdict_is_fetched_not_guessed(running_task):
    response = post(envelope(task_message(running_task.task_id, suggestion=None)))
    assert response.json()["status"] == "needs_verdict"
    assert not ModerationResult.objects.exists()
    queued = [r for r in default_task_backend.results if r.task.name == "fetch_result"]
    assert [r.args for r in queued] == [[running_task.task_id]]


def test_a_result_for_an_unknown_task_is_kept(db):
    response = post(envelope(task_message("ImageModeration-unknown")))
    assert response.json()["status"] == "unmatched"
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
    assert not ModerationResult.objects.exists()
    assert reason in caplog.text
    assert TOKEN not in caplog.text


def test_it_refuses_everything_but_mns_when_no_token_is_configured(settings, running_task):
    settings.IMM_NOTIFY_TOKEN = ""
    response = post(envelope(task_message(running_task.task_id)), token="")
    assert response.status_code == 403
    assert "IMM_NOTIFY_TOKEN is not set" in response.json()["error"]


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
    assert not ModerationResult.objects.exists()


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


@pytest.fixture(scope="module")
def mns_key():
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


@pytest.fixture
def mns_certificate(mns_key):
    # The certificate an MNS push names is fetched once per process and cached; a test seeds
    # the cache instead of reaching Alibaba's certificate host.
    imm.MNS_CERTIFICATES[CERT_URL] = mns_key[1]
    yield mns_key[0]
    imm.MNS_CERTIFICATES.pop(CERT_URL, None)


def mns_headers(key, body: bytes, *, cert_url=CERT_URL, date=None, tamper=False) -> dict:
    headers = {
        "Content-Type": "application/json",
        "Content-MD5": "",
        "Date": format_datetime(date or datetime.now(UTC), usegmt=True),
        "x-mns-request-id": "REQ1",
        "x-mns-version": "2015-06-06",
        "x-mns-signing-cert-url": base64.b64encode(cert_url.encode()).decode(),
    }
    to_sign = notifications.mns_string_to_sign("POST", URL, headers)
    if tamper:
        to_sign += "x"
    signature = key.sign(to_sign.encode(), padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    headers["Authorization"] = base64.b64encode(signature).decode()
    return headers


def post_mns(body: bytes, headers: dict):
    headers = {k: v for k, v in headers.items() if k != "Content-Type"}
    return Client().post(URL, data=body, content_type="application/json", headers=headers)


def test_a_signed_mns_push_is_accepted_without_a_token(running_task, mns_certificate):
    body = json.dumps(envelope(task_message(running_task.task_id))).encode()
    response = post_mns(body, mns_headers(mns_certificate, body))
    assert response.status_code == 201  # what MNS's own sample answers
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.REJECTED


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"tamper": True}, 403, "signature does not verify"),
        ({"date": datetime.now(UTC) - timedelta(minutes=20)}, 403, "more than 15 minutes old"),
        (
            {"cert_url": "https://evil.example.com/cert.pem"},
            403,
            "not from Alibaba Cloud's certificate host",
        ),
    ],
)
def test_a_bad_mns_push_is_refused(running_task, mns_certificate, change, status, reason):
    body = json.dumps(envelope(task_message(running_task.task_id))).encode()
    response = post_mns(body, mns_headers(mns_certificate, body, **change))
    assert response.status_code == status
    assert reason in response.json()["error"]
    running_task.image.refresh_from_db()
    assert running_task.image.status == Image.Status.SUBMITTED


def test_an_mns_push_signed_by_another_key_is_refused(running_task, mns_certificate):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = json.dumps(envelope(task_message(running_task.task_id))).encode()
    response = post_mns(body, mns_headers(other, body))
    assert response.status_code == 403
    assert not ModerationResult.objects.exists()


def test_an_mns_certificate_that_cannot_be_fetched_is_a_502_so_mns_retries(mns_key):
    body = b"{}"
    headers = mns_headers(mns_key[0], body)

    def unreachable(url: str) -> bytes:
        raise imm.ImmError(imm.TRANSPORT, "connection refused")

    with pytest.raises(notifications.Refused) as refused:
        notifications.verify_mns(
            method="POST", path=URL, headers=headers, certificate_for=unreachable
        )
    assert refused.value.status == 502


def test_mns_certificates_are_fetched_once_and_cached():
    import httpx

    calls = []

    def handler(request):
        calls.append(str(request.url))
        return httpx.Response(200, content=b"-----BEGIN CERTIFICATE-----\n...")

    url = "https://mns-cert.oss-cn-hangzhou.aliyuncs.com/cached.pem"
    imm.MNS_CERTIFICATES.pop(url, None)
    try:
        transport = httpx.MockTransport(handler)
        assert imm.mns_certificate(url, transport=transport).startswith(b"-----BEGIN")
        imm.mns_certificate(url, transport=transport)
        assert calls == [url]
    finally:
        imm.MNS_CERTIFICATES.pop(url, None)
