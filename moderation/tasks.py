"""Background work (Django's Tasks API, run by `manage.py db_worker`). Each task takes ids and is
safe to run twice; the pipeline module holds the logic."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django_tasks import TaskResultStatus, task

from . import audit, pipeline
from .imm import ImmError
from .models import ModerationResult

logger = logging.getLogger(__name__)


@task()
def submit_image(image_id: int) -> str:
    """Send one image to IMM (or adopt the task an earlier attempt created)."""
    return pipeline.submit(image_id=image_id, client=pipeline.make_client()).what


@task()
def fetch_result(task_id: str) -> str:
    """Fetch a verdict a notification did not carry, and record it."""
    try:
        answer = pipeline.make_client().get_image_moderation_result(task_id)
    except ImmError as error:
        # The poller asks again later; nothing is lost by giving up here.
        logger.warning("fetching the result of %s failed: %s", task_id, error)
        return "failed"
    if answer.status not in ("Succeeded", "Failed"):
        return "running"
    message = pipeline.TaskMessage.parse({**answer.raw, "TaskType": "ImageModeration"})
    return pipeline.record_result(message=message, source=ModerationResult.Source.POLL).what


@task()
def verify_audit_chain() -> str:
    """Walk the whole audit chain and keep the outcome for the log page: "ok" or "broken"."""
    return "ok" if audit.check_chain().ok else "broken"


# A verification queued or started longer ago than this is taken for lost (its worker was
# stopped mid-walk, say): a walk of a million entries takes about 20 s.
VERIFICATION_LOST_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class PendingVerification:
    enqueued_at: datetime
    running: bool


def pending_verification(*, now: datetime | None = None) -> PendingVerification | None:
    """The chain verification queued or running now, if any, so that a second is not queued.

    Only the database backend (what `make run` and production use) can be asked; with any other
    backend this returns None and every request queues a walk.
    """
    from django_tasks_db.backend import DatabaseBackend
    from django_tasks_db.models import DBTaskResult

    if not isinstance(verify_audit_chain.get_backend(), DatabaseBackend):
        return None
    now = now or timezone.now()
    pending = (
        DBTaskResult.objects.filter(
            task_path=verify_audit_chain.module_path,
            status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING],
            enqueued_at__gte=now - VERIFICATION_LOST_AFTER,
        )
        .order_by("enqueued_at")
        .values_list("enqueued_at", "status")
        .first()
    )
    if pending is None:
        return None
    return PendingVerification(pending[0], running=pending[1] == TaskResultStatus.RUNNING)
