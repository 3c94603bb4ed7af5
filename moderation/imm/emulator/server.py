"""The emulator: a threaded HTTP server speaking IMM's wire protocol, and its worker threads."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Self, cast

from django.conf import settings
from django.core.files.storage import Storage, default_storage

from moderation import intake

from . import detector
from .delivery import Notifier, envelope, safe_url
from .gateway import (
    ApiError,
    FlowControl,
    IncomingRequest,
    NonceCache,
    authenticate,
    error_body,
    route,
    throttled,
)
from .operations import Operations, new_request_id, split_oss_uri
from .scheduler import Scheduler
from .store import RUNNING, SUCCEEDED, Task, TaskStore

logger = logging.getLogger(__name__)

# The account id in notification subjects (acs:imm:<region>:<account>:<project>/...).
ACCOUNT_ID = "1234567890123456"
MAX_BODY_BYTES = 1024 * 1024


class TaskFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: a client opening dozens of connections at once
    # had SYNs dropped, and the kernel resends those a second later.
    request_queue_size = 128
    emulator: Emulator

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    # Open connections are tracked so that stop() can end keep-alive ones too: a pooled client
    # connection must not reach an emulator that has stopped.
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address, exc_info=True)

    def serve_until(self, stop: socket.socket) -> None:
        """Serve until `stop` becomes readable: stops at once, where serve_forever polls."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(stop, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if stop in ready:
                    return
                self.handle_request()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "imm-emulator"
    timeout = 30  # idle keep-alive connections are closed after this many seconds
    # An answer is written as headers, then body: with Nagle's algorithm the body waited for the
    # client's delayed ACK of the headers, about 40 ms on Linux, on every request.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            # The body is left unread, so this connection cannot carry another request.
            self.close_connection = True
            request_id = new_request_id()
            error = (
                ApiError(400, "InvalidParameter", "The Content-Length header is not valid.")
                if length < 0
                else ApiError(413, "RequestEntityTooLarge", "The request body is too large.")
            )
            host = self.headers.get("Host", "")
            payload = error_body(error, request_id=request_id, host=host)
            self._respond(error.status, {"x-acs-request-id": request_id}, payload)
            return
        body = self.rfile.read(length) if length else b""
        request = IncomingRequest.parse(self.command, self.path, self.headers.items(), body)
        self._respond(*self.server.emulator.handle(request))

    def _respond(self, status: int, headers: dict[str, str], payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        # In this connection's own thread, so other requests are answered meanwhile, as a far
        # region's are: the latency delays each answer without serialising them.
        emulator = self.server.emulator
        if emulator.latency > 0:
            emulator.sleep(emulator.latency)
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class Emulator:
    """IMM on this machine. `start()` returns the bound port (pass port=0 for any free one).

    Images are read from `storage` (default: Django's default_storage) for SourceURIs in
    `bucket`; tasks are kept in the SQLite file `state` (":memory:" forgets them on stop). Tasks
    stay Running for `delay` seconds, then finish and are notified to `notify_url` at once.
    Every answer is sent `latency` seconds late (IMM in a far region, or slow to answer), each in
    its own connection's thread, so answers are delayed without being serialised.
    With `manual_review` (seconds; None, the default, leaves it off) a review verdict is followed
    that long after by IMM's manual review: the task's result becomes pass or block and a second
    notification is sent (detector.manual_review_outcome).
    """

    def __init__(
        self,
        *,
        access_key_id: str,
        access_key_secret: str,
        project: str,
        bucket: str,
        region: str = "cn-hangzhou",
        account_id: str = ACCOUNT_ID,
        host: str = "127.0.0.1",
        port: int = 0,
        state: str | Path = ":memory:",
        storage: Storage | None = None,
        delay: float = 0.0,
        latency: float = 0.0,
        manual_review: float | None = None,
        rules: str | Path | Sequence[detector.Rule] | None = None,
        notify_url: str | None = None,
        notify_token: str = "",
        throttle_rps: float = 0.0,
        duplicate_rate: float = 0.0,
        drop_rate: float = 0.0,
        reorder: bool = False,
        reorder_batch: int = 3,
        reorder_window: float = 1.0,
        seed: int | None = None,
        retries: int = 4,
        retry_backoff: float = 1.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for name, rate in (("duplicate_rate", duplicate_rate), ("drop_rate", drop_rate)):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be from 0 to 1; got {rate}")
        if not (delay >= 0 and throttle_rps >= 0 and 0 <= latency <= 60):
            raise ValueError(
                "delay and throttle_rps cannot be negative, and latency must be from 0 to 60 "
                f"seconds; got delay {delay}, throttle_rps {throttle_rps}, latency {latency}"
            )
        if manual_review is not None and not (math.isfinite(manual_review) and manual_review > 0):
            raise ValueError(
                f"manual_review must be a positive number of seconds; got {manual_review}"
            )
        self.access_key_id = access_key_id
        self._access_key_secret = access_key_secret
        self.project = project
        self.bucket = bucket
        self.region = region
        self.account_id = account_id
        self.host = host
        self.port = port
        self.delay = delay
        self.latency = latency
        self.sleep = sleep
        self.manual_review = manual_review
        self.clock = clock
        if rules is None or rules == "":
            self.rules: list[detector.Rule] = []
        elif isinstance(rules, str | Path):
            self.rules = detector.load_rules(rules)
        else:
            self.rules = list(rules)
        self._storage = storage
        self.store = TaskStore(str(state))
        self.operations = Operations(
            store=self.store, project=project, now_ms=self.now_ms, created=self._schedule
        )
        self._nonces = NonceCache()
        self._flow = FlowControl(throttle_rps)
        self._processing = Scheduler("imm-emulator-processing")
        self._delivery = Scheduler("imm-emulator-delivery")
        self.notifier = (
            Notifier(
                url=notify_url,
                token=notify_token,
                scheduler=self._delivery,
                duplicate_rate=duplicate_rate,
                drop_rate=drop_rate,
                reorder=reorder,
                reorder_batch=reorder_batch,
                reorder_window=reorder_window,
                seed=seed,
                retries=retries,
                retry_backoff=retry_backoff,
            )
            if notify_url
            else None
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None

    @classmethod
    def from_settings(cls, **overrides: Any) -> Emulator:
        """An emulator configured from the IMM settings; keyword arguments override them."""
        options: dict[str, Any] = {
            "access_key_id": settings.IMM_ACCESS_KEY_ID,
            "access_key_secret": settings.IMM_ACCESS_KEY_SECRET,
            "project": settings.IMM_PROJECT,
            "bucket": settings.IMM_OSS_BUCKET,
            "region": settings.IMM_REGION,
            "port": settings.IMM_EMULATOR_PORT,
            "state": settings.IMM_EMULATOR_STATE,
            "delay": settings.IMM_EMULATOR_DELAY,
            "latency": settings.IMM_EMULATOR_LATENCY_MS / 1000,
            "manual_review": settings.IMM_EMULATOR_MANUAL_REVIEW,
            "rules": settings.IMM_EMULATOR_RULES or None,
            "notify_url": settings.IMM_EMULATOR_NOTIFY_URL or None,
            "notify_token": settings.IMM_NOTIFY_TOKEN,
        }
        options.update(overrides)
        return cls(**options)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> int:
        self._server = _Server((self.host, self.port))
        self._server.emulator = self
        self.port = self._server.server_address[1]
        self._processing.start()
        self._delivery.start()
        now = self.now_ms()
        purged = self.store.purge_expired(now_ms=now)
        resumed = self.store.running(now_ms=now)
        for task in resumed:
            self._schedule(task)
        in_review = self.store.in_manual_review(now_ms=now)
        for task in in_review:
            self._schedule_review(task)
        if purged or resumed or in_review:
            logger.info(
                "%d expired task(s) purged, %d running task(s) and %d manual review(s) resumed",
                purged,
                len(resumed),
                len(in_review),
            )
        self._wakeup = socket.socketpair()
        self._thread = threading.Thread(
            target=self._server.serve_until,
            args=(self._wakeup[0],),
            name="imm-emulator-http",
            daemon=True,
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving, then the workers; tasks still Running resume on the next start."""
        if self._thread is not None and self._wakeup is not None:
            self._wakeup[1].send(b"stop")
            self._thread.join()
            self._thread = None
        if self._wakeup is not None:
            for end in self._wakeup:
                end.close()
            self._wakeup = None
        if self._server is not None:
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        self._processing.stop()
        self._delivery.stop()
        self.store.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(self, request: IncomingRequest) -> tuple[int, dict[str, str], dict[str, Any]]:
        """(status, extra headers, JSON body) for one request."""
        request_id = new_request_id()
        headers = {"x-acs-request-id": request_id}
        action = request.headers.get("x-acs-action", "-")
        try:
            if (retry_after := self._flow.admit()) is not None:
                raise throttled(retry_after)
            route(request, self.operations.actions)
            authenticate(
                request,
                access_key_id=self.access_key_id,
                access_key_secret=self._access_key_secret,
                nonces=self._nonces,
                now=self.clock(),
            )
            body = self.operations.actions[action](request.params, request_id)
        except ApiError as error:
            logger.info("%s -> %s %s (%s)", action, error.status, error.code, request_id)
            return (
                error.status,
                headers | error.headers,
                error_body(error, request_id=request_id, host=request.host),
            )
        except Exception:
            logger.exception("%s failed (%s)", action, request_id)
            failure = ApiError(500, "InternalError", "The request processing has failed.")
            return 500, headers, error_body(failure, request_id=request_id, host=request.host)
        # Reads are what a poller repeats; only changes are worth a line at INFO.
        level = logging.INFO if action == "CreateImageModerationTask" else logging.DEBUG
        logger.log(level, "%s -> 200 (%s)", action, request_id)
        return 200, headers, body

    def _schedule(self, task: Task) -> None:
        due = task.start_ms / 1000 + self.delay - self.clock()
        self._processing.call_later(due, functools.partial(self._process, task.task_id))

    def _schedule_review(self, task: Task) -> None:
        due = (task.review_due_ms or 0) / 1000 - self.clock()
        self._processing.call_later(due, functools.partial(self._finish_review, task.task_id))

    def _process(self, task_id: str) -> None:
        task = self.store.get(task_id, now_ms=self.now_ms())
        if task is None or task.status != RUNNING:
            return
        end_ms = max(self.now_ms(), task.start_ms)
        try:
            verdict = self._moderate(task)
            result = verdict.moderation_result(task.source_uri)
        except TaskFailed as failure:
            task = task.finished(end_ms=end_ms, code=failure.code, message=failure.message)
        except Exception:
            logger.exception("task %s could not be processed", task_id)
            task = task.finished(
                end_ms=end_ms,
                code="InternalError",
                message="The emulator could not process the image; its log has the details.",
            )
        else:
            task = task.finished(end_ms=end_ms, result=result)
            if self.manual_review is not None and result["Suggestion"] == "review":
                task = replace(
                    task,
                    review_due_ms=end_ms + round(self.manual_review * 1000),
                    review_outcome=detector.manual_review_outcome(result, verdict.manual_review),
                )
        self.store.save(task)
        logger.info(
            "task %s %s %s",
            task.task_id,
            task.status,
            task.result["Suggestion"] if task.result else task.code,
        )
        self._notify(task)
        if task.review_due_ms is not None:
            self._schedule_review(task)

    def _finish_review(self, task_id: str) -> None:
        """IMM's manual review has ended: the task's result becomes its outcome, notified again."""
        task = self.store.get(task_id, now_ms=self.now_ms())
        if (
            task is None
            or task.status != SUCCEEDED
            or task.review_due_ms is None
            or task.review_outcome is None
            or task.result is None
        ):
            return
        result = detector.reviewed_result(task.result, task.review_outcome)
        task = replace(
            task,
            result=result,
            # Later than the first word even within the same millisecond: a consumer takes the
            # result with the later EndTime as the one that stands.
            end_ms=max(self.now_ms(), task.review_due_ms, (task.end_ms or 0) + 1),
            review_due_ms=None,
            review_outcome=None,
        )
        self.store.save(task)
        logger.info("task %s manual review: %s", task.task_id, result["Suggestion"])
        self._notify(task)

    def _notify(self, task: Task) -> None:
        if self.notifier is not None:
            message = envelope(task, region=self.region, account_id=self.account_id)
            self.notifier.notify(task.task_id, message)

    def _moderate(self, task: Task) -> detector.Verdict:
        bucket, key = split_oss_uri(task.source_uri) or ("", "")
        if bucket != self.bucket:
            raise TaskFailed(
                "ResourceNotFound",
                f"The specified resource Bucket {bucket!r} is not found: the emulator reads "
                f"only oss://{self.bucket}/ (the project's storage).",
            )
        storage = self._storage if self._storage is not None else default_storage
        try:
            fp = storage.open(key, "rb")
        except Exception as exc:  # missing file, a key outside the storage, a storage error
            logger.info("task %s: cannot open %s: %s", task.task_id, key, exc)
            raise TaskFailed(
                "ResourceNotFound",
                f"The specified resource Object {task.source_uri!r} is not found.",
            ) from None
        with fp:
            image = cast(BinaryIO, fp)  # a storage File proxies read, seek and tell
            try:
                inspection = intake.inspect(image)
            except intake.Refused as refusal:
                raise TaskFailed("InvalidArgument", f"The image {refusal.reason}.") from None
            verdict = detector.moderate(
                image,
                key=key,
                sha256=inspection.sha256,
                frame_count=inspection.frame_count,
                scenes=task.scenes,
                interval=task.interval,
                max_frames=task.max_frames,
                rules=self.rules,
            )
        if verdict.rule is not None:
            logger.info("task %s: decided by rule %d", task.task_id, verdict.rule)
        return verdict

    def describe(self) -> str:
        """One line for the operator: where it listens and where notifications go."""
        target = (
            f"notifications to {safe_url(self.notifier.url)} after {self.delay:g} s"
            if self.notifier is not None
            else "no notifications (no notify URL)"
        )
        if self.latency:
            target += f"; every answer {self.latency * 1000:g} ms late"
        if self.manual_review is not None:
            target += f"; manual review of review verdicts after {self.manual_review:g} s"
        return (
            f"IMM emulator on {self.url} (project {self.project}, bucket {self.bucket}, "
            f"{len(self.rules)} rule(s)); {target}"
        )
