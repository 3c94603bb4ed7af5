"""The IMM pipeline: submit images, record every result, route each image by its verdict.

Nothing here is called inside a web request except the admin actions (notifications are
stored in the inbox, moderation.imm.inbox, whose applier calls `record_result`); the network
calls run in background tasks (submit_image and fetch_result, at the end of this module) and the
poller.

Submission. CreateImageModerationTask has no idempotency token, so every attempt carries our own
`submission_key` in Tags and UserData. A create that may have reached IMM without an answer back
(a timeout, a dropped connection) marks the task ambiguous; before sending again we ask ListTasks
for that tag and adopt the task if IMM made it, so one image never has two live tasks. Throttling,
5xx and transport failures are retried with capped exponential backoff (at most
SUBMIT_BACKOFF_CAP), so images waiting through an outage go out within a minute of IMM's return.
An access or configuration error pauses all submissions with one message for the admins
instead of a retry storm; an admin resumes them once it is fixed. Every request to IMM on this
path draws on one budget shared by all processes (IMM_MAX_QPS, moderation.imm.ratelimit), and a
throttled answer holds every submitter back. submit_image tasks have a queue of their own, which
manage.py imm_submitter runs many at a time (moderation.imm.submitter).

Results arrive three ways (notification, polling, a fetch when a notification carries no verdict)
and all go through `record_result`, which keys on TaskId, stores each distinct message once, keeps
later messages in the history, and keeps a result for a TaskId it does not know yet until a task
claims it, or for two weeks (the poller prunes it). Whether IMM's word may move an image at all
is one table, IMM_MAY_MOVE: never once a person has decided or escalated it.

Locks. Every path that changes a task and its image locks the image row first, then the task
row (_lock_image_and_task), so submission, result recording, polling and expiry never deadlock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_tasks import task as background_task

from moderation import signals
from moderation.audit import log as audit
from moderation.events import outbox
from moderation.events.models import Event
from moderation.models import (
    Image,
    ImageCategory,
    ImmStatus,
    ModerationResult,
    ModerationTask,
    RoutingRule,
)

from .client import (
    ImmClient,
    ImmConfig,
    ImmError,
    ModerationVerdict,
    Pacer,
    check_storable_json,
)
from .ratelimit import SharedRateLimit

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

logger = logging.getLogger(__name__)

SUBMIT_QUEUE = "imm_submit"  # submit_image's queue, run by manage.py imm_submitter
SUBMIT_BACKOFF_BASE = 2.0
SUBMIT_BACKOFF_CAP = 30.0
# How long one submit attempt may hold a task before another worker may try it.
SEND_LEASE = timedelta(minutes=2)
POLL_BACKOFF_CAP = timedelta(minutes=30)
RETENTION = timedelta(days=7)
UNMATCHED_KEPT_FOR = 2 * RETENTION
PRUNE_BATCH = 1000  # kept results deleted per poll round at most
# An image still "received" this long after upload, with nothing in flight, is sent again.
STUCK_AFTER = timedelta(minutes=2)

ROUTES = {
    "pass": Image.Status.APPROVED,
    "block": Image.Status.REJECTED,
    "review": Image.Status.AWAITING_REVIEW,
}


@dataclass(frozen=True)
class ImmReach:
    """What IMM's word may do to an image in one state: the table below, one row a state."""

    verdict: bool  # a Succeeded message (pass, review or block) may route the image out of it
    ending: bool  # a Failed message, a refused submission or the task's expiry may end it there
    why: str  # what a refused word is told (the result's outcome and the audit entry say it)
    in_flight_only: bool = False  # only the task being submitted now may move it


# Which states IMM's word may move an image out of: the one table every path consults (results,
# failed submissions, expiry) through imm_may_not_move. Above it stands the person-decided rule:
# an image a person approved or rejected (human_decided_at) is never moved by IMM, whatever its
# state. A refused word is still stored (ModerationResult, with its outcome) and audited.
_KEEPS_ITS_VERDICT = "it has a verdict, which IMM's later failure does not take away"
IMM_MAY_MOVE: dict[str, ImmReach] = {
    # Waiting for its first verdict: the notification can beat the create response. After an
    # admin's retry the old task's late word does not count: the new submission decides.
    Image.Status.RECEIVED: ImmReach(
        True,
        True,
        "an admin asked for a new check; the new submission decides",
        in_flight_only=True,
    ),
    Image.Status.SUBMITTED: ImmReach(True, True, ""),
    # IMM sent it to a person and its own manual review settles it, unless a person already has
    # (escalated, decided). A claim is a lease, not a decision; an undone decision stands no more.
    Image.Status.AWAITING_REVIEW: ImmReach(True, False, _KEEPS_ITS_VERDICT),
    # IMM's own verdict: IMM's newer word on the same task (its manual review) stands.
    Image.Status.APPROVED: ImmReach(True, False, _KEEPS_ITS_VERDICT),
    Image.Status.REJECTED: ImmReach(True, False, _KEEPS_ITS_VERDICT),
    # No verdict yet: one that arrives after all is better than none.
    Image.Status.FAILED: ImmReach(True, False, "it has failed already"),
    Image.Status.EXPIRED: ImmReach(True, True, ""),
    # A person sent it to an admin: only an admin decides it.
    Image.Status.ESCALATED: ImmReach(
        False, False, "a reviewer escalated this image; only an admin decides it"
    ),
}


def imm_may_not_move(image: Image, task: ModerationTask, *, ending: bool) -> str:
    """Why IMM's word through `task` may not move the image ("" when it may): IMM_MAY_MOVE.

    `ending` is a word without a verdict (a Failed message, a refused submission, an expiry).
    """
    if image.human_decided_at is not None:
        return "a person has decided this image; IMM's later word does not override it"
    reach = IMM_MAY_MOVE.get(image.status)
    if reach is None:
        return f"the image is {image.status}, a state IMM does not move"
    allowed = reach.ending if ending else reach.verdict
    if allowed and reach.in_flight_only:
        allowed = task.state in ModerationTask.LIVE_STATES
    return "" if allowed else reach.why


_clients: dict[ImmConfig, ImmClient] = {}
_clients_lock = threading.Lock()


def make_client() -> ImmClient:
    """The process's client for the configured IMM, so a worker reuses its connections.

    One per configuration (tests and reconfigured settings get their own); httpx.Client is safe
    to share between threads. Callers do not close it.
    """
    config = ImmConfig.from_settings()
    with _clients_lock:
        client = _clients.get(config)
        if client is None:
            client = _clients[config] = ImmClient(config)
    return client


def notification_parameter() -> dict[str, Any] | None:
    """IMM_NOTIFICATION as CreateImageModerationTask's Notification object (None: no channel)."""
    value = settings.IMM_NOTIFICATION.strip()
    kind, _, rest = value.partition(":")
    if kind == "mns" and rest:
        return {"MNS": {"TopicName": rest}}
    if kind == "rocketmq" and rest.count(":") == 1:
        instance, topic = rest.split(":")
        return {"RocketMQ": {"InstanceId": instance, "TopicName": topic}}
    return None


