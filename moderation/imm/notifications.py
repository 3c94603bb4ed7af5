"""IMM notification deliveries: who may send them, and how to unwrap the task message inside.

Three wrappings reach `POST /imm/notifications/` (REFERENCE.md section 5):
- the CloudEvents-style envelope (EventBridge HTTP target, and our emulator):
  {"source": "acs.imm", "type": "imm:Task:ImageModeration", "content": "<task message JSON>"};
- an MNS HTTP push, JSON or XML, whose Message is the IMM body, sometimes base64-encoded;
- the bare task message (an older format, and MNS's SIMPLIFIED subscriptions).

Authentication, one of two ways:
- the shared secret IMM_NOTIFY_TOKEN in X-IMM-Notify-Token (EventBridge, the emulator);
- an MNS push (it carries x-mns-signing-cert-url), only when IMM_NOTIFICATION is mns:<topic>.
  Everything that can be checked without the signing certificate is checked first, in this
  order: the Date is within 15 minutes, Authorization is a base64 signature, Content-MD5 is
  the MD5 of the body received (MNS signs that header, not the body), the body is a JSON or
  XML wrapper from the configured topic (and TopicOwner, when IMM_MNS_TOPIC_OWNER is set), the
  task message inside parses, and the certificate URL has the published form. Only then is
  the certificate fetched (moderation.imm.client.mns_certificate: cached, and rate-limited) and the
  RSA-SHA1 signature checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from xml.parsers import expat

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .client import MNS_CERTIFICATE_LIMITED, ImmError

MNS_MAX_AGE = timedelta(minutes=15)
MNS_SIGNATURE_MAX_BYTES = 1024  # an RSA-4096 signature is 512
XML_MAX_DEPTH = 8  # an MNS notification is two levels deep

# Where MNS's signing certificates are published (REFERENCE.md 5.2, from Alibaba's "Verify HTTP
# push message signatures" and "How do I check whether the URL of a public key certificate is
# provided by Alibaba Cloud?"): https://mnstest.oss-cn-hangzhou.aliyuncs.com/ or
# https://mns-cert.oss-cn-{region}.aliyuncs.com/, file names like x509_public_certificate.pem
# that change when the certificate is rotated (a version is added). The URL must be exactly
# that: https, one of those hosts, no user, port, query or fragment, and one path segment
# starting x509_public_certificate in plain characters (no %-escapes, no dot segments).
_MNS_TEST_CERT_HOST = "mnstest.oss-cn-hangzhou.aliyuncs.com"
_MNS_CERT_PATH = r"/x509_public_certificate[A-Za-z0-9_.\-]{0,64}"


def mns_certificate_hosts(region: str) -> tuple[str, ...]:
    """The hosts a certificate may come from for a deployment in IMM_REGION `region`."""
    hosts = [_MNS_TEST_CERT_HOST]
    if re.fullmatch(r"[a-z]{2}-[a-z0-9]+(-[a-z0-9]+)*", region):
        hosts.append(f"mns-cert.oss-{region}.aliyuncs.com")
    return tuple(hosts)


def is_published_certificate_url(url: str, region: str) -> bool:
    hosts = "|".join(re.escape(host) for host in mns_certificate_hosts(region))
    return re.fullmatch(rf"https://(?:{hosts}){_MNS_CERT_PATH}", url) is not None


class Refused(Exception):
    """A delivery we will not take: HTTP status and the reason, both safe to show the sender."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- Authentication by token -----------------------------------------------------------------


def is_mns_push(headers: Mapping[str, str]) -> bool:
    return "x-mns-signing-cert-url" in {name.lower() for name in headers}


def check_token(given: str | None, expected: str) -> None:
    if not expected:
        raise Refused(403, "notifications by shared token are off: IMM_NOTIFY_TOKEN is not set")
    if not given:
        raise Refused(401, "missing X-IMM-Notify-Token header")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Refused(403, "wrong X-IMM-Notify-Token")


# --- Authentication of MNS pushes ------------------------------------------------------------


def mns_string_to_sign(method: str, path: str, headers: Mapping[str, str]) -> str:
    lowered = {name.lower(): value for name, value in headers.items()}
    mns = "".join(
        f"{name}:{lowered[name]}\n" for name in sorted(lowered) if name.startswith("x-mns-")
    )
    return (
        f"{method.upper()}\n{lowered.get('content-md5', '')}\n{lowered.get('content-type', '')}\n"
        f"{lowered.get('date', '')}\n{mns}{path}"
    )


