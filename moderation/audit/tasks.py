"""Verifying the audit log when its page asks, run by the task worker (manage.py db_worker)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone
from django_tasks import TaskResultStatus, task
from django_tasks.exceptions import TaskResultDoesNotExist

from moderation.models import VerificationRequest

from .verify import check_log


@task()
def verify_audit_chain() -> str:
    """Verify the whole audit log and keep the outcome for the log page: "ok" or "broken"."""
    return "ok" if check_log().ok else "broken"


# A walk that started longer ago than this is taken for lost (its worker was stopped mid-walk,
# which leaves its result Running): a walk of a million entries takes well under a minute. A
# queued walk is never taken for lost: it waits its turn behind other tasks.
VERIFICATION_LOST_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class PendingVerification:
    since: datetime  # when it started if running, else when it was queued
    running: bool


def pending_verification(*, now: datetime | None = None) -> PendingVerification | None:
    """The verification of the log asked for from the log page, if it is still queued or running."""
    request = VerificationRequest.objects.order_by("-requested_at", "-id").first()
    if request is None:
        return None
    try:
        result = verify_audit_chain.get_result(request.task_result_id)
    except (TaskResultDoesNotExist, NotImplementedError):  # pruned, or a backend that cannot say
        return None
    if result.status == TaskResultStatus.READY and result.enqueued_at is not None:
        return PendingVerification(result.enqueued_at, running=False)
    now = now or timezone.now()
    started = result.started_at
    if (
        result.status == TaskResultStatus.RUNNING
        and started
        and started >= now - VERIFICATION_LOST_AFTER
    ):
        return PendingVerification(started, running=True)
    return None


def request_verification() -> PendingVerification | None:
    """Queue a verification of the log unless one is queued or running; returns that one, or None.

    Best effort: two requests in the same instant may both queue a walk, which is harmless.
    """
    pending = pending_verification()
    if pending is not None:
        return pending
    result = verify_audit_chain.enqueue()
    with transaction.atomic():
        latest = VerificationRequest.objects.create(task_result_id=str(result.id))
        VerificationRequest.objects.exclude(pk=latest.pk).delete()
    return None