def _set_status(image: Image, status: str, *, also_saving: Sequence[str] = ()) -> str:
    before = image.status
    image.status = status
    image.status_changed_at = timezone.now()
    image.save(update_fields=["status", "status_changed_at", *also_saving])
    return before


def _move(
    image: Image,
    status: str,
    *,
    action: str,
    actor: User | AnonymousUser | None = None,
    reason: str = "",
    detail: Mapping[str, Any] | None = None,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
    also_saving: Sequence[str] = (),
) -> None:
    """Change the image's status and audit the transition (inside the caller's transaction);
    `also_saving` names other fields of the image the caller set, saved in the same UPDATE."""
    before = _set_status(image, status, also_saving=also_saving)
    audit.record(
        action=action,
        actor=actor,
        image=image,
        state_before=before,
        state_after=status,
        reason=reason,
        detail=detail,
        context=context,
    )


# --- Submission ------------------------------------------------------------------------------


def enqueue_submission(image_id: int, *, delay: float = 0.0) -> None:
    """Queue a submit task for the image once the current transaction commits."""

    def send() -> None:
        task = submit_image
        if delay > 0:
            task = task.using(run_after=timezone.now() + timedelta(seconds=delay))
        task.enqueue(image_id)

    transaction.on_commit(send)


def submit_backoff(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt: capped exponential, jittered, at least retry_after."""
    # The exponent is bounded so a long outage cannot overflow the float (2.0 * 2**1024).
    delay = min(SUBMIT_BACKOFF_CAP, SUBMIT_BACKOFF_BASE * 2 ** min(max(0, attempts - 1), 32))
    delay = delay / 2 + random.random() * delay / 2  # noqa: S311 - jitter, not security
    if retry_after:
        delay = max(delay, retry_after)
    return min(delay, SUBMIT_BACKOFF_CAP)


def is_configuration_error(error: ImmError) -> bool:
    if error.access_denied:
        return True
    text = f"{error.code} {error.message}"
    return "ProjectName" in text or error.code.startswith(("InvalidProject", "Project"))


@dataclass(frozen=True)
class SubmitOutcome:
    what: str  # submitted, adopted, retrying, failed, paused, skipped, error
    detail: str = ""
    # What == "error": the unexpected exception this image's attempt met (submit() raises it).
    # The attempt keeps its lease and stays ambiguous, as if its worker had died.
    error: Exception | None = field(default=None, compare=False, repr=False)


def submit(*, image_id: int, client: ImmClient) -> SubmitOutcome:
    """Send one image to CreateImageModerationTask, or adopt the task an earlier try created.

    Safe to run twice, and concurrently: the image row is locked while the attempt is claimed,
    and a claimed attempt holds a lease (next_attempt_at) that other runs respect. Each request
    to IMM waits for its turn in the shared budget (IMM_MAX_QPS) and for any throttling pause.
    """
    outcome = submit_many(image_ids=[image_id], client=client)[image_id]
    if outcome.error is not None:
        raise outcome.error
    return outcome


@dataclass
class Attempt:
    """One image's claimed attempt (claim_attempts), and what IMM answered it (send_attempt)."""

    image: Image
    task: ModerationTask
    was_ambiguous: bool
    task_id: str = ""  # IMM's task: made by this create, or found and adopted
    request_id: str = ""
    event_id: str = ""
    adopted: bool = False
    failure: ImmError | None = None
    crash: Exception | None = None


def submit_many(
    *, image_ids: Sequence[int], client: ImmClient, pool: Executor | None = None
) -> dict[int, SubmitOutcome]:
    """submit() for several images at once, image by image under the same rules, in three steps:
    claim_attempts (one transaction for the batch), send_attempt for each (together on `pool`,
    one after another without it), record_attempts (one transaction for every task IMM made or
    we adopted; failures one by one, as submit() settles them). Returns each image's outcome.

    What makes it cheaper than submit() in a loop is the database work: a dozen statements for
    the batch instead of a dozen an image, plus each image's audit entry. manage.py
    imm_submitter runs the same three steps as a pipeline (moderation.imm.submitter).
    """
    attempts, outcomes = claim_attempts(image_ids)
    if not attempts:
        return outcomes
    budget = SharedRateLimit.from_settings()
    waiting, sending = list(attempts), []
    # One turn an attempt, as many as each second allows in one statement, sent at once.
    for granted in budget.turns(len(attempts)):
        now, waiting = waiting[:granted], waiting[granted:]
        for attempt in now:
            if pool is None:
                send_attempt(attempt, client, budget.prepaid())
            else:
                sending.append(
                    pool.submit(send_attempt, attempt, client, budget.prepaid(), on_pool=True)
                )
    for future in sending:
        future.result()
    outcomes.update(record_attempts(attempts))
    return outcomes


def claim_attempts(image_ids: Sequence[int]) -> tuple[list[Attempt], dict[int, SubmitOutcome]]:
    """Lease an attempt for every image still waiting to be sent (one transaction); the others
    get their outcome at once (paused, or skipped: nothing to submit, or another attempt holds
    the image). Each attempt is marked ambiguous until IMM's answer is recorded."""
    ids = list(dict.fromkeys(image_ids))
    if ImmStatus.current().paused:
        return [], {image_id: SubmitOutcome("paused") for image_id in ids}
    outcomes: dict[int, SubmitOutcome] = {}
    now = timezone.now()
    attempts: list[Attempt] = []
    with transaction.atomic():
        # The one lock order (see _lock_image_and_task): the images, then their tasks, each in
        # id order so that two batches never hold one another's rows.
        images = {
            image.pk: image
            for image in Image.objects.select_for_update().filter(pk__in=ids).order_by("pk")
        }
        waiting = [pk for pk, image in images.items() if image.status == Image.Status.RECEIVED]
        sending = (
            {
                task.image_id: task
                for task in ModerationTask.objects.select_for_update()
                .filter(image_id__in=waiting, state=ModerationTask.State.SENDING)
                .order_by("pk")
            }
            if waiting
            else {}
        )
        new: list[ModerationTask] = []
        leased: list[ModerationTask] = []
        for image_id in ids:
            image = images.get(image_id)
            if image is None or image.status != Image.Status.RECEIVED:
                outcomes[image_id] = SubmitOutcome("skipped", "nothing to submit")
                continue
            task = sending.get(image_id)
            if task is None:
                task = ModerationTask(
                    image=image,
                    submission_key=uuid.uuid4().hex,
                    scenes=list(settings.IMM_SCENES),
                    interval=settings.IMM_INTERVAL,
                    max_frames=settings.IMM_MAX_FRAMES,
                )
                new.append(task)
            elif task.next_attempt_at and task.next_attempt_at > now:
                outcomes[image_id] = SubmitOutcome("skipped", "another attempt holds this image")
                continue
            else:
                leased.append(task)
            attempts.append(Attempt(image=image, task=task, was_ambiguous=task.ambiguous))
            task.attempts += 1
            task.next_attempt_at = now + SEND_LEASE
            # Until IMM's answer is saved this attempt may have made a task: if the worker dies
            # (or the save fails) after IMM acted, the next attempt looks it up before sending.
            task.ambiguous = True
        if new:
            ModerationTask.objects.bulk_create(new)
        if leased:
            ModerationTask.objects.filter(pk__in=[task.pk for task in leased]).update(
                attempts=F("attempts") + 1, next_attempt_at=now + SEND_LEASE, ambiguous=True
            )
    return attempts, outcomes


def send_attempt(
    attempt: Attempt, client: ImmClient, pace: Pacer, *, on_pool: bool = False
) -> None:
    """Ask IMM for the attempt's task (after an ambiguous failure), else create it; the answer,
    or the failure, is kept on the attempt for record_attempts. `pace` is the shared budget,
    with this attempt's first turn already taken (SharedRateLimit.prepaid)."""
    task, image = attempt.task, attempt.image
    try:
        if attempt.was_ambiguous:
            found = next(
                client.iter_tasks(tag_selector=f"submission={task.submission_key}", pace=pace),
                None,
            )
            if found is not None:
                attempt.task_id, attempt.adopted = found.task_id, True
                return
        created = client.create_image_moderation_task(
            source_uri=image.source_uri,
            scenes=task.scenes,
            interval=task.interval,
            max_frames=task.max_frames,
            tags={"image": str(image.pk), "submission": task.submission_key},
            user_data=json.dumps(
                {"image_id": image.pk, "submission": task.submission_key}, separators=(",", ":")
            ),
            notification=notification_parameter(),
            pace=pace,
        )
    except ImmError as error:
        attempt.failure = error
    except Exception as exc:
        attempt.crash = exc
    else:
        attempt.task_id = created.task_id
        attempt.request_id, attempt.event_id = created.request_id, created.event_id
    finally:
        if on_pool:
            # A pool thread needs the database only when a request waits for a second turn (a
            # retry, an adoption lookup): it keeps no connection open between sends.
            connections.close_all()


def record_attempts(attempts: Sequence[Attempt]) -> dict[int, SubmitOutcome]:
    """Settle sent attempts: every task IMM made (or we adopted) recorded in one transaction
    (or, if that fails, one by one, so one bad row does not hold the others back); failures one
    by one (_submit_failed). Returns each image's outcome; "error" carries an unexpected
    exception, and leaves that attempt ambiguous under its lease."""
    outcomes = _record_submitted([a for a in attempts if a.task_id and a.crash is None])
    for attempt in attempts:
        image_id = attempt.image.pk
        if attempt.failure is not None:
            try:
                outcomes[image_id] = _submit_failed(
                    attempt.task, attempt.failure, was_ambiguous=attempt.was_ambiguous
                )
            except Exception as exc:
                attempt.crash = exc
        if attempt.crash is not None:
            logger.error("submitting image %s failed unexpectedly: %r", image_id, attempt.crash)
            outcomes[image_id] = SubmitOutcome("error", repr(attempt.crash), attempt.crash)
    return outcomes


def _record_submitted(attempts: list[Attempt]) -> dict[int, SubmitOutcome]:
    """Record the tasks IMM made (or we adopted) for these attempts: in one transaction, or, if
    that fails, one by one, so one bad row does not hold the others back."""
    if not attempts:
        return {}
    try:
        _mark_submitted(attempts)
    except Exception as exc:
        if len(attempts) == 1:
            attempts[0].crash = exc
            return {}
        logger.warning(
            "recording %d submissions together failed (%r); one by one", len(attempts), exc
        )
        for attempt in attempts:
            try:
                _mark_submitted([attempt])
            except Exception as each:
                attempt.crash = each
    return {
        a.image.pk: SubmitOutcome("adopted" if a.adopted else "submitted", a.task_id)
        for a in attempts
        if a.crash is None
    }


def _mark_submitted(attempts: list[Attempt]) -> None:
    now = timezone.now()
    with transaction.atomic():
        images, tasks = _lock_images_and_tasks(attempts)
        earlier = set(
            ModerationTask.objects.filter(image_id__in=images)
            .exclude(pk__in=tasks)
            .values_list("image_id", flat=True)
        )
        running: list[tuple[Attempt, Image, ModerationTask]] = []
        for attempt in attempts:
            image, task = images[attempt.image.pk], tasks[attempt.task.pk]
            if task.state != ModerationTask.State.SENDING:
                # A notification for this submission arrived first and already adopted the
                # task; keep IMM's answer to the create and put the submission on the record.
                if task.task_id == attempt.task_id and not task.request_id:
                    task.request_id, task.event_id = attempt.request_id, attempt.event_id
                    task.ambiguous = False
                    task.save(update_fields=["request_id", "event_id", "ambiguous"])
                    audit.record(
                        action="imm.submitted",
                        actor=None,
                        image=image,
                        state_before=image.status,
                        state_after=image.status,
                        detail=_submission_detail(
                            task, adopted=attempt.adopted, notified_first=True
                        ),
                    )
                continue
            task.task_id = attempt.task_id
            task.request_id = attempt.request_id
            task.event_id = attempt.event_id
            task.state = ModerationTask.State.RUNNING
            task.ambiguous = False
            task.submitted_at = now
            task.next_attempt_at = None
            task.next_poll_at = now + timedelta(seconds=settings.IMM_POLL_AFTER)
            task.last_error_code = task.last_error_message = ""
            running.append((attempt, image, task))
        if not running:
            return
        # What every task shares in one statement, what each was told in one batch of them
        # (Django's bulk_update builds a CASE per row and field: most of a batch's CPU time).
        ModerationTask.objects.filter(pk__in=[task.pk for _, _, task in running]).update(
            state=ModerationTask.State.RUNNING,
            ambiguous=False,
            submitted_at=now,
            next_attempt_at=None,
            next_poll_at=now + timedelta(seconds=settings.IMM_POLL_AFTER),
            last_error_code="",
            last_error_message="",
        )
        with connection.cursor() as cursor:
            cursor.executemany(
                _set_imm_ids_sql(),
                [(t.task_id, t.request_id, t.event_id, t.pk) for _, _, t in running],
            )
        moving = [image for _, image, _ in running if image.status == Image.Status.RECEIVED]
        befores = {image.pk: image.status for _, image, _ in running}
        if moving:
            Image.objects.filter(pk__in=[image.pk for image in moving]).update(
                status=Image.Status.SUBMITTED, status_changed_at=now
            )
            for image in moving:
                image.status, image.status_changed_at = Image.Status.SUBMITTED, now
        for attempt, image, task in running:
            audit.record(
                action="imm.resubmitted" if image.pk in earlier else "imm.submitted",
                actor=None,
                image=image,
                state_before=befores[image.pk],
                state_after=image.status,
                detail=_submission_detail(task, adopted=attempt.adopted, scenes=task.scenes),
            )
        # Results that arrived before the create's answer wait for their task: one look for
        # the batch, then each task claims its own (_claim_unmatched_results locks them).
        kept = set(
            ModerationResult.objects.filter(
                task__isnull=True, imm_task_id__in=[task.task_id for _, _, task in running]
            ).values_list("imm_task_id", flat=True)
        )
        for _, image, task in running:
            if task.task_id in kept:
                _claim_unmatched_results(task, image)
    for attempt, _, task in running:
        logger.info("image %s submitted to IMM as %s", task.image_id, attempt.task_id)


def _set_imm_ids_sql() -> str:
    """UPDATE one task's TaskId, RequestId and EventId (the fields that name IMM's task)."""
    quote = connection.ops.quote_name
    columns = ", ".join(f"{quote(name)} = %s" for name in ("task_id", "request_id", "event_id"))
    table = quote(ModerationTask._meta.db_table)
    return f"UPDATE {table} SET {columns} WHERE {quote('id')} = %s"  # noqa: S608


def _lock_images_and_tasks(
    attempts: list[Attempt],
) -> tuple[dict[int, Image], dict[int, ModerationTask]]:
    """_lock_image_and_task for several tasks: their images, then the tasks, each in id order."""
    images = {
        image.pk: image
        for image in Image.objects.select_for_update()
        .filter(pk__in=[a.image.pk for a in attempts])
        .order_by("pk")
    }
    tasks = {
        task.pk: task
        for task in ModerationTask.objects.select_for_update()
        .filter(pk__in=[a.task.pk for a in attempts])
        .order_by("pk")
    }
    return images, tasks


def _submission_detail(task: ModerationTask, **extra: Any) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "request_id": task.request_id,
        "event_id": task.event_id,
        "submission": task.submission_key,
        "attempts": task.attempts,
        **extra,
    }