def body_md5_matches(content_md5: str, body: bytes) -> bool:
    """Whether a Content-MD5 header is the MD5 of `body`.

    RFC 1864 (and the MNS API reference, which points to it) says base64 of the 16-byte
    digest; Alibaba's own MNS SDKs send base64 of the 32-character lowercase hex digest, and
    so does the string-to-sign example of "Verify HTTP push message signatures"
    (ZDgxNjY5ZjFlMDQ5MGM0YWMwMWE5ODlmZDVlYmQxYjI= decodes to d81669f1...). The sources
    disagree, so exactly those two encodings of this body's MD5 are accepted.
    """
    digest = hashlib.md5(body)  # noqa: S324 - MNS's integrity header, not a security hash
    candidates = (
        base64.b64encode(digest.digest()).decode(),
        base64.b64encode(digest.hexdigest().encode()).decode(),
    )
    given = content_md5.strip().encode()
    return any(hmac.compare_digest(given, candidate.encode()) for candidate in candidates)


@dataclass(frozen=True)
class MnsPush:
    """An MNS push that passed every check that needs no certificate; `verify` does the rest."""

    cert_url: str
    signature: bytes
    string_to_sign: str
    message: dict[str, Any]  # the IMM task message inside the wrapper

    def verify(self, certificate_for: Callable[[str], bytes]) -> None:
        """Fetch the signing certificate (cached) and check the signature; Refused otherwise."""
        try:
            certificate = x509.load_pem_x509_certificate(certificate_for(self.cert_url))
        except ImmError as error:
            if error.code == MNS_CERTIFICATE_LIMITED:
                raise Refused(
                    429, "too many new MNS certificate URLs this minute; try again later"
                ) from None
            raise Refused(502, "the MNS signing certificate could not be fetched") from None
        except ValueError:
            raise Refused(502, "the MNS signing certificate could not be read") from None
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Refused(403, "the MNS signing certificate does not hold an RSA key")
        try:
            key.verify(
                self.signature,
                self.string_to_sign.encode(),
                padding.PKCS1v15(),
                hashes.SHA1(),  # noqa: S303 - MNS signs with RSA-SHA1; we only verify
            )
        except InvalidSignature:
            raise Refused(403, "the MNS push's signature does not verify") from None


