"""Background work (Django's Tasks API, run by `manage.py db_worker`). Each task takes ids and is
safe to run twice; the pipeline module holds the logic."""

from __future__ import annotations

import logging

from django_tasks import task

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