def _submit_failed(task: ModerationTask, error: ImmError, *, was_ambiguous: bool) -> SubmitOutcome:
    now = timezone.now()
    with transaction.atomic():
        image, task = _lock_image_and_task(task.pk)
        if task.state != ModerationTask.State.SENDING:
            # A notification for this very submission arrived first and settled the task.
            return SubmitOutcome("skipped", f"settled by a notification despite {error.code}")
        task.ambiguous = was_ambiguous or error.ambiguous
        task.last_error_code = error.code
        task.last_error_message = error.message[:2000]
        if is_configuration_error(error):
            task.next_attempt_at = None
            task.save()
            pause_submissions(error)
            return SubmitOutcome("paused", error.code)
        if error.retryable or error.ambiguous:
            delay = submit_backoff(task.attempts, error.retry_after)
            task.next_attempt_at = now + timedelta(seconds=delay)
            task.save()
            enqueue_submission(task.image_id, delay=delay)
            logger.warning(
                "IMM submission of image %s failed (%s); retrying in %.1f s",
                task.image_id,
                error,
                delay,
            )
            return SubmitOutcome("retrying", error.code)
        kept = imm_may_not_move(image, task, ending=True)
        task.state = ModerationTask.State.FAILED
        task.finished_at = now
        task.next_attempt_at = None
        task.save()
        detail = {"code": error.code, "request_id": error.request_id, "http": error.http_status}
        reason = f"{error.code}: {error.message}"
        if kept:
            audit.record(
                action="imm.submit_failed",
                actor=None,
                image=image,
                state_before=image.status,
                state_after=image.status,
                reason=f"{reason} ({kept})",
                detail=detail,
            )
        else:
            _move(
                image, Image.Status.FAILED, action="imm.submit_failed", reason=reason, detail=detail
            )
    return SubmitOutcome("failed", error.code)


