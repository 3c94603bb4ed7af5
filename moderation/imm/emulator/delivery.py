"""Task notifications: the message IMM publishes, POSTed to a URL as an EventBridge HTTP target.

Real IMM notifies only through MNS, RocketMQ or EventBridge (REFERENCE.md 5.1); the emulator
stands in for an EventBridge rule with an HTTP target, so every finished task is delivered to the
notify URL whether or not its Notification parameter was given. The body is the CloudEvents-style
envelope of REFERENCE.md 5.2, whose `content` is the task message as a JSON string.

Deliveries are retried with exponential backoff when the target fails (a non-2xx answer, a
redirect or a network error). Switches misbehave on purpose, as at-least-once delivery does,
and a seed makes them repeatable: each message draws, in the order tasks finish, whether it is
dropped and whether it is sent twice; `reorder` holds messages and sends each batch of
`reorder_batch` (or whatever is held after `reorder_window` seconds) in reverse order.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .scheduler import Scheduler
from .store import SUCCEEDED, Task, iso_ms

logger = logging.getLogger(__name__)

SOURCE = "acs.imm"
TOKEN_HEADER = "X-IMM-Notify-Token"  # noqa: S105 (a header name, not a secret)


def task_message(task: Task) -> dict[str, Any]:
    """The task message (the envelope's `content`), keys in the documented order."""
    message: dict[str, Any] = {
        "ProjectName": task.project,
        "DatasetName": "",
        "RequestId": task.request_id,
        "StartTime": iso_ms(task.start_ms),
        "EndTime": iso_ms(task.end_ms),
        "UserData": task.user_data or "",
        "TaskType": task.task_type,
        "TaskId": task.task_id,
        "Status": task.status,
        "Code": task.code,
        "Message": task.message,
        "EventSourceId": "",
    }
    if task.tags is not None:
        message["Tags"] = task.tags
    if task.status == SUCCEEDED and task.result is not None:
        message["ModerationResult"] = task.result
    return message


def envelope(task: Task, *, region: str, account_id: str) -> dict[str, str]:
    return {
        "id": str(uuid.uuid4()).upper(),
        "source": SOURCE,
        "type": f"imm:Task:{task.task_type}",
        "subject": f"acs:imm:{region}:{account_id}:{task.project}/imm:Task:{task.task_type}",
        "time": str(task.end_ms if task.end_ms is not None else task.start_ms),
        "content": json.dumps(task_message(task), ensure_ascii=False, separators=(",", ":")),
    }


def safe_url(url: str) -> str:
    """The URL without credentials or query string, fit for a log line."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect (to a login page, say) is a failed delivery, not a success to follow.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class Delivery:
    task_id: str
    body: bytes


class Notifier:
    def __init__(
        self,
        *,
        url: str,
        token: str,
        scheduler: Scheduler,
        duplicate_rate: float = 0.0,
        drop_rate: float = 0.0,
        reorder: bool = False,
        reorder_batch: int = 3,
        reorder_window: float = 1.0,
        seed: int | None = None,
        retries: int = 4,
        retry_backoff: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self._token = token
        self.scheduler = scheduler
        self.duplicate_rate = duplicate_rate
        self.drop_rate = drop_rate
        self.reorder = reorder
        self.reorder_batch = max(1, reorder_batch)
        self.reorder_window = reorder_window
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.timeout = timeout
        # Not for security: a seeded generator so that a misbehaving run can be repeated.
        self._random = random.Random(seed)  # noqa: S311
        self._lock = threading.Lock()
        self._held: list[Delivery] = []
        self._batch = 0
        # The notify URL is usually the dashboard on this machine: never through a proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects)

    def notify(self, task_id: str, message: dict[str, str]) -> None:
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        with self._lock:
            # Always draw both, so one switch does not change what the other decides.
            drop = self._random.random() < self.drop_rate
            duplicate = self._random.random() < self.duplicate_rate
        if drop:
            logger.info("notification for %s dropped on purpose (drop rate)", task_id)
            return
        delivery = Delivery(task_id, body)
        self._enqueue(delivery)
        if duplicate:
            logger.info("notification for %s sent twice on purpose (duplicate rate)", task_id)
            self._enqueue(delivery)

    def _enqueue(self, delivery: Delivery) -> None:
        if not self.reorder:
            self.scheduler.call_later(0, functools.partial(self._send, delivery, 1))
            return
        with self._lock:
            self._held.append(delivery)
            if len(self._held) >= self.reorder_batch:
                self._flush()
            elif len(self._held) == 1:
                batch = self._batch
                self.scheduler.call_later(
                    self.reorder_window, functools.partial(self._flush_batch, batch)
                )

    def _flush_batch(self, batch: int) -> None:
        with self._lock:
            if batch == self._batch and self._held:
                self._flush()

    def _flush(self) -> None:
        held, self._held = self._held, []
        self._batch += 1
        for delivery in reversed(held):
            self.scheduler.call_later(0, functools.partial(self._send, delivery, 1))

    def _send(self, delivery: Delivery, attempt: int) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "imm-emulator"}
        if self._token:
            headers[TOKEN_HEADER] = self._token
        request = urllib.request.Request(  # noqa: S310 (the URL is the operator's own setting)
            self.url, data=delivery.body, headers=headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
        else:
            logger.info(
                "notification for %s delivered to %s (HTTP %s, attempt %d)",
                delivery.task_id,
                safe_url(self.url),
                status,
                attempt,
            )
            return
        if attempt > self.retries:
            logger.warning(
                "notification for %s to %s failed (%s); gave up after %d attempts",
                delivery.task_id,
                safe_url(self.url),
                problem,
                attempt,
            )
            return
        delay = self.retry_backoff * 2 ** (attempt - 1)
        logger.warning(
            "notification for %s to %s failed (%s, attempt %d of %d); retrying in %.2f s",
            delivery.task_id,
            safe_url(self.url),
            problem,
            attempt,
            self.retries + 1,
            delay,
        )
        self.scheduler.call_later(delay, functools.partial(self._send, delivery, attempt + 1))
