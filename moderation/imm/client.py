"""The client for Alibaba Cloud Intelligent Media Management (IMM), API version 2020-09-30.

The only module that talks HTTP to IMM (and the only one that imports httpx). It owns the
`httpx.Client`s (one a thread), signs every attempt with ACS3-HMAC-SHA256
(`moderation.imm.signing`), turns responses into typed results and every failure into one
exception type, `ImmError`.

Wire protocol (REFERENCE.md sections 1-4): RPC style, `POST /`, the action and version in
`x-acs-*` headers, every operation parameter in the query string, an empty body, JSON back.

Retries (REFERENCE.md 7.3):
- Reads (GetTask, GetImageModerationResult, ListTasks) are retried on transport errors,
  timeouts, 5xx and throttling, up to `ImmConfig.max_attempts` attempts in all.
- CreateImageModerationTask has no idempotency token, so it is retried only when IMM certainly
  did not act on it: the connection was never made, or IMM refused it as throttled. A timeout or
  a dropped connection after sending, a 5xx, or a 2xx that cannot be read raises
  `ImmError(ambiguous=True)` at once: the task may exist, so look it up with `ListTasks`
  (`TagSelector` on an id of your own put in `Tags`) before submitting again.
- Each retry waits `min(backoff_cap, backoff_base * 2**n) * random()` (capped exponential
  backoff with full jitter; n = 0 before the second attempt). When IMM sends
  `x-acs-retry-after` the wait is the larger of that hint and the backoff, but never more than
  `RETRY_AFTER_CAP_FACTOR * backoff_cap` (20 s with the defaults), so a worker is never parked
  for as long as a server cares to ask; if it is still throttled afterwards the caller gets the
  error and can reschedule.
- Every attempt is signed afresh, with a new `x-acs-date` and `x-acs-signature-nonce`.
- A call given a `Pacer` asks it before every attempt and tells it of every throttled answer,
  and waits at least the pause it reports before retrying: IMM's budget is shared with other
  threads and processes (moderation.imm.ratelimit).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import ssl
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from . import signing as acs3

logger = logging.getLogger("moderation.imm")

API_VERSION = "2020-09-30"
TASK_TYPE = "ImageModeration"
USER_DATA_MAX_BYTES = 2048
LIST_TASKS_MAX_RESULTS = 100
# The longest wait for an x-acs-retry-after hint, as a multiple of backoff_cap.
RETRY_AFTER_CAP_FACTOR = 4
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# Codes for failures seen on this side, not sent by IMM.
TRANSPORT = "Transport"
TIMEOUT = "Timeout"
INVALID_RESPONSE = "InvalidResponse"
_CLIENT_CODES = frozenset({TRANSPORT, TIMEOUT, INVALID_RESPONSE})

_ACCESS_DENIED_EXACT = frozenset({"SignatureDoesNotMatch", "IncompleteSignature"})
_ACCESS_DENIED_PREFIXES = (
    "InvalidAccessKeyId",
    "Forbidden",
    "NoPermission",
    "InvalidSecurityToken",
    "AccessDenied",
)
# Codes that say the request itself is wrong: sending it again cannot help.
_NEVER_RETRY_EXACT = frozenset({"InvalidArgument", "InvalidJSON", "ResourceNotFound"})
_NEVER_RETRY_PREFIXES = ("Missing", "Invalid", "LimitExceeded")

# Failures that happen before a single byte of the request is written, so IMM cannot have acted.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class Pacer(Protocol):
    """A request budget shared beyond this client (moderation.imm.ratelimit.SharedRateLimit)."""

    def take(self, *, after_throttle: bool = False) -> None:
        """Block until one more request may go out. `after_throttle`: this call's last attempt
        was throttled and the client has already waited out the pause `throttled` reported."""

    def throttled(self, retry_after: float | None) -> float:
        """IMM refused a request for flow control; returns the seconds everyone now waits."""


@dataclass(frozen=True)
class ImmConfig:
    """Where IMM is and how to reach it. The secret and the STS token never appear in repr()."""

    endpoint: str
    region: str
    project: str
    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    max_attempts: int = 4
    backoff_base: float = 0.2
    backoff_cap: float = 5.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"IMM endpoint must be an http(s) URL, got {self.endpoint!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            # Requests go to "/" and the signature covers that path, so a prefix would break it.
            raise ValueError(f"IMM endpoint must have no path or query, got {self.endpoint!r}")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.backoff_base < 0 or self.backoff_cap < 0:
            raise ValueError("backoff_base and backoff_cap must not be negative")

    @classmethod
    def from_settings(cls) -> ImmConfig:
        """Build the config from Django settings (IMM_*), with the emulator's defaults.

        The defaults match moderation/settings.py: the local emulator and its development keys,
        which are not secrets. IMM_TIMEOUT and IMM_MAX_ATTEMPTS are read too when present.
        """
        from django.conf import settings

        return cls(
            endpoint=getattr(settings, "IMM_ENDPOINT", "http://127.0.0.1:8001"),
            region=getattr(settings, "IMM_REGION", "cn-hangzhou"),
            project=getattr(settings, "IMM_PROJECT", "moderation-local"),
            access_key_id=getattr(settings, "IMM_ACCESS_KEY_ID", "emulator-access-key-id"),
            access_key_secret=getattr(
                settings, "IMM_ACCESS_KEY_SECRET", "emulator-access-key-secret"
            ),
            security_token=getattr(settings, "IMM_SECURITY_TOKEN", None) or None,
            timeout=float(getattr(settings, "IMM_TIMEOUT", 10.0)),
            max_attempts=int(getattr(settings, "IMM_MAX_ATTEMPTS", 4)),
        )


def _is_throttling(code: str, message: str) -> bool:
    # IMM answers user flow control with HTTP 400 and a code that was never confirmed; the
    # message is the stable part (REFERENCE.md 7.2).
    return code.startswith("Throttling") or "flow control" in message.lower()


class ImmError(Exception):
    """A failed IMM call: IMM's error, or "Transport"/"Timeout"/"InvalidResponse" from this side.

    `ambiguous` is True when the request may have reached IMM and been acted on (a timeout or a
    dropped connection after sending, a 5xx, an unreadable 2xx). It matters for
    CreateImageModerationTask: look the task up with ListTasks before submitting it again.
    `retryable` says whether the failure is transient; the client has already retried it as
    far as was safe by the time the caller sees it.
    """

    def __init__(
        self,
        code: str,
        message: str,
        request_id: str = "",
        http_status: int = 0,
        retry_after: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.http_status = http_status
        self.retry_after = retry_after
        self.ambiguous = ambiguous

    def __str__(self) -> str:
        where = f"(RequestId {self.request_id or '-'}, HTTP {self.http_status})"
        return f"{self.code}: {self.message} {where}" if self.message else f"{self.code} {where}"

    def __repr__(self) -> str:
        return f"ImmError({str(self)!r}, ambiguous={self.ambiguous})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps every field across pickling (task backends and multiprocessing pickle errors).
        return (
            type(self),
            (
                self.code,
                self.message,
                self.request_id,
                self.http_status,
                self.retry_after,
                self.ambiguous,
            ),
        )

    @property
    def throttled(self) -> bool:
        """IMM refused the request for flow control, whatever the HTTP status."""
        return _is_throttling(self.code, self.message)

    @property
    def access_denied(self) -> bool:
        """Signature, credential or permission problems: fix the configuration, do not retry."""
        if self.code in _ACCESS_DENIED_EXACT or self.code.startswith(_ACCESS_DENIED_PREFIXES):
            return True
        return self.http_status in (401, 403) and not self.throttled

    @property
    def retryable(self) -> bool:
        """Transient: transport errors, timeouts, 5xx, throttling, or an x-acs-retry-after hint."""
        if self.throttled:
            return True
        if self.access_denied:
            return False
        if self.code not in _CLIENT_CODES and (
            self.code in _NEVER_RETRY_EXACT or self.code.startswith(_NEVER_RETRY_PREFIXES)
        ):
            return False
        return (
            self.code in (TRANSPORT, TIMEOUT)
            or self.http_status >= 500
            or self.retry_after is not None
        )


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return "" if value is None else str(value)


# A verdict's counts and offsets are stored in 32-bit integer columns.
VERDICT_INT_MAX = 2**31 - 1
_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")


def _checked_text(value: Any, what: str) -> str:
    """A string, or ValueError: PostgreSQL's text and jsonb refuse NUL and lone surrogates."""
    if not isinstance(value, str):
        raise ValueError(f"{what} is {_json_type(value)}, not a string")
    if _UNSTORABLE_TEXT.search(value):
        raise ValueError(f"{what} holds a NUL character or a lone surrogate")
    return value