def pause_submissions(error: ImmError) -> None:
    """Stop sending after an access or configuration error; admins see why and resume."""
    with transaction.atomic():
        status = ImmStatus.objects.select_for_update().get_or_create(pk=1)[0]
        if status.paused:
            return
        status.paused = True
        status.reason_code = error.code
        status.reason_message = error.message[:2000]
        status.changed_at = timezone.now()
        status.save()
        audit.record(
            action="imm.paused",
            actor=None,
            reason=f"{error.code}: {error.message}",
            detail={"code": error.code, "request_id": error.request_id, "http": error.http_status},
        )
    logger.error("IMM submissions paused: %s", error)


def resume_submissions(
    *, actor: User | AnonymousUser | None, context: audit.AuditContext = audit.SYSTEM_CONTEXT
) -> int:
    """Lift a pause and queue every image still waiting to be sent; returns how many."""
    with transaction.atomic():
        status = ImmStatus.objects.select_for_update().get_or_create(pk=1)[0]
        was = f"{status.reason_code}: {status.reason_message}" if status.paused else ""
        status.paused = False
        status.changed_at = timezone.now()
        status.save()
        waiting = list(
            Image.objects.filter(status=Image.Status.RECEIVED).values_list("pk", flat=True)
        )
        # An attempt still in flight or a retry already scheduled keeps its time: queue the
        # image for then, so nothing is sent twice and nothing waits for the stuck-sweeper.
        held = dict(
            ModerationTask.objects.filter(
                state=ModerationTask.State.SENDING,
                image_id__in=waiting,
                next_attempt_at__gt=status.changed_at,
            ).values_list("image_id", "next_attempt_at")
        )
        audit.record(
            action="imm.resumed",
            actor=actor,
            reason=was,
            detail={"queued": len(waiting)},
            context=context,
        )
        for image_id in waiting:
            at = held.get(image_id)
            delay = (at - status.changed_at).total_seconds() + 1 if at else 0.0
            enqueue_submission(image_id, delay=delay)
    return len(waiting)


def retry_image(*, image: Image, actor: User | AnonymousUser, context: audit.AuditContext) -> bool:
    """An admin sends a failed or expired image to IMM again. False if it is not retryable."""
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        if image.status not in (Image.Status.FAILED, Image.Status.EXPIRED):
            return False
        _move(
            image,
            Image.Status.RECEIVED,
            action="image.retry_requested",
            actor=actor,
            context=context,
        )
        enqueue_submission(image.pk)
    return True


