"""The only module that sends webhooks over the network (and the only one here importing httpx).

What it guarantees for every request:
- https only, except to the hosts an admin lists in WEBHOOK_ALLOWED_HOSTS (local receivers,
  tests), which may use http and private or loopback addresses;
- never to a link-local address (169.254.0.0/16, fe80::/10) or a cloud metadata address
  (169.254.169.254, fd00:ec2::254, 100.100.100.200, 168.63.129.16), allowed or not;
- the addresses checked are the addresses connected to: the connection pool's network backend
  resolves the name itself, refuses the whole name if any address is refused, and connects to
  a checked address (TLS still verifies the certificate against the name), so a name that
  resolved to a public address at registration and to 127.0.0.1 now (DNS rebinding) is
  refused;
- 2 seconds to connect, 10 seconds in all for one request (every read and write is held to
  what is left), no redirects followed (a 3xx is a failed attempt), no proxy from the
  environment, and at most RESPONSE_HEAD_BYTES of the answer kept, from the first bytes read.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings

from .models import RESPONSE_HEAD_BYTES

CONNECT_TIMEOUT = 2.0
TOTAL_TIMEOUT = 10.0
USER_AGENT = "imm-moderation-webhooks/1"

# Always refused, whatever WEBHOOK_ALLOWED_HOSTS says.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)

# What went wrong when no HTTP answer came (Attempt.error).
TIMEOUT = "timeout"
CONNECT = "connect"
REFUSED = "refused_address"
PROTOCOL = "protocol"
ERROR = "error"

Resolver = Callable[[str, int], Sequence[str]]


class RefusedDestination(ValueError):
    """The URL or one of the addresses its host resolves to may not receive webhooks."""


def _host_allowed(host: str, allowed: Iterable[str]) -> bool:
    host = host.lower().strip("[]")
    return any(host == entry.lower().strip("[]") for entry in allowed)


def address_refusal(address: str, *, host_allowed: bool) -> str | None:
    """Why webhooks may not go to `address`, or None when they may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_multicast or ip.is_unspecified:
        return f"{ip} is not a unicast address"
    if not ip.is_global and not host_allowed:
        return (
            f"{ip} is a private, loopback or reserved address; list the host in "
            "WEBHOOK_ALLOWED_HOSTS to allow it"
        )
    return None


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, *, allowed_hosts: Iterable[str] | None = None) -> None:
    """Refuse (RefusedDestination) a URL webhooks may not use, before any name is resolved."""
    allowed = settings.WEBHOOK_ALLOWED_HOSTS if allowed_hosts is None else allowed_hosts
    if not url.isprintable():
        # urlsplit drops tabs and newlines silently and keeps other control characters; httpx
        # refuses both (and a zero-width space in a host name). A URL that can never be sent
        # must not be registered.
        raise RefusedDestination("the URL holds a control or invisible character")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        # What httpx will send to: an IPv4 address written with leading zeros (010.0.0.1), a
        # host IDNA 2008 refuses (a zero-width space, a symbol) pass urlsplit and the system's
        # resolver but fail here, at every send.
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise RefusedDestination(f"not a URL: {exc}") from None
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise RefusedDestination("the URL must start with https:// and name a host")
    if parts.username is not None or parts.password is not None:
        raise RefusedDestination("the URL must not carry a user name or password")
    if parts.scheme == "http" and not _host_allowed(host, allowed):
        raise RefusedDestination(
            "webhooks go over https only; plain http is for hosts listed in WEBHOOK_ALLOWED_HOSTS"
        )


