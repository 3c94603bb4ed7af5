"""The notification inbox: the endpoint stores each delivery, the applier routes it later.

`POST /imm/notifications/` authenticates and parses a delivery, then `store` writes it in one
INSERT and the sender gets its 2xx: no image row lock, no audit entry, nothing enqueued inside
the request. The applier (`manage.py imm_poller` runs it in a loop of its own; `--inbox-only`
runs only that) takes waiting messages oldest first and applies each through
pipeline.record_result, whose rules decide everything (idempotent by TaskId and content,
reorder-safe, a person's decision wins), enqueuing fetch_result when the message carries no
verdict.

Messages are applied a group (GROUP) to a transaction, which also sets their applied_at: a crash
before the commit leaves them waiting, untouched, for the next applier, and a committed one is
never applied again. Several appliers may run: each claims its group with SELECT ... FOR UPDATE
SKIP LOCKED (on SQLite, where that clause does not exist, every transaction takes the write lock
when it begins, so appliers take turns). A group holds the images it touched until its commit, a
few milliseconds per message; in exchange the commit (a WAL flush), the claim and the applied mark
are paid once per group instead of once per message. The audit log takes no lock any more, so a
group holds nothing else.

A message that raises is kept with its error and tried again with capped exponential backoff;
the others pass it meanwhile. Applied messages are kept APPLIED_KEPT_FOR (for the
arrival-to-routed figures and for looking back at a delivery), then deleted in bounded batches.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import close_old_connections, transaction
from django.db.models import Count, Min, Q
from django.utils import timezone

from moderation.models import NotificationInboxMessage

from . import pipeline

logger = logging.getLogger(__name__)

BATCH = 100  # messages one pass applies at most before it looks at the clock again
GROUP = 16  # messages applied in one transaction
IDLE_WAIT = 0.1  # seconds the loop sleeps when nothing is waiting
ERROR_WAIT = 1.0  # seconds the loop sleeps after the database failed it
RETRY_BASE = timedelta(seconds=1)
RETRY_CAP = timedelta(minutes=5)
APPLIED_KEPT_FOR = timedelta(days=7)
PRUNE_BATCH = 5000  # applied messages deleted by one statement at most
PRUNE_EVERY = 10.0  # seconds between prunes, unless the last one was a full batch
ERROR_MAX_CHARS = 2000


def store(*, message: pipeline.TaskMessage, source: str) -> NotificationInboxMessage:
    """Keep a parsed, authenticated delivery for the applier: one INSERT, nothing else."""
    return NotificationInboxMessage.objects.create(
        source=source, task_id=message.task_id, message=dict(message.raw)
    )


def retry_delay(attempts: int) -> timedelta:
    """How long a message that failed `attempts` times waits: 1 s, 2 s, 4 s ... at most 5 min."""
    # The exponent is bounded so a message failing for days cannot overflow the timedelta.
    return min(RETRY_CAP, RETRY_BASE * 2 ** min(max(0, attempts - 1), 20))


@dataclass
class ApplyReport:
    applied: int = 0
    failed: int = 0

    @property
    def handled(self) -> int:
        return self.applied + self.failed


def apply_waiting(*, limit: int = BATCH) -> ApplyReport:
    """Apply up to `limit` waiting messages, oldest first, GROUP to a transaction.

    Stops early when no message is due (none waiting, or every one waiting for a retry, or held
    by another applier).
    """
    report = ApplyReport()
    # A plain read first: an idle applier opens no transaction (on SQLite each one would take
    # the database's write lock, ten times a second).
    if not NotificationInboxMessage.objects.due(timezone.now()).exists():
        return report
    while report.handled < limit:
        group = apply_group(size=min(GROUP, limit - report.handled))
        if group is None:
            break
        report.applied += group.applied
        report.failed += group.failed
    return report


def apply_group(*, size: int = GROUP) -> ApplyReport | None:
    """Claim up to `size` of the oldest due messages and apply them in one transaction, which
    also marks them applied; None when there is nothing to claim.

    Each message is applied inside a savepoint of its own: one that raises is rolled back alone
    and kept with its error for a later attempt (counted in `failed`), the others commit.
    """
    with transaction.atomic():
        now = timezone.now()
        rows = list(
            NotificationInboxMessage.objects.select_for_update(skip_locked=True)
            .due(now)
            .order_by("id")[:size]
        )
        if not rows:
            return None
        # Every applier takes the image locks of its group in the same order (by TaskId: one
        # task, one image), so two groups about the same images wait for each other rather
        # than deadlock. Messages of one task keep their arrival order.
        rows.sort(key=lambda row: (row.task_id, row.pk))
        report = ApplyReport()
        applied: list[NotificationInboxMessage] = []
        for row in rows:
            try:
                with transaction.atomic():
                    row.outcome = _apply(row)
            except Exception as exc:
                _failed(row, exc, now=now)
                report.failed += 1
            else:
                row.applied_at = timezone.now()
                applied.append(row)
        if applied:
            NotificationInboxMessage.objects.bulk_update(applied, ["applied_at", "outcome"])
        report.applied = len(applied)
    return report


def _failed(row: NotificationInboxMessage, exc: Exception, *, now: datetime) -> None:
    row.attempts += 1
    row.last_error = f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]
    row.next_attempt_at = now + retry_delay(row.attempts)
    row.save(update_fields=["attempts", "last_error", "next_attempt_at"])
    logger.exception(
        "applying the IMM notification %s (task %s) failed, attempt %d; next at %s",
        row.pk,
        row.task_id,
        row.attempts,
        row.next_attempt_at.isoformat(),
    )


def _apply(row: NotificationInboxMessage) -> str:
    """Record one message (inside the caller's transaction); what record_result made of it."""
    # Parsed as strictly as the endpoint did; stored only if it parsed, so it parses again.
    message = pipeline.TaskMessage.parse(row.message)
    outcome = pipeline.record_result(message=message, source=row.source)
    if outcome.what == "needs_verdict":
        # Inside this transaction: with the database task backend the fetch is queued exactly
        # when the message is marked applied.
        pipeline.fetch_result.enqueue(message.task_id)
    logger.debug("IMM notification %s for %s: %s", row.pk, row.task_id, outcome.what)
    return outcome.what


def prune_applied(*, now: datetime | None = None) -> int:
    """Delete one batch of messages applied more than APPLIED_KEPT_FOR ago; returns how many."""
    cutoff = (now or timezone.now()) - APPLIED_KEPT_FOR
    # An applied message is never written again, so nothing needs locking here.
    doomed = list(
        NotificationInboxMessage.objects.filter(applied_at__lt=cutoff)
        .order_by("applied_at")
        .values_list("pk", flat=True)[:PRUNE_BATCH]
    )
    if not doomed:
        return 0
    deleted, _ = NotificationInboxMessage.objects.filter(pk__in=doomed).delete()
    return deleted


@dataclass(frozen=True)
class Backlog:
    waiting: int  # messages not applied yet, those waiting for a retry included
    failing: int  # of those, how many failed at least once
    oldest_seconds: float  # age of the oldest waiting message (0 when none waits)


def backlog(*, now: datetime | None = None) -> Backlog:
    """What the inbox holds unapplied now, for /healthz and the benchmark (one query)."""
    found = NotificationInboxMessage.objects.waiting().aggregate(
        waiting=Count("id"),
        failing=Count("id", filter=Q(attempts__gt=0)),
        oldest=Min("received_at"),
    )
    oldest = found["oldest"]
    age = max(0.0, ((now or timezone.now()) - oldest).total_seconds()) if oldest else 0.0
    return Backlog(waiting=found["waiting"], failing=found["failing"], oldest_seconds=age)


def arrival_to_routed(*, since: datetime) -> list[float]:
    """Seconds from arrival to application of each message recorded (not a duplicate, not
    waiting for its verdict) that arrived since `since`, shortest first: for p50/p95."""
    rows = NotificationInboxMessage.objects.filter(
        received_at__gte=since, applied_at__isnull=False, outcome="recorded"
    ).values_list("received_at", "applied_at")
    return sorted((applied - received).total_seconds() for received, applied in rows if applied)


def run(*, stop: threading.Event, idle: float = IDLE_WAIT) -> None:
    """The applier's loop until `stop` is set: apply whatever waits, else sleep `idle` seconds;
    prune applied messages every PRUNE_EVERY seconds. A database failure is logged and the loop
    goes on after ERROR_WAIT: the messages stay in the inbox meanwhile."""
    next_prune = 0.0
    while not stop.is_set():
        try:
            close_old_connections()
            report = apply_waiting()
            if report.failed:
                logger.warning("%d IMM notification(s) failed to apply", report.failed)
            if time.monotonic() >= next_prune:
                full = prune_applied() == PRUNE_BATCH
                next_prune = time.monotonic() + (0.0 if full else PRUNE_EVERY)
        except Exception:
            logger.exception("the inbox applier failed; trying again in %s s", ERROR_WAIT)
            stop.wait(ERROR_WAIT)
            continue
        if report.handled < BATCH:
            stop.wait(idle)