# --- Results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskMessage:
    """A task message from IMM (a notification's content, or GetImageModerationResult)."""

    task_id: str
    status: str
    code: str
    message: str
    start_time: str
    end_time: str
    user_data: str
    tags: Mapping[str, Any]
    verdict: ModerationVerdict | None
    raw: Mapping[str, Any]

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> TaskMessage:
        """Raise ValueError, with the reason, when it is not a task message we can key on and
        store: no TaskId, values of the wrong type or longer than their column, bad times."""
        task_id = data.get("TaskId")
        if not isinstance(task_id, str) or not task_id:
            raise ValueError("the message has no TaskId")
        task_type = data.get("TaskType", "ImageModeration")
        if task_type != "ImageModeration":
            plain = isinstance(task_type, str) and task_type.isalnum() and len(task_type) <= 64
            shown = task_type if plain else "different"
            raise ValueError(f"the message is for a {shown} task, not ImageModeration")
        check_storable_json(data, "the message")
        text = {key: cls._text(data, key) for key in cls._TEXT_KEYS}
        verdict_source: Any = data.get("ModerationResult")
        if verdict_source is not None and not isinstance(verdict_source, Mapping):
            raise ValueError("the message's ModerationResult is not an object")
        if verdict_source is None and "Suggestion" in data:
            verdict_source = data  # the verdict at the top level
        verdict = None
        if verdict_source and verdict_source.get("Suggestion"):
            verdict = ModerationVerdict.from_dict(verdict_source)
        for name, value, column in (
            ("TaskId", task_id, "imm_task_id"),
            ("Status", text["Status"], "status"),
            ("Code", text["Code"], "code"),
            ("ModerationResult.Suggestion", verdict.suggestion if verdict else "", "suggestion"),
            ("ModerationResult.URI", verdict.uri if verdict else "", "uri"),
        ):
            limit = getattr(ModerationResult._meta.get_field(column), "max_length", 0)
            if len(value) > limit:
                raise ValueError(f"the message's {name} is longer than {limit} characters")
        for key in ("StartTime", "EndTime"):
            try:
                parsed = parse_datetime(text[key]) if text[key] else None
                if parsed is not None and timezone.is_aware(parsed):
                    parsed.astimezone(UTC)  # what saving it does; years 1 and 9999 overflow
            except (ValueError, OverflowError):
                raise ValueError(f"the message's {key} is not a valid time") from None
        tags = data.get("Tags")
        return cls(
            task_id=task_id,
            status=text["Status"],
            code=text["Code"],
            message=text["Message"],
            start_time=text["StartTime"],
            end_time=text["EndTime"],
            user_data=text["UserData"],
            tags=tags if isinstance(tags, Mapping) else {},
            verdict=verdict,
            raw=dict(data),
        )

    _TEXT_KEYS = ("Status", "Code", "Message", "StartTime", "EndTime", "UserData")

    @staticmethod
    def _text(data: Mapping[str, Any], key: str) -> str:
        value = data.get(key)
        if isinstance(value, Mapping | list):
            raise ValueError(f"the message's {key} is not text")
        return str(value or "")

    @property
    def needs_verdict(self) -> bool:
        return self.status == "Succeeded" and self.verdict is None

    @property
    def submission_key(self) -> str:
        key = self.tags.get("submission")
        if isinstance(key, str) and key:
            return key
        try:
            data = json.loads(self.user_data)
        except (TypeError, ValueError, RecursionError):
            return ""
        value = data.get("submission") if isinstance(data, dict) else None
        return value if isinstance(value, str) else ""

    def fingerprint(self) -> str:
        """Same content, same fingerprint, whichever way (notification or poll) it came."""
        content = {
            "TaskId": self.task_id,
            "Status": self.status,
            "Code": self.code,
            "Message": self.message,
            "EndTime": self.end_time,
            "Verdict": self.verdict.as_dict() if self.verdict else None,
        }
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class RecordOutcome:
    what: str  # recorded, duplicate, needs_verdict, unmatched
    result: ModerationResult | None = None


def _parse_time(value: str) -> datetime | None:
    parsed = parse_datetime(value) if value else None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def record_result(*, message: TaskMessage, source: str) -> RecordOutcome:
    """Store one result message and, if it is the newest word on a live image, route the image.

    Idempotent: the same content twice changes nothing. A message without its verdict is not
    stored; the caller fetches the verdict (GetImageModerationResult) and records that instead.
    """
    if message.needs_verdict:
        return RecordOutcome("needs_verdict")
    fingerprint = message.fingerprint()
    try:
        with transaction.atomic():
            if ModerationResult.objects.filter(fingerprint=fingerprint).exists():
                return RecordOutcome("duplicate")
            found = _find_task(message)
            image, task = found if found else (None, None)
            verdict = message.verdict
            result = ModerationResult.objects.create(
                imm_task_id=message.task_id,
                task=task,
                image_id=task.image_id if task else None,
                fingerprint=fingerprint,
                source=source,
                status=message.status,
                suggestion=verdict.suggestion if verdict else "",
                categories=list(verdict.categories) if verdict else [],
                frames_total=verdict.frames_total if verdict else 0,
                block_frames=[
                    {"Label": f.label, "Offset": f.offset, "Rate": f.rate}
                    for f in (verdict.block_frames if verdict else [])
                ],
                uri=verdict.uri if verdict else "",
                code=message.code,
                message=message.message,
                start_time=_parse_time(message.start_time),
                end_time=_parse_time(message.end_time),
                raw=json.loads(json.dumps(message.raw, default=str)),
            )
            if image is None or task is None:
                result.outcome = (
                    "kept: no task with this TaskId yet; it is matched when one appears"
                )
                result.save(update_fields=["outcome"])
                logger.warning("IMM result for unknown task %s kept for later", message.task_id)
                return RecordOutcome("unmatched", result)
            _apply(task, result, image)
    except IntegrityError:
        # A concurrent delivery of the same content won the insert.
        if ModerationResult.objects.filter(fingerprint=fingerprint).exists():
            return RecordOutcome("duplicate")
        raise
    return RecordOutcome("recorded", result)


def _lock_image_and_task(task_pk: int, image_id: int | None = None) -> tuple[Image, ModerationTask]:
    """Lock a task's image, then the task, and read both afresh (inside a transaction).

    The one lock order for every path that changes a task and its image (submission, its
    failure, result recording, claiming kept results, expiry): image first, then task. Two paths
    taking them in opposite orders can each hold one and wait for the other, a deadlock that
    PostgreSQL breaks by failing one of them. The image id is read unlocked first: it never
    changes (a caller that read it already passes it).
    """
    if image_id is None:
        image_id = (
            ModerationTask.objects.filter(pk=task_pk).values_list("image_id", flat=True).get()
        )
    image = Image.objects.select_for_update().get(pk=image_id)
    task = ModerationTask.objects.select_for_update().get(pk=task_pk)
    return image, task


def _speaks_of(message: TaskMessage, task: ModerationTask) -> bool:
    if task.task_id is not None:
        return task.task_id == message.task_id
    return bool(message.submission_key) and task.submission_key == message.submission_key


def _find_task(message: TaskMessage) -> tuple[Image, ModerationTask] | None:
    """The task this message speaks of (by TaskId, else by our submission tag) and its image,
    both locked, image first."""
    query = Q(task_id=message.task_id)
    if message.submission_key:
        query |= Q(submission_key=message.submission_key, task_id__isnull=True)
    for _ in range(3):
        found = ModerationTask.objects.filter(query).values_list("pk", "image_id").first()
        if found is None:
            break
        image, task = _lock_image_and_task(*found)
        # Read unlocked, it may have taken another TaskId meanwhile (an adopted submission).
        if _speaks_of(message, task):
            return image, task
    return None