def check_mns_push(
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    topic: str | None,
    topic_owner: str = "",
    region: str,
    now: datetime | None = None,
) -> MnsPush:
    """Everything an MNS push must prove before its certificate is fetched; Refused otherwise.

    `topic` is the MNS topic IMM_NOTIFICATION names (None: this deployment takes no MNS
    pushes); `topic_owner`, when set, the account that must own it.
    """
    if topic is None:
        raise Refused(
            403,
            "MNS pushes are not accepted here: IMM_NOTIFICATION is not mns:<topic> "
            "(notifications must carry X-IMM-Notify-Token)",
        )
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        sent = parsedate_to_datetime(lowered.get("date", ""))
    except (TypeError, ValueError, IndexError):
        raise Refused(400, "the MNS push has no valid Date header") from None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    try:
        age = abs((now or datetime.now(UTC)) - sent)
    except OverflowError:
        age = MNS_MAX_AGE * 2
    if age > MNS_MAX_AGE:
        raise Refused(403, "the MNS push is more than 15 minutes old (or from the future)")
    authorization = lowered.get("authorization", "").strip()
    if not authorization:
        raise Refused(401, "the MNS push has no Authorization header")
    try:
        signature = base64.b64decode(authorization, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(401, "the MNS push's Authorization is not a base64 signature") from None
    if not signature or len(signature) > MNS_SIGNATURE_MAX_BYTES:
        raise Refused(401, "the MNS push's Authorization is not a signature")
    content_md5 = lowered.get("content-md5", "")
    if not content_md5.strip():
        raise Refused(400, "the MNS push has no Content-MD5 header, so its body cannot be checked")
    if not body_md5_matches(content_md5, body):
        raise Refused(403, "the MNS push's Content-MD5 is not the MD5 of its body")
    wrapper = _mns_wrapper(body)
    if wrapper.get("TopicName") != topic:
        raise Refused(403, "the MNS push is not from the topic IMM_NOTIFICATION names")
    if topic_owner and wrapper.get("TopicOwner") != topic_owner:
        raise Refused(403, "the MNS push's TopicOwner is not IMM_MNS_TOPIC_OWNER")
    message = _mns_message(wrapper.get("Message"))
    try:
        cert_url = base64.b64decode(lowered["x-mns-signing-cert-url"], validate=True).decode()
    except (KeyError, binascii.Error, UnicodeDecodeError, ValueError):
        raise Refused(400, "x-mns-signing-cert-url is not base64 of a URL") from None
    if not is_published_certificate_url(cert_url, region):
        raise Refused(
            403,
            "the MNS signing certificate URL is not one of Alibaba Cloud's published "
            "certificate URLs for this region",
        )
    return MnsPush(
        cert_url=cert_url,
        signature=signature,
        string_to_sign=mns_string_to_sign(method, path, headers),
        message=message,
    )


_SIMPLIFIED = (
    "the MNS push has no TopicName to check (a SIMPLIFIED subscription?): subscribe with "
    "NotifyContentFormat JSON or XML"
)


def _mns_wrapper(body: bytes) -> dict[str, Any]:
    """The MNS notification (TopicOwner, TopicName, Message...) of a JSON or XML push."""
    if not body.strip():
        raise Refused(400, "the body is empty")
    if body.lstrip().startswith(b"<"):
        wrapper: dict[str, Any] = dict(_xml_fields(body))
    else:
        wrapper = _json_object(body, "the body")
    if "TopicName" not in wrapper or "Message" not in wrapper:
        raise Refused(400, _SIMPLIFIED)
    return wrapper


def _mns_message(message: Any) -> dict[str, Any]:
    if isinstance(message, dict):
        return unwrap_object(message)
    if not isinstance(message, str):
        raise Refused(400, "the MNS Message is neither text nor an object")
    return unwrap_object(_mns_message_body(message))


# --- Unwrapping ------------------------------------------------------------------------------


def _refuse_constant(name: str) -> NoReturn:
    raise Refused(400, f"the JSON holds {name}, which JSON does not allow")


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise Refused(400, f"{what} is nested too deep") from None
    if not isinstance(value, dict):
        kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}
        shown = kind.get(type(value), "null")
        raise Refused(400, f"{what} is a JSON {shown}, not an object")
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


def _xml_fields(body: bytes) -> dict[str, str]:
    """The text of the root element's children, by local name, read with expat.

    A DOCTYPE is refused outright, so no entity (internal, external or recursive) is ever
    declared or expanded; nesting is bounded; a field given twice is refused.
    """

    def refuse_dtd(*args: Any) -> NoReturn:
        raise Refused(400, "the XML body has a DOCTYPE or entity declaration, which is refused")

    fields: dict[str, str] = {}
    current: list[str] = []
    depth = 0

    def start(name: str, attributes: Any) -> None:
        nonlocal depth
        depth += 1
        if depth > XML_MAX_DEPTH:
            raise Refused(400, f"the XML body is nested more than {XML_MAX_DEPTH} levels deep")
        if depth == 2:
            current.clear()

    def end(name: str) -> None:
        nonlocal depth
        if depth == 2:
            local = name.rpartition(" ")[2]
            if local in fields:
                raise Refused(400, f"the XML body has more than one {local[:64]} element")
            fields[local] = "".join(current).strip()
        depth -= 1

    def text(data: str) -> None:
        if depth == 2:
            current.append(data)

    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise Refused(400, f"the XML body does not parse: {exc}") from None
    except (ValueError, LookupError):  # an encoding expat cannot read
        raise Refused(400, "the XML body is in an encoding that cannot be read") from None
    return fields


def unwrap(body: bytes, content_type: str = "") -> dict[str, Any]:
    """The IMM task message inside any of the three wrappings; Refused(400) when malformed."""
    if not body.strip():
        raise Refused(400, "the body is empty")
    if body.lstrip().startswith(b"<"):
        fields = _xml_fields(body)
        if not fields.get("Message"):
            raise Refused(400, "the MNS XML notification has no Message element")
        return unwrap_object(_mns_message_body(fields["Message"]))
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
