"""What Alibaba Cloud's API gateway does before IMM sees a request, and how it answers errors.

Codes and messages follow Alibaba's common client error codes ("Specified access key is not
found." and so on); REFERENCE.md section 7 lists what is known about IMM's own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from moderation.imm import signing as acs3

logger = logging.getLogger(__name__)

API_VERSION = "2020-09-30"
CLOCK_SKEW_SECONDS = 15 * 60  # x-acs-date may be this far from the server's clock
NONCE_WINDOW_SECONDS = 15 * 60  # a nonce may not be used twice within this window
THROTTLED_MESSAGE = "Request was denied due to user flow control."


class ApiError(Exception):
    """An error answer: HTTP status, Code and Message, plus any extra response headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(error: ApiError, *, request_id: str, host: str) -> dict[str, str]:
    return {
        "RequestId": request_id,
        "HostId": host,
        "Code": error.code,
        "Message": error.message,
        "Recommend": (
            f"https://api.aliyun.com/troubleshoot?q={error.code}&product=imm&requestId={request_id}"
        ),
    }


def missing(name: str) -> ApiError:
    return ApiError(400, f"Missing{name}", f"{name} is mandatory for this action.")


def invalid_argument(message: str) -> ApiError:
    return ApiError(400, "InvalidArgument", message)


def not_found(resource: str) -> ApiError:
    # REFERENCE.md 7.2 gives HTTP 400 for ResourceNotFound in IMM's table.
    return ApiError(400, "ResourceNotFound", f"The specified resource {resource} is not found.")


def incomplete_signature(detail: str) -> ApiError:
    return ApiError(
        400,
        "IncompleteSignature",
        f"The request signature does not conform to Aliyun standards. {detail}",
    )


@dataclass(frozen=True)
class IncomingRequest:
    method: str
    path: str
    query: dict[str, str]  # decoded: '+' and %20 are both a space
    headers: dict[str, str]  # lower-case names; repeated headers joined as ACS3 joins them
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # query, plus a form body's fields

    @classmethod
    def parse(
        cls, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> IncomingRequest:
        split = urlsplit(target)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        grouped: dict[str, list[str]] = {}
        for name, value in headers:
            grouped.setdefault(name.lower(), []).append(value.strip())
        joined = {name: ",".join(sorted(values)) for name, values in grouped.items()}
        params = dict(query)
        content_type = joined.get("content-type", "").split(";")[0].strip().lower()
        if body and content_type == "application/x-www-form-urlencoded":
            # The gateway also takes RPC parameters as a form body (REFERENCE.md 2.4).
            form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            params = {**dict(form), **query}
        return cls(method.upper(), split.path or "/", query, joined, body, params)

    @property
    def host(self) -> str:
        return self.headers.get("host", "")


class NonceCache:
    """Nonces seen within the window, forgotten after it (x-acs-signature-nonce)."""

    def __init__(
        self,
        window: float = NONCE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def use(self, nonce: str) -> bool:
        """Record the nonce; False if it was already used within the window."""
        now = self._clock()
        with self._lock:
            while self._seen and next(iter(self._seen.values())) <= now - self.window:
                self._seen.popitem(last=False)
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


class FlowControl:
    """A token bucket of `rate` requests a second (bursts of up to max(rate, 1)); 0 is off."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def admit(self) -> int | None:
        """None when the request may go ahead, else the milliseconds to wait before retrying."""
        if self.rate <= 0:
            return None
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return None
            return max(1, math.ceil((1 - self._tokens) / self.rate * 1000))


def throttled(retry_after_ms: int) -> ApiError:
    # IMM answers flow control with 400 (REFERENCE.md 7.2), and the SDK honours this header.
    return ApiError(
        400, "Throttling.User", THROTTLED_MESSAGE, {"x-acs-retry-after": str(retry_after_ms)}
    )


def _parse_date(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def authenticate(
    request: IncomingRequest,
    *,
    access_key_id: str,
    access_key_secret: str,
    nonces: NonceCache,
    now: float,
) -> None:
    """Check the ACS3-HMAC-SHA256 signature, the date and the nonce; raise ApiError if wrong."""
    header = request.headers.get("authorization", "")
    if not header:
        raise incomplete_signature("The Authorization header is missing.")
    try:
        authorization = acs3.parse_authorization(header)
    except ValueError as exc:
        raise incomplete_signature(f"The Authorization header is malformed: {exc}.") from None
    if authorization.access_key_id != access_key_id:
        raise ApiError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")

    required = ("x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256")
    absent = [name for name in required if not request.headers.get(name)]
    if absent:
        raise incomplete_signature(f"Missing header(s): {', '.join(absent)}.")
    signed = {name.lower() for name in authorization.signed_headers}
    must_sign = {"host"} | {name for name in request.headers if name.startswith("x-acs-")}
    unsigned = sorted(must_sign - signed)
    if unsigned:
        raise incomplete_signature(
            f"SignedHeaders must include host and every x-acs-* header; not signed: "
            f"{', '.join(unsigned)}."
        )

    moment = _parse_date(request.headers["x-acs-date"])
    if abs(moment.timestamp() - now) > CLOCK_SKEW_SECONDS:
        raise ApiError(
            400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."
        )

    expected = acs3.sign(
        method=request.method,
        pathname=request.path,
        query=request.query,
        headers=request.headers,
        signed_header_names=authorization.signed_headers,
        access_key_id=access_key_id,
        access_key_secret=access_key_secret,
        body=request.body,
    )
    body_sha256 = hashlib.sha256(request.body).hexdigest()
    if request.headers["x-acs-content-sha256"].lower() != body_sha256:
        raise ApiError(
            400,
            "SignatureDoesNotMatch",
            f"x-acs-content-sha256 does not match the SHA-256 of the request body "
            f"({body_sha256}). server StringToSign is [{expected.string_to_sign}]",
        )
    if not acs3.signatures_match(expected.signature, authorization.signature):
        # The canonical request holds no secret and is what a client author needs to compare.
        logger.warning(
            "signature mismatch for access key %s; server canonical request:\n%s",
            access_key_id,
            expected.canonical_request,
        )
        raise ApiError(
            400,
            "SignatureDoesNotMatch",
            "Specified signature does not match our calculation. "
            f"server StringToSign is [{expected.string_to_sign}]",
        )
    if not nonces.use(request.headers["x-acs-signature-nonce"]):
        raise ApiError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")


def route(request: IncomingRequest, actions: Mapping[str, Any]) -> str:
    """The action the request names, after checking the API version; ApiError otherwise."""
    action = request.headers.get("x-acs-action", "")
    version = request.headers.get("x-acs-version", "")
    if not action:
        raise missing("Action")
    if not version:
        raise missing("Version")
    if version != API_VERSION:
        raise ApiError(400, "InvalidVersion", "Specified parameter Version is not valid.")
    if request.path != "/" or action not in actions:
        raise ApiError(
            404,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        )
    return action