def _claim_unmatched_results(task: ModerationTask, image: Image) -> None:
    """Apply the kept results for this task's TaskId (image and task locked by the caller)."""
    pending = ModerationResult.objects.select_for_update().filter(
        imm_task_id=task.task_id, task__isnull=True
    )
    for result in pending.order_by("received_at", "id"):
        result.task = task
        result.image_id = task.image_id
        result.save(update_fields=["task", "image"])
        _apply(task, result, image)


def claim_unmatched_results(*, now: datetime | None = None) -> int:
    """Match kept results whose task has appeared since (the poller runs this); returns count."""
    matched = 0
    # Past IMM's retention no task of ours can still appear for a kept result.
    recent = (now or timezone.now()) - RETENTION
    task_ids = set(
        ModerationResult.objects.filter(task__isnull=True, received_at__gte=recent).values_list(
            "imm_task_id", flat=True
        )
    )
    for task_id in task_ids:
        with transaction.atomic():
            found = ModerationTask.objects.filter(task_id=task_id).values_list("pk", flat=True)
            if found:
                image, task = _lock_image_and_task(found[0])
                _claim_unmatched_results(task, image)
                matched += 1
    return matched


def prune_unmatched_results(*, now: datetime | None = None) -> int:
    """Delete kept results that no task can claim any more; returns how many.

    They are kept UNMATCHED_KEPT_FOR (a week past IMM's retention, after which no task of ours can
    still appear for them) and then deleted: results for another application's tasks, sent to
    our endpoint, would otherwise pile up for ever.
    """
    cutoff = (now or timezone.now()) - UNMATCHED_KEPT_FOR
    with transaction.atomic():
        # Locked first, as a claim locks them: a row a task claims meanwhile is not deleted.
        doomed = list(
            ModerationResult.objects.select_for_update(skip_locked=True)
            .filter(task__isnull=True, received_at__lt=cutoff)
            .values_list("pk", flat=True)[:PRUNE_BATCH]
        )
        deleted, _ = ModerationResult.objects.filter(pk__in=doomed, task__isnull=True).delete()
    if deleted:
        logger.info("deleted %d IMM result(s) that matched no task of ours", deleted)
    return deleted


def _apply(task: ModerationTask, result: ModerationResult, image: Image) -> None:
    """Route the task's image by this result if IMM may still move it and this is its newest word.

    Inside a transaction, with the image and the task locked (image first). A result that is not
    applied is kept with its outcome saying why, and the audit entry says the same.
    """
    verdict = {
        "task_id": result.imm_task_id,
        "status": result.status,
        "suggestion": result.suggestion,
        "categories": result.categories,
        "frames_total": result.frames_total,
        "block_frames": result.block_frames,
        "code": result.code,
        "source": result.source,
        "result_id": result.pk,
    }
    if task.task_id is None:  # the notification beat the create response: adopt it now
        task.task_id = result.imm_task_id
        task.submitted_at = task.submitted_at or timezone.now()
    # The task's words applied before this one, in arrival order (one query serves both uses).
    earlier = list(
        ModerationResult.objects.filter(task=task, applied=True)
        .exclude(pk=result.pk)
        .order_by("received_at", "id")
        .values_list("pk", "end_time", "categories", "block_frames")
    )
    # A word without an EndTime cannot be shown to be newer than one with it: it never overrides
    # such a word (between two words without one, arrival order decides).
    newer = next(
        (
            pk
            for pk, end_time, _, _ in earlier
            if end_time is not None and (result.end_time is None or end_time > result.end_time)
        ),
        None,
    )
    latest_task = image.moderation_tasks.order_by("-created_at", "-id").first()
    refused = ""
    if result.status in ("Succeeded", "Failed"):
        refused = imm_may_not_move(image, task, ending=result.status == "Failed")
    if newer is not None and not result.end_time:
        outcome = (
            f"kept: it has no EndTime, so it cannot be newer than result {newer}, which stands"
        )
    elif newer is not None:
        outcome = f"kept: older than result {newer}, which stands (delivered out of order)"
    elif latest_task is not None and latest_task.pk != task.pk:
        outcome = "kept: the image was submitted again since; the newer task decides"
    elif result.status not in ("Succeeded", "Failed"):
        outcome = f"kept: the task is {result.status or 'in an unknown state'}"
    elif refused:
        outcome = f"kept: {refused}"
    else:
        outcome = ""
    state_before = image.status
    audit.record(
        action="imm.result_received",
        actor=None,
        image=image,
        state_before=state_before,
        state_after=state_before,
        reason=outcome,
        detail=verdict,
    )
    if outcome:
        result.outcome = outcome
        result.save(update_fields=["outcome"])
        task.save()
        return

    task.finished_at = timezone.now()
    task.next_poll_at = None
    if result.status == "Failed":
        task.state = ModerationTask.State.FAILED
        task.last_error_code, task.last_error_message = result.code, result.message
        task.save()
        reason = f"IMM could not check the image: {result.code or 'Failed'}"
        if result.message:
            reason += f": {result.message}"
        _move(image, Image.Status.FAILED, action="imm.failed", reason=reason, detail=verdict)
        result.outcome = "task failed"
    else:
        task.state = ModerationTask.State.SUCCEEDED
        task.save()
        # A routing rule holds the image for a person whatever IMM says later: a manual review's
        # pass (no categories) does not release what the first verdict's categories flagged.
        flagged_before = _flagged_before(earlier)
        routed = route(
            result.suggestion,
            result.categories,
            also_flagged=flagged_before,
            rates=_highest(flagged_before, category_rates(result.block_frames)),
        )
        target, reason = routed.status, routed.reason
        was = image.status
        verdict_fields = _remember_verdict(image, result)
        if target == image.status:
            image.save(update_fields=verdict_fields)
            # Already where this word sends it (IMM's second word on an image a rule holds): no
            # move, so the image keeps its place in the queue.
            result.outcome = (
                f"routed: {reason}; it was already {image.get_status_display().lower()}"
            )
        else:
            before = image.status
            _move(
                image,
                target,
                action="imm.routed",
                reason=reason,
                detail=verdict,
                also_saving=verdict_fields,
            )
            _announce_route(image, before=before, routed=routed, result=result)
            if target in _SETTLED:
                signals.auto_settled.send(
                    sender=Image,
                    image=image,
                    suggestion=result.suggestion,
                    categories=list(result.categories),
                )
            result.outcome = f"routed: {reason}"
        if Image.Status.AWAITING_REVIEW in (was, image.status):
            # Entered, left or stayed in the review queue (its categories may have changed).
            signals.review_routed.send(sender=Image, image=image)
    result.applied = True
    result.save(update_fields=["applied", "outcome"])