JSON_MAX_DEPTH = 32  # IMM's messages nest 6 deep at most
JSON_INT_MAX = 2**63 - 1


def check_storable_json(value: Any, what: str) -> None:
    """ValueError unless `value` can be stored as jsonb: no NaN or infinity, no integer beyond 64
    bits, no NUL or lone surrogate in a string or key, at most JSON_MAX_DEPTH levels."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping | list | tuple):
            if depth > JSON_MAX_DEPTH:
                raise ValueError(f"{what} is nested more than {JSON_MAX_DEPTH} levels deep")
            if isinstance(item, Mapping):
                for key in item:
                    _checked_text(key, f"a key in {what}")
                children = list(item.values())
            else:
                children = list(item)
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            _checked_text(item, f"a string in {what}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{what} holds NaN or an infinite number")
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > JSON_INT_MAX:
            raise ValueError(f"{what} holds an integer larger than 64 bits")
        elif not (item is None or isinstance(item, bool | int | float)):
            raise ValueError(f"{what} holds a {type(item).__name__}, which JSON has not")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _verdict_text(data: Mapping[str, Any], key: str, what: str) -> str:
    value = data.get(key)
    return "" if value is None else _checked_text(value, what)


def _verdict_int(value: Any, what: str) -> int:
    """A count or offset: an integer (or one written as a string) from 0 to VERDICT_INT_MAX."""
    if value is None:
        return 0
    if (
        isinstance(value, str)
        and value.strip().isascii()
        and value.strip().isdigit()
        and len(value.strip()) <= 10
    ):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is not a whole number")
    if not 0 <= value <= VERDICT_INT_MAX:
        raise ValueError(f"{what} is out of range (0 to {VERDICT_INT_MAX})")
    return value


def _verdict_rate(value: Any, what: str) -> float:
    """A confidence: a finite number (or one written as a string)."""
    if value is None:
        return 0.0
    if isinstance(value, str) and len(value) <= 32:
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{what} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is not a number")
    try:
        rate = float(value)
    except OverflowError:
        raise ValueError(f"{what} is out of range") from None
    if not math.isfinite(rate):
        raise ValueError(f"{what} is not a finite number")
    return rate


def _verdict_part(value: Any, kind: type, what: str) -> Any:
    """A nested object or list of a verdict; absent (None) reads as empty."""
    if value is None:
        return kind()
    if not isinstance(value, Mapping if kind is dict else list):
        raise ValueError(
            f"{what} is {_json_type(value)}, not {'an object' if kind is dict else 'a list'}"
        )
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _tags(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        # Tolerated in case a message carries Tags as the JSON string it was sent as.
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return {str(k): str(v) for k, v in _mapping(value).items()}


@dataclass(frozen=True)
class CreateTaskResult:
    """What CreateImageModerationTask answers: the task to poll or wait for."""

    request_id: str
    task_id: str
    event_id: str


@dataclass(frozen=True)
class BlockFrame:
    """One offending frame of a GIF or long image; `rate` is IMM's confidence."""

    label: str
    offset: int
    rate: float


