"""The delivery worker (manage.py deliver_webhooks).

One thread claims due deliveries in batches (`SELECT ... FOR UPDATE SKIP LOCKED`, then one UPDATE
that takes a lease on them), hands them to a bounded pool of sending threads that share one
pooled HTTP client and hold no database connection, and records what came back in batches: the
attempts in one INSERT, the delivered ones in one UPDATE, each failure's next time, and each
endpoint's health.

At-least-once: a claim counts as an attempt and sets the delivery's next attempt to the lease's
end, so a worker killed mid-send leaves its deliveries due again once the lease lapses, and
another worker sends them again (receivers deduplicate on `webhook-id`). Every update of a
leased delivery is conditional on still holding that lease, so a worker that comes back late
changes nothing another worker has taken since.

Not hammering a failing endpoint: after a failed attempt the endpoint rests (schedule.py:
2 s, 4 s, 8 s... at most 5 minutes) and none of its deliveries is claimed meanwhile; its
deliveries keep their own retry schedule. An endpoint whose every attempt has failed for
DISABLE_AFTER (and at least DISABLE_AFTER_FAILURES times in a row), or that answered 410 Gone,
is disabled, with an audit entry and a banner for the admins.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import close_old_connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from moderation.audit import log as audit

from . import schedule, signing
from .context_processors import forget_banner
from .models import Attempt, Delivery, Endpoint
from .transport import ERROR, Result, Sender

logger = logging.getLogger(__name__)

# A claim's lease: longer than the requests claimed with it can take (in flight and queued in
# the pool, each at most transport.TOTAL_TIMEOUT), so no live worker loses one.
LEASE = timedelta(seconds=90)
# The pool holds at most this many claimed deliveries per sending thread (in flight and queued).
QUEUE_FACTOR = 4
RECORD_MAX = 500
# How long the loop waits for more answers once one is in, so that it records them together.
GATHER_SECONDS = 0.05


def _refresh_connection() -> None:
    """Drop a broken or expired connection between batches (never inside a caller's
    transaction: a test, or a caller that runs a batch in its own)."""
    if not transaction.get_connection().in_atomic_block:
        close_old_connections()


@dataclass(frozen=True)
class Claimed:
    """A leased delivery with what the sending thread needs, read at claim time."""

    delivery_id: int
    endpoint_id: int
    attempt: int
    url: str
    msg_id: str
    body: bytes
    signer: signing.Signer
    leased_until: datetime


@dataclass
class Report:
    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    disabled: int = 0
    errors: int = 0

    def __str__(self) -> str:
        done = ", ".join(f"{what} {n}" for what, n in sorted(self.outcomes.items()))
        text = f"{self.claimed} attempt(s)" + (f": {done}" if done else "")
        if self.disabled:
            text += f"; {self.disabled} endpoint(s) disabled"
        return text + (f"; {self.errors} error(s), see the log" if self.errors else "")


class Deliverer:
    """Delivers due webhooks with `concurrency` requests in flight until `stop()` (or, with
    `run(batch=True)`, until nothing is due)."""

    def __init__(
        self,
        *,
        concurrency: int,
        worker_id: str,
        sender: Sender | None = None,
        clock: Callable[[], datetime] = timezone.now,
        rng: random.Random | None = None,
        interval: float = 0.5,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self.worker_id = worker_id
        self.sender = sender
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self.interval = interval
        self.report = Report()
        self._stopping = threading.Event()
        # Secrets derived once per endpoint and salt (a rotation makes a new salt).
        self._signers: dict[tuple[int, str], signing.Signer] = {}

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Claim nothing more; run() returns once the deliveries in hand are recorded."""
        self._stopping.set()

    # ------------------------------------------------------------------------ the loop

    def run(self, *, batch: bool = False) -> Report:
        sender = self.sender or Sender(connections=self.concurrency)
        capacity = self.concurrency * QUEUE_FACTOR
        in_flight: set[Future[tuple[Claimed, Result]]] = set()
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook-send") as pool:
                while True:
                    claimed: list[Claimed] = []
                    if not self._stopping.is_set() and len(in_flight) <= capacity // 2:
                        _refresh_connection()
                        try:
                            claimed = self.claim(capacity - len(in_flight))
                        except Exception:
                            logger.exception("webhooks: claiming deliveries failed")
                            self.report.errors += 1
                        for item in claimed:
                            in_flight.add(pool.submit(self.send, item, sender))
                    if not in_flight:
                        if batch or self._stopping.is_set():
                            break
                        self._stopping.wait(self.interval)
                        continue
                    done, in_flight = wait(
                        in_flight, timeout=self.interval, return_when=FIRST_COMPLETED
                    )
                    if done and in_flight:
                        # A moment more gathers a batch worth one transaction to record.
                        more, in_flight = wait(in_flight, timeout=GATHER_SECONDS)
                        done |= more
                    results = [future.result() for future in done]
                    while results:
                        _refresh_connection()
                        try:
                            self.record(results[:RECORD_MAX])
                        except Exception:
                            logger.exception("webhooks: recording attempts failed")
                            self.report.errors += 1
                        results = results[RECORD_MAX:]
        finally:
            if self.sender is None:
                sender.close()
        return self.report

    # ------------------------------------------------------------------------ claiming

    def claim(self, limit: int) -> list[Claimed]:
        """Lease up to `limit` due deliveries, oldest due first, and count their attempt."""
        if limit < 1:
            return []
        now = self.clock()
        until = now + LEASE
        with transaction.atomic():
            ids = list(
                Delivery.objects.due(now)
                .select_for_update(skip_locked=True, of=("self",))
                .order_by("next_attempt_at")
                .values_list("pk", flat=True)[:limit]
            )
            if not ids:
                return []
            Delivery.objects.filter(pk__in=ids).update(
                attempts=F("attempts") + 1,
                next_attempt_at=until,
                leased_by=self.worker_id,
                leased_until=until,
            )
            rows = list(
                Delivery.objects.filter(pk__in=ids).values_list(
                    "pk",
                    "attempts",
                    "endpoint_id",
                    "endpoint__url",
                    "endpoint__secret_salt",
                    "event__public_id",
                    "event__data",
                )
            )
        claimed = []
        for pk, attempts, endpoint_id, url, salt, public_id, data in rows:
            signer = self._signers.get((endpoint_id, salt))
            if signer is None:
                signer = signing.Signer.for_endpoint(Endpoint(pk=endpoint_id, secret_salt=salt))
                self._signers[(endpoint_id, salt)] = signer
            claimed.append(
                Claimed(
                    delivery_id=pk,
                    endpoint_id=endpoint_id,
                    attempt=attempts,
                    url=url,
                    msg_id=public_id,
                    body=signing.body(data),
                    signer=signer,
                    leased_until=until,
                )
            )
        self.report.claimed += len(claimed)
        return claimed

    # ------------------------------------------------------------------------ sending

    def send(self, item: Claimed, sender: Sender) -> tuple[Claimed, Result]:
        """One request (on a pool thread: no database here). Never raises: the loop reads every
        answer with future.result(), and one delivery's surprise must not stop the worker (and
        lose the answers gathered with it) each time its lease lapses and it is claimed again."""
        try:
            headers = item.signer.headers(msg_id=item.msg_id, payload=item.body)
            return item, sender.send(item.url, body=item.body, headers=headers)
        except Exception as exc:
            logger.exception("webhooks: sending delivery %s failed unexpectedly", item.delivery_id)
            return item, Result(
                status_code=None,
                error=ERROR,
                latency_ms=0,
                head=f"the request could not be made: {type(exc).__name__}",
            )

    # ------------------------------------------------------------------------ recording

    def record(self, results: list[tuple[Claimed, Result]]) -> None:
        """Write the attempts, settle each delivery still leased to this worker, and update
        each endpoint's health, in one transaction."""
        now = self.clock()
        attempts = [
            Attempt(
                delivery_id=item.delivery_id,
                endpoint_id=item.endpoint_id,
                number=item.attempt,
                attempted_at=now - timedelta(milliseconds=result.latency_ms),
                status_code=result.status_code,
                error=result.error,
                latency_ms=result.latency_ms,
                response_head=result.head.replace("\x00", "\ufffd"),
                worker=self.worker_id,
            )
            for item, result in results
        ]
        delivered: dict[datetime, list[int]] = defaultdict(list)
        by_endpoint: dict[int, list[Result]] = defaultdict(list)
        for item, result in results:
            by_endpoint[item.endpoint_id].append(result)
            if result.ok:
                delivered[item.leased_until].append(item.delivery_id)
        with transaction.atomic():
            Attempt.objects.bulk_create(attempts)
            for until, ids in delivered.items():
                Delivery.objects.filter(
                    pk__in=ids, leased_by=self.worker_id, leased_until=until
                ).update(
                    state=Delivery.State.DELIVERED,
                    delivered_at=now,
                    last_status="2xx",
                    leased_by="",
                    leased_until=None,
                )
            for item, result in results:
                self.report.outcomes["delivered" if result.ok else "failed attempt"] += 1
                if not result.ok:
                    self._schedule_retry(item, result, now)
            for endpoint_id in sorted(by_endpoint):
                self._update_health(endpoint_id, by_endpoint[endpoint_id], now)

    def _schedule_retry(self, item: Claimed, result: Result, now: datetime) -> None:
        delay = schedule.retry_delay(item.attempt, self.rng)
        leased = Delivery.objects.filter(
            pk=item.delivery_id, leased_by=self.worker_id, leased_until=item.leased_until
        )
        outcome = str(result.status_code) if result.status_code is not None else result.error
        if delay is None:
            if leased.update(
                state=Delivery.State.FAILED, last_status=outcome, leased_by="", leased_until=None
            ):
                self.report.outcomes["given up"] += 1
        else:
            leased.update(
                next_attempt_at=now + delay, last_status=outcome, leased_by="", leased_until=None
            )

    def _update_health(self, endpoint_id: int, results: list[Result], now: datetime) -> None:
        if any(result.ok for result in results):
            # Healthy again, or still: conditional UPDATEs that touch (and lock) the row only
            # when something changes; last_success_at at most once a minute.
            Endpoint.objects.filter(pk=endpoint_id).exclude(
                consecutive_failures=0, failing_since=None, paused_until=None
            ).update(consecutive_failures=0, failing_since=None, paused_until=None)
            Endpoint.objects.filter(pk=endpoint_id).filter(
                Q(last_success_at=None) | Q(last_success_at__lt=now - timedelta(minutes=1))
            ).update(last_success_at=now)
            return
        endpoint = Endpoint.objects.select_for_update().filter(pk=endpoint_id).first()
        if endpoint is None:
            return
        endpoint.consecutive_failures += len(results)
        endpoint.failing_since = endpoint.failing_since or now
        endpoint.paused_until = now + schedule.endpoint_pause(endpoint.consecutive_failures)
        fields = ["consecutive_failures", "failing_since", "paused_until"]
        reason = ""
        if any(result.status_code == 410 for result in results):
            reason = "It answered 410 Gone: the receiver says it no longer exists."
        elif (
            now - endpoint.failing_since >= schedule.DISABLE_AFTER
            and endpoint.consecutive_failures >= schedule.DISABLE_AFTER_FAILURES
        ):
            reason = (
                f"Every attempt failed since {endpoint.failing_since:%Y-%m-%d %H:%M} UTC "
                f"({endpoint.consecutive_failures} in a row)."
            )
        if reason and endpoint.enabled:
            endpoint.enabled = False
            endpoint.disabled_automatically = True
            endpoint.disabled_reason = reason
            endpoint.disabled_at = now
            fields += ["enabled", "disabled_automatically", "disabled_reason", "disabled_at"]
            audit.record(
                action="webhook.endpoint_auto_disabled",
                actor=None,
                reason=reason,
                detail={"endpoint": endpoint.pk, "url": endpoint.url},
            )
            self.report.disabled += 1
            forget_banner()
            logger.warning("webhooks: endpoint %s disabled: %s", endpoint.pk, reason)
        endpoint.save(update_fields=fields)