def _remember_verdict(image: Image, result: ModerationResult) -> list[str]:
    """Copy the verdict onto the image (and its category rows) for lists and queue filters.

    Writes the category rows; the image's fields it sets are returned for the caller to save
    (with the status, when the verdict moves the image: one UPDATE).
    """
    # The rows are only ever written here, with imm_categories: none exist while it is empty.
    if image.imm_categories:
        ImageCategory.objects.filter(image=image).delete()
    image.imm_suggestion = result.suggestion
    image.imm_categories = list(result.categories)
    rates = [float(f.get("Rate") or 0) for f in result.block_frames if isinstance(f, dict)]
    image.imm_rate = max(rates) if rates else None
    by_category = category_rates(result.block_frames)
    ImageCategory.objects.bulk_create(
        [
            ImageCategory(
                image=image, category=c, rate=by_category.get(c), suggestion=result.suggestion
            )
            for c in sorted(set(result.categories))
        ]
    )
    return ["imm_suggestion", "imm_categories", "imm_rate"]


def category_rates(block_frames: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Each label's rate in a result: the highest Rate over the frames IMM labelled with it.

    A category IMM lists without a frame of its own (a frame carries only its worst label) has
    no rate here: a threshold cannot judge it, so a rule with thresholds sends it to a person.
    """
    rates: dict[str, float] = {}
    for frame in block_frames:
        label, rate = frame.get("Label"), frame.get("Rate")
        if isinstance(label, str) and isinstance(rate, int | float) and not isinstance(rate, bool):
            rates[label] = max(float(rate), rates.get(label, float(rate)))
    return rates


def _highest(
    first: Mapping[str, float | None], second: Mapping[str, float | None]
) -> dict[str, float | None]:
    """Both mappings of category to rate, keeping the higher rate where both give one."""
    merged = dict(first)
    for category, rate in second.items():
        known = merged.get(category)
        merged[category] = known if rate is None else rate if known is None else max(known, rate)
    return merged


def _flagged_before(earlier: Iterable[tuple[Any, ...]]) -> dict[str, float | None]:
    """Every category named by the task's results applied before this one (`earlier`: their
    (pk, end_time, categories, block_frames)), with its highest rate in them (None when none gave
    one): IMM's manual review may come back as a pass with no categories, and the first
    verdict's categories still count (see route)."""
    flagged: dict[str, float | None] = {}
    for _, _, categories, block_frames in earlier:
        rates = category_rates(block_frames)
        flagged = _highest(flagged, {category: rates.get(category) for category in categories})
    return flagged


class Route(NamedTuple):
    """Where a verdict sends an image, why, and the routing rules that decided it (if any)."""

    status: str
    reason: str
    rules: tuple[str, ...] = ()


def route(
    suggestion: str,
    categories: list[str],
    *,
    also_flagged: Iterable[str] = (),
    rates: Mapping[str, float | None] | None = None,
) -> Route:
    """The image status for a verdict, and why: routing rules first, then IMM's suggestion.

    `also_flagged` are categories an earlier verdict on the same task named: rules apply to them
    too. `rates` gives each category's rate (0-100, category_rates), which a rule's thresholds
    compare (RoutingRule.call). When the rules disagree the safer word wins: any auto-reject
    rejects (nothing is published, and no person has to look at it); otherwise any rule that
    wants a person (no thresholds, a rate in the people band or no rate) sends it to people;
    auto-approve only when every category named has a rule that approves it, since a category
    without a rule leaves IMM's suggestion standing.
    """
    named = {*categories, *also_flagged}
    rules = list(
        RoutingRule.objects.filter(category__in=named).only(
            "category", "approve_below", "reject_from"
        )
    )
    holds = sorted(rule.category for rule in rules if not rule.has_thresholds)
    calls = {
        rule.category: rule.call((rates or {}).get(rule.category))
        for rule in rules
        if rule.has_thresholds
    }
    by_verdict: dict[str, list[str]] = {"approve": [], "reject": [], "people": []}
    for category in sorted(calls):
        by_verdict[calls[category].verdict].append(category)
    rejects, people, approves = by_verdict["reject"], by_verdict["people"], by_verdict["approve"]
    if rejects:
        return _by_rules(Image.Status.REJECTED, [calls[c].reason for c in rejects], rejects)
    if people:
        reasons = [calls[c].reason for c in people]
        if holds:
            reasons.append(f"routing rule for {', '.join(holds)}")
        return _by_rules(Image.Status.AWAITING_REVIEW, reasons, sorted([*people, *holds]))
    if holds and suggestion != "review":
        listed = ", ".join(holds)
        return Route(
            Image.Status.AWAITING_REVIEW,
            f"IMM said {suggestion}; routing rule for {listed}",
            tuple(holds),
        )
    if approves and not holds and set(approves) == named:
        return _by_rules(Image.Status.APPROVED, [calls[c].reason for c in approves], approves)
    if suggestion in ROUTES:
        return Route(ROUTES[suggestion], f"IMM said {suggestion}")
    return Route(
        Image.Status.AWAITING_REVIEW, f"IMM said {suggestion or 'nothing'}: a person decides"
    )


def _by_rules(status: str, reasons: list[str], categories: list[str]) -> Route:
    return Route(status, "; ".join(reasons), tuple(categories))


# The outcome events IMM's routing writes: a final outcome (approved, rejected), and a settled
# image sent back to people (IMM's newer word says review, or a rule holds it). Moving into
# submitted, failed, expired or received, or from waiting into review, is no outcome: no event.
_SETTLED = (Image.Status.APPROVED, Image.Status.REJECTED)


def _announce_route(image: Image, *, before: str, routed: Route, result: ModerationResult) -> None:
    """The outcome event for IMM's routing of `image` (locked) from `before`, if it is one."""
    if routed.status in _SETTLED:
        categories = ", ".join(result.categories)
        outbox.emit_outcome(
            image=image,
            type=(
                Event.Type.APPROVED
                if routed.status == Image.Status.APPROVED
                else Event.Type.REJECTED
            ),
            decided_by=_decided_by(routed),
            verdict=routed.status,
            reason=f"{routed.reason}: {categories}" if categories else routed.reason,
            previous_status=before,
            now=image.status_changed_at,
        )
    elif routed.status == Image.Status.AWAITING_REVIEW and before in _SETTLED:
        outbox.emit_outcome(
            image=image,
            type=Event.Type.REOPENED,
            decided_by=_decided_by(routed),
            verdict="reopened",
            reason=routed.reason,
            previous_status=before,
            now=image.status_changed_at,
        )


def _decided_by(routed: Route) -> outbox.DecidedBy:
    if routed.rules:
        return outbox.DecidedBy.rule("routing rule for " + ", ".join(routed.rules))
    return outbox.DecidedBy.imm()