@dataclass(frozen=True)
class ModerationVerdict:
    """IMM's ModerationResult: a suggestion (pass | review | block) and what it was based on."""

    uri: str
    suggestion: str
    categories: list[str]
    frames_total: int
    block_frames: list[BlockFrame]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModerationVerdict:
        """Read a ModerationResult object; missing keys get empty defaults.

        Numbers written as strings are read as numbers; anything else of the wrong type or out
        of range (a list for Frames, a negative Offset, NaN) raises ValueError with the reason.
        """
        frames = _verdict_part(data.get("Frames"), dict, "ModerationResult.Frames")
        categories = _verdict_part(data.get("Categories"), list, "ModerationResult.Categories")
        block_frames = _verdict_part(frames.get("BlockFrames"), list, "Frames.BlockFrames")
        parsed_frames = []
        for n, frame in enumerate(block_frames):
            what = f"Frames.BlockFrames[{n}]"
            if not isinstance(frame, Mapping):
                raise ValueError(f"{what} is {_json_type(frame)}, not an object")
            parsed_frames.append(
                BlockFrame(
                    label=_verdict_text(frame, "Label", f"{what}.Label"),
                    offset=_verdict_int(frame.get("Offset"), f"{what}.Offset"),
                    rate=_verdict_rate(frame.get("Rate"), f"{what}.Rate"),
                )
            )
        return cls(
            uri=_verdict_text(data, "URI", "ModerationResult.URI"),
            suggestion=_verdict_text(data, "Suggestion", "ModerationResult.Suggestion"),
            categories=[
                _checked_text(c, f"ModerationResult.Categories[{n}]")
                for n, c in enumerate(categories)
            ],
            frames_total=_verdict_int(frames.get("TotalCount"), "Frames.TotalCount"),
            block_frames=parsed_frames,
        )

    def as_dict(self) -> dict[str, Any]:
        """Back to IMM's shape, for storing alongside the image."""
        return {
            "URI": self.uri,
            "Suggestion": self.suggestion,
            "Categories": list(self.categories),
            "Frames": {
                "TotalCount": self.frames_total,
                "BlockFrames": [
                    {"Label": f.label, "Offset": f.offset, "Rate": f.rate}
                    for f in self.block_frames
                ],
            },
        }


