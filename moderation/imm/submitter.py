"""The submitter: submit_image tasks run many at a time (manage.py imm_submitter).

django-tasks-db's db_worker runs one task at a time, so with IMM answering in 100 ms one worker
sent 8 images a second. The submitter runs the submission queue as a pipeline of the three steps
of pipeline.submit_many, each at its own pace:

- the claimer (one thread) claims ready submit_image tasks in batches (`SELECT ... FOR UPDATE
  SKIP LOCKED`, as db_worker claims one), leases their images' attempts (claim_attempts), takes
  their turns in the budget every process shares (moderation.imm.ratelimit), and hands them to
  the pool whenever it has room;
- the pool (IMM_SUBMIT_CONCURRENCY threads, sharing the process's IMM client) sends them, each
  thread holding no database connection between sends;
- the recorders (RECORDERS threads) record what came back as it comes, in batches
  (record_attempts), and mark each task's row with its outcome.

So the requests in flight stay at IMM_SUBMIT_CONCURRENCY while the database work is paid once a
batch. Nothing here decides anything about an image: claim_attempts and record_attempts apply
submit()'s rules image by image (the locks and lease that keep one IMM task per image whoever
runs it, the ListTasks lookup before any resend after an ambiguous failure). A submitter killed
mid-batch leaves those task rows running, as db_worker does; their images stay received and the
poller queues them again (resend_stuck). Any other task found in the queue is run alone, as
db_worker would run it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.db import close_old_connections, connections
from django.db.utils import OperationalError
from django.utils import timezone
from django_tasks_db.compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    TaskResultStatus,
    task_finished,
    task_started,
)
from django_tasks_db.models import DBTaskResult
from django_tasks_db.utils import exclusive_transaction, is_locked_database_exception

from . import pipeline
from .client import ImmClient
from .ratelimit import SharedRateLimit

logger = logging.getLogger(__name__)

# The claimer waits for this many free places in the pool (or all, in a smaller pool) before
# claiming, and claims at most CLAIM_MAX tasks at once; the recorder records at most RECORD_MAX
# answers in one transaction. Larger batches spread each batch's fixed database work thinner.
CLAIM_MIN = 8
CLAIM_MAX = 32
RECORD_MAX = 64
# Recorders, each with its own database connection: one spends most of its time waiting for the
# database, and the answers of a busy pool are enough for several.
RECORDERS = 2
# Answers waiting to be recorded hold back claiming beyond this many times the pool's size, so a
# slow database makes the submitter claim less instead of piling up answers in memory.
BACKLOG = 2


@dataclass
class Report:
    """What one run did: tasks claimed, how each ended (submit_image's outcome, or failed),
    and errors that stopped a batch."""

    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    def __str__(self) -> str:
        done = ", ".join(f"{what} {n}" for what, n in sorted(self.outcomes.items()))
        text = f"{self.claimed} task(s) run" + (f": {done}" if done else "")
        return text + (f"; {self.errors} error(s), see the log" if self.errors else "")


@dataclass
class _Sent:
    """An attempt on its way through the pool, and the task rows that asked for it."""

    attempt: pipeline.Attempt
    rows: list[DBTaskResult]


class Submitter:
    """Runs the submission queue with `concurrency` requests in flight until `stop()` (or, with
    `run(batch=True)`, until no task is ready)."""

    def __init__(
        self,
        *,
        concurrency: int,
        worker_id: str,
        client: ImmClient | None = None,
        backend_name: str = DEFAULT_TASK_BACKEND_ALIAS,
        interval: float = 0.5,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self.worker_id = worker_id
        self.client = client
        self.backend_name = backend_name
        self.interval = interval
        self.report = Report()
        self._stopping = threading.Event()
        self._claiming = threading.Event()  # set while the claimer may still hand out work
        self._room = threading.Condition()
        self._in_flight = 0  # claimed and not yet answered: at most `concurrency`
        self._unrecorded = 0  # claimed and not yet recorded: at most BACKLOG x `concurrency`
        self._sent: queue.SimpleQueue[_Sent] = queue.SimpleQueue()
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Claim nothing more; the run returns once the tasks in hand are recorded."""
        self._stopping.set()
        with self._room:
            self._room.notify_all()

    def run(self, *, batch: bool = False) -> Report:
        client = self.client or pipeline.make_client()
        logger.info(
            "IMM submitter %s: %d request(s) in flight, queue %s",
            self.worker_id,
            self.concurrency,
            pipeline.SUBMIT_QUEUE,
        )
        self._claiming.set()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="imm-send") as pool:
            threads = [
                threading.Thread(
                    target=self._claimer, args=(client, pool, batch), name="imm-claim", daemon=True
                ),
                *(
                    threading.Thread(target=self._recorder, name=f"imm-record-{n}", daemon=True)
                    for n in range(RECORDERS)
                ),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():  # a timeout, so that signal handlers run meanwhile
                    thread.join(0.5)
        return self.report

    def claim(self, limit: int) -> list[DBTaskResult]:
        """Mark up to `limit` ready submission tasks as running by this worker, oldest first."""
        ready = DBTaskResult.objects.ready().filter(
            backend_name=self.backend_name, queue_name=pipeline.SUBMIT_QUEUE
        )
        try:
            with exclusive_transaction(ready.db):
                rows = list(ready.select_for_update(skip_locked=True)[:limit])
                now = timezone.now()
                for row in rows:
                    row.status = TaskResultStatus.RUNNING
                    row.started_at = now
                    row.worker_ids = [*row.worker_ids, self.worker_id]
                # Rows that share their values are claimed in one UPDATE (a task is claimed
                # once, so its list of workers is this one).
                for worker_ids, same in _grouped(rows, lambda row: row.worker_ids):
                    DBTaskResult.objects.filter(pk__in=[row.pk for row in same]).update(
                        status=TaskResultStatus.RUNNING, started_at=now, worker_ids=worker_ids
                    )
        except OperationalError as error:
            if is_locked_database_exception(error):  # SQLite busy: ask again next round
                return []
            raise
        with self._lock:
            self.report.claimed += len(rows)
        return rows

    # The claimer

    def _claimer(self, client: ImmClient, pool: ThreadPoolExecutor, batch: bool) -> None:
        budget = SharedRateLimit.from_settings()
        try:
            while not self._stopping.is_set():
                room = self._wait_for_room()
                if room == 0:
                    continue
                close_old_connections()
                rows: list[DBTaskResult] = []
                try:
                    rows = self.claim(room)
                    if rows:
                        self._start(rows, client, pool, budget)
                except Exception as error:
                    logger.exception("IMM submitter: claiming a batch failed")
                    with self._lock:
                        self.report.errors += 1
                    self._fail(
                        [row for row in rows if row.status == TaskResultStatus.RUNNING], error
                    )
                    if batch:
                        return
                if not rows:
                    if batch:
                        return
                    self._stopping.wait(self.interval)
        finally:
            self._claiming.clear()
            with self._room:
                self._room.notify_all()
            connections.close_all()

    def _wait_for_room(self) -> int:
        """Places free in the pool, once there are enough to make a batch worth claiming (and
        the answers waiting to be recorded are not too many)."""
        wanted = min(CLAIM_MIN, self.concurrency)
        with self._room:
            while not self._stopping.is_set() and (
                self.concurrency - self._in_flight < wanted
                or self._unrecorded >= BACKLOG * self.concurrency
            ):
                self._room.wait(self.interval)
            return min(self.concurrency - self._in_flight, CLAIM_MAX)

    def _start(
        self,
        rows: list[DBTaskResult],
        client: ImmClient,
        pool: ThreadPoolExecutor,
        budget: SharedRateLimit,
    ) -> None:
        by_image: dict[int, list[DBTaskResult]] = {}
        for row in rows:
            image_id = _image_id(row)
            if image_id is None:
                self._run_alone(row)
            else:
                by_image.setdefault(image_id, []).append(row)
        if not by_image:
            return
        attempts, outcomes = pipeline.claim_attempts(list(by_image))
        self._finish({image_id: by_image[image_id] for image_id in outcomes}, outcomes)
        waiting = list(attempts)
        try:
            # One turn an attempt, as many as each second allows in one statement, sent at
            # once: a turn taken in one second and used in the next would exceed that one.
            for granted in budget.turns(len(waiting)):
                now, waiting = waiting[:granted], waiting[granted:]
                with self._room:
                    self._in_flight += len(now)
                    self._unrecorded += len(now)
                for attempt in now:
                    pool.submit(
                        self._send, _Sent(attempt, by_image[attempt.image.pk]), client, budget
                    )
        except Exception as error:
            # Never sent: each keeps its lease and stays ambiguous, so the next attempt looks
            # it up first; the poller queues the image again once the lease has passed.
            logger.exception("IMM submitter: waiting for turns failed")
            with self._lock:
                self.report.errors += 1
            self._fail([row for a in waiting for row in by_image[a.image.pk]], error)

    def _send(self, sent: _Sent, client: ImmClient, budget: SharedRateLimit) -> None:
        try:
            pipeline.send_attempt(sent.attempt, client, budget.prepaid(), on_pool=True)
        finally:
            self._sent.put(sent)
            with self._room:
                self._in_flight -= 1
                self._room.notify_all()

    # The recorder

    def _recorder(self) -> None:
        try:
            while True:
                try:
                    first = self._sent.get(timeout=self.interval)
                except queue.Empty:
                    with self._room:
                        if not self._claiming.is_set() and self._unrecorded == 0:
                            return
                    continue
                sent = [first]
                while len(sent) < RECORD_MAX:
                    try:
                        sent.append(self._sent.get_nowait())
                    except queue.Empty:
                        break
                close_old_connections()
                self._record(sent)
                with self._room:
                    self._unrecorded -= len(sent)
                    self._room.notify_all()
        finally:
            connections.close_all()

    def _record(self, sent: list[_Sent]) -> None:
        try:
            outcomes = pipeline.record_attempts([s.attempt for s in sent])
            self._finish({s.attempt.image.pk: s.rows for s in sent}, outcomes)
        except Exception as error:
            logger.exception("IMM submitter: recording a batch failed")
            with self._lock:
                self.report.errors += 1
            self._fail(
                [row for s in sent for row in s.rows if row.status == TaskResultStatus.RUNNING],
                error,
            )

    # Task rows

    def _finish(
        self, rows: dict[int, list[DBTaskResult]], outcomes: dict[int, pipeline.SubmitOutcome]
    ) -> None:
        """Mark each image's task rows with its outcome (a second row for the same image, queued
        twice, was skipped: the first made the attempt)."""
        now = timezone.now()
        done: list[DBTaskResult] = []
        for image_id, image_rows in rows.items():
            outcome = outcomes[image_id]
            for n, row in enumerate(image_rows):
                if n:
                    outcome = pipeline.SubmitOutcome("skipped", "another attempt holds this image")
                if outcome.error is not None:
                    self._fail([row], outcome.error)
                    continue
                row.status = TaskResultStatus.SUCCESSFUL
                row.finished_at = now
                row.return_value = outcome.what
                row.exception_class_path = row.traceback = ""
                done.append(row)
        for what, same in _grouped(done, lambda row: row.return_value):
            DBTaskResult.objects.filter(pk__in=[row.pk for row in same]).update(
                status=TaskResultStatus.SUCCESSFUL,
                finished_at=now,
                return_value=what,
                exception_class_path="",
                traceback="",
            )
        with self._lock:
            for row in done:
                self.report.outcomes[str(row.return_value)] += 1

    def _run_alone(self, row: DBTaskResult) -> None:
        """A task other than submit_image(image_id): run as db_worker runs a task."""
        try:
            task = row.task
            backend = type(task.get_backend())
            result = row.task_result
            task_started.send(sender=backend, task_result=result)
            value = task.call(*result.args, **result.kwargs)
        except Exception as error:
            self._fail([row], error)
            return
        row.set_successful(value)
        task_finished.send(sender=backend, task_result=row.task_result)
        with self._lock:
            self.report.outcomes[str(value)] += 1

    def _fail(self, rows: list[DBTaskResult], error: Exception) -> None:
        for row in rows:
            row.set_failed(error)
            try:
                backend = type(row.task.get_backend())
            except (ImportError, SuspiciousOperation):
                logger.error("submission task %s failed: %r", row.id, error)
            else:  # django-tasks logs a failed task with its traceback
                task_finished.send(sender=backend, task_result=row.task_result)
            with self._lock:
                self.report.outcomes["failed"] += 1


def _grouped(
    rows: list[DBTaskResult], key: Callable[[DBTaskResult], Any]
) -> list[tuple[Any, list[DBTaskResult]]]:
    """Rows grouped by a value, so each group is written in one UPDATE (not bulk_update's CASE
    per row and field, which costs more CPU than the rest of a batch)."""
    groups: dict[str, tuple[Any, list[DBTaskResult]]] = {}
    for row in rows:
        value = key(row)
        groups.setdefault(json.dumps(value, sort_keys=True), (value, []))[1].append(row)
    return list(groups.values())


def _image_id(row: DBTaskResult) -> int | None:
    """The image of a submit_image(image_id) task row; None for anything else."""
    if row.task_path != pipeline.submit_image.module_path:
        return None
    args_kwargs = row.args_kwargs if isinstance(row.args_kwargs, dict) else {}
    args, kwargs = args_kwargs.get("args"), args_kwargs.get("kwargs")
    if args == [] and isinstance(kwargs, dict) and list(kwargs) == ["image_id"]:
        args, kwargs = [kwargs["image_id"]], {}
    if not (isinstance(args, list) and len(args) == 1 and kwargs == {}):
        return None
    image_id = args[0]
    return image_id if isinstance(image_id, int) and not isinstance(image_id, bool) else None