def checked_frames(
    *,
    frames_total: int,
    frame_count: int,
    interval: int,
    max_frames: int,
    block_frames: Iterable[Mapping[str, Any]],
) -> list[tuple[int, Mapping[str, Any] | None]]:
    """The frames IMM checked, by their number in the image, each with its BlockFrame if any.

    IMM samples frames 0, Interval, 2 x Interval, ... below the image's frame count, at most
    MaxFrames of them, and a BlockFrame's Offset is the frame's number in the image (the emulator
    reports it so). So with Interval 3 on a 30-frame GIF the ten checked frames are 0, 3, ..., 27
    and an Offset of 6 is the third of them. When TotalCount disagrees with that grid (IMM read
    the frame count otherwise) IMM's count wins along the same step, never beyond MaxFrames. An
    offending frame off the grid is listed all the same, in its place: never dropped.
    """
    step, most = max(interval, 1), max(max_frames, 1)
    grid = list(range(0, max(frame_count, 1), step))[:most]
    if frames_total != len(grid):
        grid = [n * step for n in range(min(frames_total, most))]
    hits: dict[int, Mapping[str, Any]] = {}
    for frame in block_frames:
        offset = frame.get("Offset")
        if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            hits.setdefault(offset, frame)
    return [(number, hits.get(number)) for number in sorted({*grid, *hits})]


# --- Polling ---------------------------------------------------------------------------------


def poll_backoff(poll_count: int) -> timedelta:
    # The exponent is bounded: 60 s * 2**41 overflows a timedelta, and a task polled every
    # 30 minutes gets there within a day; the poller would then crash on it every round.
    return min(
        POLL_BACKOFF_CAP, timedelta(seconds=settings.IMM_POLL_AFTER) * 2 ** min(poll_count, 20)
    )


@dataclass
class PollReport:
    asked: int = 0
    recorded: int = 0
    expired: int = 0
    failed: int = 0
    resent: int = 0
    matched: int = 0
    pruned: int = 0


def poll_once(*, client: ImmClient, now: datetime | None = None, limit: int = 100) -> PollReport:
    """Ask IMM about tasks nobody told us about, expire what IMM forgot, resend what got lost.

    Several pollers may run: each task is claimed with a conditional UPDATE on its next_poll_at,
    so only one of them asks about it.
    """
    now = now or timezone.now()
    report = PollReport()
    ImmStatus.objects.get_or_create(pk=1)
    ImmStatus.objects.filter(pk=1).update(poller_seen_at=timezone.now())
    due = ModerationTask.objects.filter(
        state=ModerationTask.State.RUNNING, next_poll_at__lte=now
    ).order_by("next_poll_at")[:limit]
    for task in due:
        claimed = ModerationTask.objects.filter(
            pk=task.pk, state=ModerationTask.State.RUNNING, next_poll_at=task.next_poll_at
        ).update(
            next_poll_at=now + poll_backoff(task.poll_count + 1), poll_count=task.poll_count + 1
        )
        if not claimed:
            continue
        if task.submitted_at and now - task.submitted_at > RETENTION:
            expire(task, reason="IMM keeps tasks for 7 days and this one never reported a result")
            report.expired += 1
            continue
        report.asked += 1
        try:
            answer = client.get_image_moderation_result(task.task_id or "")
        except ImmError as error:
            if error.code == "ResourceNotFound":
                expire(task, reason=f"IMM no longer knows task {task.task_id}: {error.message}")
                report.expired += 1
            else:
                logger.warning("polling task %s failed: %s", task.task_id, error)
                report.failed += 1
            continue
        if answer.status in ("Succeeded", "Failed"):
            try:
                message = TaskMessage.parse({**answer.raw, "TaskType": "ImageModeration"})
            except ValueError as exc:
                # IMM's answer cannot be stored as it is; asked again at the next poll time
                # (already set above), and expired after IMM's retention like any silent task.
                logger.warning("IMM's answer for task %s is unreadable: %s", task.task_id, exc)
                report.failed += 1
                continue
            outcome = record_result(message=message, source=ModerationResult.Source.POLL)
            report.recorded += outcome.what == "recorded"
    report.matched = claim_unmatched_results(now=now)
    report.pruned = prune_unmatched_results(now=now)
    report.resent = resend_stuck(now=now)
    return report


def expire(task: ModerationTask, *, reason: str) -> None:
    """Give up on a task IMM no longer knows (or kept past its retention); audited."""
    with transaction.atomic():
        image, task = _lock_image_and_task(task.pk)
        if task.state not in ModerationTask.LIVE_STATES:
            return
        kept = imm_may_not_move(image, task, ending=True)
        task.state = ModerationTask.State.EXPIRED
        task.finished_at = timezone.now()
        task.next_poll_at = None
        task.save()
        before = image.status
        if kept:
            reason = f"{reason} ({kept})"
        else:
            _set_status(image, Image.Status.EXPIRED)
        audit.record(
            action="imm.expired",
            actor=None,
            image=image,
            state_before=before,
            state_after=image.status,
            reason=reason,
            detail={"task_id": task.task_id},
        )


def resend_stuck(*, now: datetime) -> int:
    """Queue images whose submission got lost (no task in flight, or a lapsed attempt)."""
    if ImmStatus.current().paused:
        return 0
    lapsed = Q(moderation_tasks__state=ModerationTask.State.SENDING) & (
        Q(moderation_tasks__next_attempt_at__lt=now - SEND_LEASE)
        | Q(moderation_tasks__next_attempt_at__isnull=True)
    )
    nothing_live = ~Q(moderation_tasks__state__in=ModerationTask.LIVE_STATES)
    stuck = list(
        Image.objects.filter(status=Image.Status.RECEIVED, status_changed_at__lt=now - STUCK_AFTER)
        .filter(lapsed | nothing_live)
        .values_list("pk", flat=True)
        .distinct()[:500]
    )
    for image_id in stuck:
        with transaction.atomic():
            enqueue_submission(image_id)
    return len(stuck)


# --- Background tasks (run by `manage.py db_worker`; each takes ids and is safe to run twice) ---


@background_task(queue_name=SUBMIT_QUEUE)
def submit_image(image_id: int) -> str:
    """Send one image to IMM (or adopt the task an earlier attempt created).

    In a queue of its own, which manage.py imm_submitter runs many at a time.
    """
    return submit(image_id=image_id, client=make_client()).what


@background_task()
def fetch_result(task_id: str) -> str:
    """Fetch a verdict a notification did not carry, and record it."""
    try:
        answer = make_client().get_image_moderation_result(task_id)
    except ImmError as error:
        # The poller asks again later; nothing is lost by giving up here.
        logger.warning("fetching the result of %s failed: %s", task_id, error)
        return "failed"
    if answer.status not in ("Succeeded", "Failed"):
        return "running"
    try:
        message = TaskMessage.parse({**answer.raw, "TaskType": "ImageModeration"})
    except ValueError as exc:
        # Unstorable as it is: the poller asks again, and expires the task after IMM's retention.
        logger.warning("IMM's answer for task %s is unreadable: %s", task_id, exc)
        return "unreadable"
    return record_result(message=message, source=ModerationResult.Source.POLL).what