@dataclass(frozen=True)
class TaskInfo:
    """A task as GetTask and ListTasks describe it (no verdict: see GetImageModerationResult)."""

    task_id: str
    task_type: str
    status: str
    code: str
    message: str
    start_time: str
    end_time: str
    tags: dict[str, str]
    user_data: str
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskInfo:
        """Read a GetTask response or one of ListTasks' Tasks; missing keys become ""."""
        return cls(
            task_id=_text(data, "TaskId"),
            task_type=_text(data, "TaskType"),
            status=_text(data, "Status"),
            code=_text(data, "Code"),
            message=_text(data, "Message"),
            start_time=_text(data, "StartTime"),
            end_time=_text(data, "EndTime"),
            tags=_tags(data.get("Tags")),
            user_data=_text(data, "UserData"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class ImageModerationResult:
    """GetImageModerationResult: the task's state and, once it has one, its verdict."""

    request_id: str
    task_id: str
    task_type: str
    status: str
    code: str
    message: str
    start_time: str
    end_time: str
    user_data: str
    event_id: str
    verdict: ModerationVerdict | None
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageModerationResult:
        """Read a response; `verdict` is None until ModerationResult carries a Suggestion."""
        result = _mapping(data.get("ModerationResult"))
        return cls(
            request_id=_text(data, "RequestId"),
            task_id=_text(data, "TaskId"),
            task_type=_text(data, "TaskType"),
            status=_text(data, "Status"),
            code=_text(data, "Code"),
            message=_text(data, "Message"),
            start_time=_text(data, "StartTime"),
            end_time=_text(data, "EndTime"),
            user_data=_text(data, "UserData"),
            event_id=_text(data, "EventId"),
            verdict=ModerationVerdict.from_dict(result) if result.get("Suggestion") else None,
            raw=dict(data),
        )


@dataclass(frozen=True)
class TaskPage:
    """One page of ListTasks; `next_token` is "" on the last page."""

    tasks: list[TaskInfo]
    next_token: str
    request_id: str


def _query_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        # The docs spell booleans true/false; the SDK's str(True) is the odd one out.
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return acs3.to_json(dict(value))
    if isinstance(value, Sequence):
        return acs3.to_json(list(value))
    raise TypeError(f"cannot send {type(value).__name__} as an IMM parameter")


def _string_list(name: str, values: Sequence[str] | None) -> list[str] | None:
    # A bare string is a Sequence[str] too, and would go out as a JSON string, not an array.
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not a string")
    return None if values is None else list(values)


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("x-acs-retry-after")
    if raw is None:
        return None
    try:
        millis = float(raw)
    except ValueError:
        return None
    return millis / 1000 if millis > 0 else None


class ImmClient:
    """A typed IMM client over httpx, reusing connections across calls; safe to share between
    threads (each gets its own `httpx.Client` and connection).

    Use it as a context manager or call `close()`. `transport`, `sleep` and `random` are there
    for tests (httpx.MockTransport, a sleep that records, a fixed jitter); `_now` and `_nonce`
    pin x-acs-date and x-acs-signature-nonce to reproduce a signature vector.
    """

    def __init__(
        self,
        config: ImmConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random.random,
        _now: Callable[[], datetime] | None = None,
        _nonce: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self._endpoint = config.endpoint.rstrip("/")
        self._sleep = sleep
        self._random = random
        self._now = _now or (lambda: datetime.now(UTC))
        self._nonce = _nonce or (lambda: uuid.uuid4().hex)
        self._transport = transport
        self._ssl_context: ssl.SSLContext | None = None
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()

    @property
    def _http(self) -> httpx.Client:
        # One httpx.Client a thread, each keeping its thread's connection: httpcore's pool does
        # work in the square of its connections for every request (1.0.9), which with 64 threads
        # sharing one pool cost more CPU than signing and sending the requests.
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            with self._clients_lock:
                if self._transport is None and self._ssl_context is None:
                    self._ssl_context = httpx.create_ssl_context()  # loaded once, shared
                client = httpx.Client(
                    transport=self._transport,
                    verify=self._ssl_context or True,
                    timeout=httpx.Timeout(self.config.timeout),
                    follow_redirects=False,
                )
                self._clients.append(client)
            self._local.client = client
        return client

    def close(self) -> None:
        """Close the pooled connections (every thread's)."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
            self._local = threading.local()
        for client in clients:
            client.close()

    def __enter__(self) -> ImmClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Operations

    def create_image_moderation_task(
        self,
        *,
        source_uri: str,
        scenes: Sequence[str] | None = None,
        interval: int | None = None,
        max_frames: int | None = None,
        tags: Mapping[str, str] | None = None,
        user_data: str | None = None,
        notification: Mapping[str, Any] | None = None,
        credential_config: Mapping[str, Any] | None = None,
        pace: Pacer | None = None,
    ) -> CreateTaskResult:
        """Submit an image (an oss:// URI in the project's region) for moderation.

        Not idempotent: on `ImmError` with `ambiguous=True` the task may exist. Put an id of
        your own in `tags` so it can be found with `list_tasks(tag_selector="key=id")`.
        ValueError if `user_data` is over 2,048 bytes of UTF-8. `pace`: see Pacer.
        """
        if user_data is not None and len(user_data.encode()) > USER_DATA_MAX_BYTES:
            raise ValueError(
                f"UserData is {len(user_data.encode())} bytes; IMM accepts at most "
                f"{USER_DATA_MAX_BYTES}"
            )
        data = self._call(
            "CreateImageModerationTask",
            {
                "ProjectName": self.config.project,
                "SourceURI": source_uri,
                "Scenes": _string_list("scenes", scenes),
                "Interval": interval,
                "MaxFrames": max_frames,
                "Tags": tags,
                "UserData": user_data,
                "Notification": notification,
                "CredentialConfig": credential_config,
            },
            idempotent=False,
            pace=pace,
        )
        result = CreateTaskResult(
            request_id=_text(data, "RequestId"),
            task_id=_text(data, "TaskId"),
            event_id=_text(data, "EventId"),
        )
        if not result.task_id:
            # IMM accepted something but did not say which task: the caller must look it up.
            raise ImmError(
                INVALID_RESPONSE,
                "CreateImageModerationTask answered without a TaskId",
                request_id=result.request_id,
                http_status=200,
                ambiguous=True,
            )
        return result

    def get_task(self, task_id: str) -> TaskInfo:
        """GetTask for an ImageModeration task: its status, tags and user data, no verdict."""
        data = self._call(
            "GetTask",
            {"ProjectName": self.config.project, "TaskType": TASK_TYPE, "TaskId": task_id},
            idempotent=True,
        )
        return TaskInfo.from_dict(data)

    def get_image_moderation_result(self, task_id: str) -> ImageModerationResult:
        """GetImageModerationResult: the task's status and, when finished, its verdict."""
        data = self._call(
            "GetImageModerationResult",
            {"ProjectName": self.config.project, "TaskType": TASK_TYPE, "TaskId": task_id},
            idempotent=True,
        )
        try:
            return ImageModerationResult.from_dict(data)
        except ValueError as exc:
            raise ImmError(
                INVALID_RESPONSE, f"GetImageModerationResult answered an unreadable verdict: {exc}"
            ) from None

    def list_tasks(
        self,
        *,
        tag_selector: str | None = None,
        status: str | None = None,
        task_types: Sequence[str] = (TASK_TYPE,),
        max_results: int = LIST_TASKS_MAX_RESULTS,
        next_token: str | None = None,
        order: str | None = None,
        sort: str | None = None,
        pace: Pacer | None = None,
    ) -> TaskPage:
        """One page of ListTasks (IMM keeps tasks 7 days); max_results must be 1-100."""
        if not 1 <= max_results <= LIST_TASKS_MAX_RESULTS:
            raise ValueError(f"max_results must be 1-{LIST_TASKS_MAX_RESULTS}, got {max_results}")
        data = self._call(
            "ListTasks",
            {
                "ProjectName": self.config.project,
                "TaskTypes": _string_list("task_types", task_types),
                "Status": status,
                "TagSelector": tag_selector,
                "MaxResults": max_results,
                "NextToken": next_token or None,
                "Order": order,
                "Sort": sort,
            },
            idempotent=True,
            pace=pace,
        )
        tasks = data.get("Tasks")
        return TaskPage(
            tasks=[TaskInfo.from_dict(t) for t in tasks or [] if isinstance(t, Mapping)],
            next_token=_text(data, "NextToken"),
            request_id=_text(data, "RequestId"),
        )

    def iter_tasks(
        self,
        *,
        tag_selector: str | None = None,
        status: str | None = None,
        task_types: Sequence[str] = (TASK_TYPE,),
        max_results: int = LIST_TASKS_MAX_RESULTS,
        next_token: str | None = None,
        order: str | None = None,
        sort: str | None = None,
        pace: Pacer | None = None,
    ) -> Iterator[TaskInfo]:
        """Every task matching the filters, following NextToken page by page until it is empty."""
        seen: set[str] = set()
        token = next_token
        while True:
            page = self.list_tasks(
                tag_selector=tag_selector,
                status=status,
                task_types=task_types,
                max_results=max_results,
                next_token=token,
                order=order,
                sort=sort,
                pace=pace,
            )
            yield from page.tasks
            if not page.next_token:
                return
            if page.next_token in seen:
                # A token handed out twice would page forever.
                raise ImmError(
                    INVALID_RESPONSE,
                    "ListTasks returned a NextToken it had already returned",
                    request_id=page.request_id,
                    http_status=200,
                )
            seen.add(page.next_token)
            token = page.next_token

    # The wire

    def _call(
        self,
        action: str,
        params: Mapping[str, Any],
        *,
        idempotent: bool,
        pace: Pacer | None = None,
    ) -> dict[str, Any]:
        query = {key: _query_value(value) for key, value in params.items() if value is not None}
        # Sent as a string so httpx keeps it byte for byte: it is exactly what was signed.
        url = f"{self._endpoint}/?{acs3.canonical_query(query)}"
        attempts = self.config.max_attempts
        after_throttle = False
        for attempt in range(1, attempts + 1):
            if pace is not None:
                pace.take(after_throttle=after_throttle)
            try:
                return self._attempt(action, url, query, attempt)
            except ImmError as error:
                # Everyone sharing the budget holds back, and so does this call: below.
                paused = pace.throttled(error.retry_after) if pace and error.throttled else 0.0
                after_throttle = error.throttled
                if attempt == attempts or not self._may_retry(error, idempotent):
                    raise
                delay = max(self._delay(attempt - 1, error.retry_after), paused)
                logger.warning(
                    "IMM %s attempt %d/%d failed (%s); retrying in %.2fs",
                    action,
                    attempt,
                    attempts,
                    error,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _may_retry(error: ImmError, idempotent: bool) -> bool:
        if idempotent:
            return error.retryable
        # A create is repeated only when IMM cannot have acted on it.
        return error.throttled or (error.code in (TRANSPORT, TIMEOUT) and not error.ambiguous)

    def _delay(self, retry_index: int, retry_after: float | None) -> float:
        base, cap = self.config.backoff_base, self.config.backoff_cap
        backoff = min(cap, base * 2 ** min(retry_index, 32)) * self._random()
        if retry_after is None:
            return backoff
        return min(max(retry_after, backoff), cap * RETRY_AFTER_CAP_FACTOR)

    def _redact(self, text: str) -> str:
        # Messages come from the server or from exceptions; neither should be able to leak these.
        for secret in (self.config.access_key_secret, self.config.security_token):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def _attempt(
        self, action: str, url: str, query: Mapping[str, str], attempt: int
    ) -> dict[str, Any]:
        config = self.config
        acs_headers = {
            "x-acs-action": action,
            "x-acs-version": API_VERSION,
            "x-acs-date": self._now().astimezone(UTC).strftime(_DATE_FORMAT),
            "x-acs-signature-nonce": self._nonce(),
            "x-acs-content-sha256": acs3.EMPTY_BODY_SHA256,
        }
        if config.security_token:
            acs_headers["x-acs-accesskey-id"] = config.access_key_id
            acs_headers["x-acs-security-token"] = config.security_token
        request = self._http.build_request(
            "POST", url, headers={**acs_headers, "accept": "application/json"}
        )
        # httpx derives Host from the URL (port included unless default); sign what it sends.
        signed = {"host": request.headers["host"], **acs_headers}
        signature = acs3.sign(
            method="POST",
            query=query,
            headers=signed,
            signed_header_names=signed.keys(),
            access_key_id=config.access_key_id,
            access_key_secret=config.access_key_secret,
        )
        request.headers["authorization"] = signature.authorization

        started = time.monotonic()
        try:
            response = self._http.send(request)
        except httpx.TransportError as exc:
            timed_out = isinstance(exc, httpx.TimeoutException)
            logger.debug(
                "IMM %s attempt %d: %s after %.0f ms",
                action,
                attempt,
                type(exc).__name__,
                (time.monotonic() - started) * 1000,
            )
            raise ImmError(
                TIMEOUT if timed_out else TRANSPORT,
                self._redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__),
                ambiguous=not isinstance(exc, _NOT_SENT),
            ) from exc
        except httpx.DecodingError as exc:
            # IMM answered, so it may have acted; but the body could not be decoded.
            raise ImmError(
                INVALID_RESPONSE,
                self._redact(f"undecodable response body: {exc}"),
                ambiguous=True,
            ) from exc

        status = response.status_code
        try:
            body: Any = json.loads(response.content)
        except ValueError:
            body = None
        data: Mapping[str, Any] = body if isinstance(body, dict) else {}
        request_id = (
            _text(data, "RequestId")
            or _text(data, "requestId")
            or response.headers.get("x-acs-request-id", "")
        )
        logger.debug(
            "IMM %s attempt %d: HTTP %d RequestId %s in %.0f ms",
            action,
            attempt,
            status,
            request_id or "-",
            (time.monotonic() - started) * 1000,
        )

        if response.is_success:
            if not isinstance(body, dict):
                raise ImmError(
                    INVALID_RESPONSE,
                    self._redact(f"expected a JSON object, got {_snippet(response)}"),
                    request_id=request_id,
                    http_status=status,
                    ambiguous=True,
                )
            return body

        code = _text(data, "Code") or _text(data, "code")
        message = _text(data, "Message") or _text(data, "message")
        if not code:
            code = INVALID_RESPONSE
            message = message or f"HTTP {status} {response.reason_phrase}: {_snippet(response)}"
        raise ImmError(
            code,
            self._redact(message),
            request_id=request_id,
            http_status=status,
            retry_after=_retry_after(response),
            ambiguous=status >= 500 and not _is_throttling(code, message),
        )


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip()
    if not text:
        return "an empty body"
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


# --- MNS push certificates -------------------------------------------------------------------

# MNS signs pushes with a handful of long-lived certificates, so each is fetched once per process
# and kept. The notification view asks only for URLs of the published form, and only for a push
# that has passed every check it can make without the certificate (moderation/imm/notifications.py);
# what remains an unauthenticated client can do is bounded here: what is kept, and how many
# distinct URLs are fetched a minute.
MNS_CERTIFICATE_MAX_BYTES = 16 * 1024  # a PEM certificate is 1-2 KB
# Certificates kept, and failures remembered, each in its own LRU of this many entries: failures
# an attacker provokes never push a good certificate out.
MNS_CERTIFICATE_CACHE_ENTRIES = 16
MNS_CERTIFICATE_FAILURE_SECONDS = 60.0  # a failed fetch is not tried again for this long
# Distinct certificate URLs fetched a minute, across processes when they share Django's cache
# (with the default per-process cache, per process).
MNS_CERTIFICATE_URLS_PER_MINUTE = 5
MNS_CERTIFICATE_LIMITED = "MnsCertificateFetchLimit"  # ImmError code once the limit is reached
# Tests put an httpx.MockTransport here; None means the network.
MNS_CERTIFICATE_TRANSPORT: httpx.BaseTransport | None = None


class _CertificateCache:
    """An LRU bounded in entries, whose entries may expire; thread-safe."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[bytes | ImmError, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str, now: float) -> bytes | ImmError | None:
        with self._lock:
            entry = self._entries.get(url)
            if entry is None:
                return None
            value, expires = entry
            if expires is not None and now >= expires:
                del self._entries[url]
                return None
            self._entries.move_to_end(url)
            return value

    def put(self, url: str, value: bytes | ImmError, expires: float | None = None) -> None:
        with self._lock:
            self._entries[url] = (value, expires)
            self._entries.move_to_end(url)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __contains__(self, url: str) -> bool:
        with self._lock:
            return url in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


MNS_CERTIFICATES = _CertificateCache(MNS_CERTIFICATE_CACHE_ENTRIES)
MNS_CERTIFICATE_FAILURES = _CertificateCache(MNS_CERTIFICATE_CACHE_ENTRIES)


def mns_certificate(
    url: str,
    *,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """The PEM certificate MNS signed a push with (cached). Raises ImmError when unavailable.

    A failure is remembered for MNS_CERTIFICATE_FAILURE_SECONDS; a URL not yet held is fetched
    only while fewer than MNS_CERTIFICATE_URLS_PER_MINUTE distinct URLs were fetched this
    minute (ImmError code MNS_CERTIFICATE_LIMITED otherwise).
    """
    now = clock()
    cached = MNS_CERTIFICATES.get(url, now)
    if isinstance(cached, bytes):
        return cached
    failed = MNS_CERTIFICATE_FAILURES.get(url, now)
    if isinstance(failed, ImmError):
        raise ImmError(
            failed.code, f"{failed.message} (remembered)", http_status=failed.http_status
        )
    if not _may_fetch_certificate(url):
        raise ImmError(
            MNS_CERTIFICATE_LIMITED,
            f"over {MNS_CERTIFICATE_URLS_PER_MINUTE} distinct MNS certificate URLs this minute",
        )
    try:
        content = _fetch_certificate(url, transport or MNS_CERTIFICATE_TRANSPORT)
    except ImmError as error:
        MNS_CERTIFICATE_FAILURES.put(url, error, expires=now + MNS_CERTIFICATE_FAILURE_SECONDS)
        raise
    MNS_CERTIFICATES.put(url, content)
    return content


def _fetch_certificate(url: str, transport: httpx.BaseTransport | None) -> bytes:
    try:
        with (
            httpx.Client(transport=transport, timeout=5.0, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise ImmError(
                    INVALID_RESPONSE,
                    f"the MNS certificate URL answered HTTP {response.status_code}",
                    http_status=response.status_code,
                )
            content = bytearray()
            for chunk in response.iter_bytes():
                content += chunk
                if len(content) > MNS_CERTIFICATE_MAX_BYTES:
                    raise ImmError(
                        INVALID_RESPONSE,
                        f"the MNS certificate is larger than {MNS_CERTIFICATE_MAX_BYTES} bytes",
                        http_status=200,
                    )
    except httpx.HTTPError as exc:
        raise ImmError(TRANSPORT, f"fetching the MNS certificate failed: {exc}") from None
    try:
        x509.load_pem_x509_certificate(bytes(content))
    except ValueError:
        raise ImmError(
            INVALID_RESPONSE, "the MNS certificate URL did not answer a PEM certificate"
        ) from None
    return bytes(content)


def _may_fetch_certificate(url: str) -> bool:
    """Count `url` among this minute's distinct fetches; False once over the limit.

    Kept in Django's cache, so processes that share the cache share the limit. A URL counted
    this minute keeps its answer: a retry of an allowed URL is allowed, of a refused one refused.
    """
    from django.core.cache import cache

    window = int(time.time() // 60)
    digest = hashlib.sha256(url.encode()).hexdigest()[:32]
    url_key = f"mns-cert:url:{window}:{digest}"
    decided = cache.get(url_key)
    if decided is not None:
        return bool(decided)
    count_key = f"mns-cert:count:{window}"
    cache.add(count_key, 0, timeout=120)
    try:
        count = cache.incr(count_key)
    except ValueError:  # expired between add and incr
        cache.add(count_key, 1, timeout=120)
        count = 1
    allowed = count <= MNS_CERTIFICATE_URLS_PER_MINUTE
    cache.add(url_key, int(allowed), timeout=120)
    return allowed