def check_destination(
    url: str, *, allowed_hosts: Iterable[str] | None = None, resolver: Resolver | None = None
) -> None:
    """check_url, then resolve the host now and refuse it if any address is refused (done at
    registration; every send checks again, at connect time)."""
    allowed = list(settings.WEBHOOK_ALLOWED_HOSTS if allowed_hosts is None else allowed_hosts)
    check_url(url, allowed_hosts=allowed)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = (resolver or system_resolver)(host, port)
    except httpcore.ConnectError as exc:
        raise RefusedDestination(str(exc)) from None
    host_allowed = _host_allowed(host, allowed)
    for address in addresses:
        refusal = address_refusal(address, host_allowed=host_allowed)
        if refusal:
            raise RefusedDestination(f"{host} resolves to {refusal}")


# ---------------------------------------------------------------------------- the connections

_deadline = threading.local()


def _remaining(timeout: float | None) -> float:
    """`timeout`, cut to what is left of this thread's request deadline."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout if timeout is not None else TOTAL_TIMEOUT
    left = at - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the request took longer than its total time limit")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _remaining(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, _remaining(timeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves, checks every address, then connects to a checked one."""

    def __init__(self, resolver: Resolver | None = None) -> None:
        self._inner = httpcore.SyncBackend()
        self.resolver = resolver or system_resolver

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        host_allowed = _host_allowed(host, settings.WEBHOOK_ALLOWED_HOSTS)
        addresses = self.resolver(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            refusal = address_refusal(address, host_allowed=host_allowed)
            if refusal:
                raise RefusedDestination(f"{host} resolves to {refusal}")
        error: Exception | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    address, port, _remaining(timeout), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream)
        assert error is not None
        raise error


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, *, limits: httpx.Limits, resolver: Resolver | None) -> None:
        super().__init__(limits=limits, trust_env=False)
        ssl_context = httpx.create_ssl_context(trust_env=False)
        # httpx has no argument for the network backend; its pool takes one. The pool it made
        # is replaced before any request, with the same limits (httpx is pinned below 0.29).
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(resolver),
        )


# ---------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Result:
    """What one request got: an HTTP status, or an error kind; the time; the answer's head."""

    status_code: int | None
    error: str
    latency_ms: int
    head: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """One pooled HTTP client for every thread of a worker; `send` is thread-safe."""

    def __init__(self, *, connections: int = 32, resolver: Resolver | None = None) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.Client(
            transport=_GuardedTransport(limits=limits, resolver=resolver),
            timeout=httpx.Timeout(TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT),
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
        )

    def __enter__(self) -> Sender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def send(self, url: str, *, body: bytes, headers: dict[str, str]) -> Result:
        """POST `body` to `url`; never raises for anything the network or the receiver does."""
        started = time.monotonic()
        _deadline.at = started + TOTAL_TIMEOUT
        status: int | None = None
        error = ""
        head = b""
        try:
            check_url(url)
            with self._client.stream(
                "POST",
                url,
                content=body,
                headers={**headers, "content-type": "application/json"},
            ) as response:
                status = response.status_code
                for chunk in response.iter_raw():
                    head += chunk[: RESPONSE_HEAD_BYTES - len(head)]
                    if len(head) >= RESPONSE_HEAD_BYTES:
                        break
        except (RefusedDestination, httpx.InvalidURL) as exc:
            error, head = REFUSED, str(exc).encode()
        except httpx.TimeoutException as exc:
            if status is None:
                error, head = TIMEOUT, (str(exc) or "timed out").encode()
        except httpx.ConnectError as exc:
            error, head = CONNECT, str(exc).encode()
        except (httpx.RemoteProtocolError, httpx.LocalProtocolError) as exc:
            if status is None:
                error, head = PROTOCOL, str(exc).encode()
        except (httpx.HTTPError, OSError) as exc:
            if status is None:
                error, head = ERROR, (str(exc) or type(exc).__name__).encode()
        finally:
            _deadline.at = None
        latency_ms = round((time.monotonic() - started) * 1000)
        return Result(
            status_code=status,
            error=error,
            latency_ms=latency_ms,
            head=head[:RESPONSE_HEAD_BYTES].decode("utf-8", errors="replace"),
        )
