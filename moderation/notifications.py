"""IMM notification deliveries: who may send them, and how to unwrap the task message inside.

Three wrappings reach `POST /imm/notifications/` (REFERENCE.md section 5):
- the CloudEvents-style envelope (EventBridge HTTP target, and our emulator):
  {"source": "acs.imm", "type": "imm:Task:ImageModeration", "content": "<task message JSON>"};
- an MNS HTTP push, JSON or XML, whose Message is the IMM body, sometimes base64-encoded;
- the bare task message (an older format, and MNS's SIMPLIFIED subscriptions).

Authentication: when MNS's signing headers are present the push must carry a valid MNS
signature (RSA-SHA1 by a certificate from Alibaba's own certificate hosts, Date within 15
minutes); otherwise the shared secret IMM_NOTIFY_TOKEN must be in X-IMM-Notify-Token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from xml.etree import ElementTree

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MNS_MAX_AGE = timedelta(minutes=15)
_MNS_CERT_HOSTS = re.compile(
    r"^https://(mnstest\.oss-cn-hangzhou\.aliyuncs\.com|mns-cert\.oss-cn-[a-z0-9-]+\.aliyuncs\.com)/"
)


class Refused(Exception):
    """A delivery we will not take: HTTP status and the reason, both safe to show the sender."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- Authentication --------------------------------------------------------------------------


def is_mns_push(headers: Mapping[str, str]) -> bool:
    return "x-mns-signing-cert-url" in {name.lower() for name in headers}


def check_token(given: str | None, expected: str) -> None:
    if not expected:
        raise Refused(403, "notifications by shared token are off: IMM_NOTIFY_TOKEN is not set")
    if not given:
        raise Refused(401, "missing X-IMM-Notify-Token header")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Refused(403, "wrong X-IMM-Notify-Token")


def mns_string_to_sign(method: str, path: str, headers: Mapping[str, str]) -> str:
    lowered = {name.lower(): value for name, value in headers.items()}
    mns = "".join(
        f"{name}:{lowered[name]}\n" for name in sorted(lowered) if name.startswith("x-mns-")
    )
    return (
        f"{method.upper()}\n{lowered.get('content-md5', '')}\n{lowered.get('content-type', '')}\n"
        f"{lowered.get('date', '')}\n{mns}{path}"
    )


def verify_mns(
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    certificate_for: Callable[[str], bytes],
    now: datetime | None = None,
) -> None:
    """Check an MNS HTTP push's signature as MNS documents it; raise Refused otherwise."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        cert_url = base64.b64decode(lowered["x-mns-signing-cert-url"], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Refused(400, "x-mns-signing-cert-url is not base64 of a URL") from None
    if not _MNS_CERT_HOSTS.match(cert_url):
        raise Refused(
            403, "the MNS signing certificate is not from Alibaba Cloud's certificate host"
        )
    date_header = lowered.get("date", "")
    try:
        sent = parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        raise Refused(400, "the MNS push has no valid Date header") from None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    if abs((now or datetime.now(UTC)) - sent) > MNS_MAX_AGE:
        raise Refused(403, "the MNS push is more than 15 minutes old (or from the future)")
    authorization = lowered.get("authorization", "")
    try:
        signature = base64.b64decode(authorization, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(401, "the MNS push's Authorization is not a base64 signature") from None
    try:
        certificate = x509.load_pem_x509_certificate(certificate_for(cert_url))
    except Refused:
        raise
    except Exception:
        raise Refused(502, "the MNS signing certificate could not be fetched or read") from None
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused(403, "the MNS signing certificate does not hold an RSA key")
    try:
        key.verify(
            signature,
            mns_string_to_sign(method, path, headers).encode(),
            padding.PKCS1v15(),
            hashes.SHA1(),  # noqa: S303 - MNS signs with RSA-SHA1; we only verify
        )
    except InvalidSignature:
        raise Refused(403, "the MNS push's signature does not verify") from None


# --- Unwrapping ------------------------------------------------------------------------------


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Refused(400, f"{what} is a JSON {type(value).__name__}, not an object")
    return value


def _mns_message_body(message: str) -> dict[str, Any]:
    """MNS's Message: the IMM body as JSON text, or base64 of it."""
    stripped = message.strip()
    if stripped.startswith("{"):
        return _json_object(stripped, "the MNS Message")
    try:
        decoded = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, "the MNS Message is neither JSON nor base64 of JSON") from None
    return _json_object(decoded, "the base64-decoded MNS Message")


def _from_xml(body: bytes) -> dict[str, Any]:
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - expat refuses external entities
    except ElementTree.ParseError as exc:
        raise Refused(400, f"the XML body does not parse: {exc}") from None
    found = root.find("{*}Message")
    if found is None:
        found = root.find("Message")
    if found is None or not (found.text or "").strip():
        raise Refused(400, "the MNS XML notification has no Message element")
    return _mns_message_body(found.text or "")


def unwrap(body: bytes, content_type: str = "") -> dict[str, Any]:
    """The IMM task message inside any of the three wrappings; Refused(400) when malformed."""
    if not body.strip():
        raise Refused(400, "the body is empty")
    if body.lstrip().startswith(b"<"):
        return unwrap_object(_from_xml(body))
    return unwrap_object(_json_object(body, "the body"))


def unwrap_object(data: dict[str, Any]) -> dict[str, Any]:
    if "content" in data and (data.get("source") == "acs.imm" or "type" in data):
        content = data["content"]
        if isinstance(content, str):
            return _json_object(content, "the envelope's content")
        if isinstance(content, dict):
            return content
        raise Refused(400, "the envelope's content is neither a JSON string nor an object")
    if "Message" in data and ("TopicName" in data or "MessageId" in data):
        message = data["Message"]
        if isinstance(message, dict):
            return message
        if not isinstance(message, str):
            raise Refused(400, "the MNS Message is not a string")
        return unwrap_object(_mns_message_body(message))
    if "TaskId" in data:
        return data
    raise Refused(
        400,
        "no IMM task message found: expected a CloudEvents envelope, an MNS push "
        "or a task message with a TaskId",
    )
