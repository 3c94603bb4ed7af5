"""The API's workflows. Submission goes through moderation.services.ingest, the upload page's
own intake, so the checks, the wording, the audit entries and the submission to IMM are the
page's; the API adds only who submitted it (the client's submission)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO

from django.db import IntegrityError, transaction

from moderation import services
from moderation.audit import log as audit

from .models import ApiClient, ApiSubmission


class ExternalIdTaken(Exception):
    def __init__(self, external_id: str, image_id: int) -> None:
        super().__init__(f"external_id {external_id!r} was already used, for image {image_id}")
        self.external_id, self.image_id = external_id, image_id


@dataclass(frozen=True)
class Submitted:
    result: services.IntakeResult
    submission: ApiSubmission | None  # None when the file was refused


def submit(
    *,
    client: ApiClient,
    fp: BinaryIO,
    filename: str,
    external_id: str | None,
    metadata: dict[str, Any],
    context: audit.AuditContext,
) -> Submitted:
    """Take one file from a client: the upload page's intake, as the client's service user, and
    the client's submission of the image (stored or duplicate) in the same transaction.

    Raises ExternalIdTaken when the client used `external_id` before; nothing is stored then.
    A refused file is audited (as on the page) and makes no submission.
    """
    if external_id is not None:
        taken = ApiSubmission.objects.of(client).filter(external_id=external_id).first()
        if taken is not None:
            raise ExternalIdTaken(external_id, taken.image_id)
    try:
        with transaction.atomic():
            result = services.ingest(
                fp=fp, filename=filename, actor=client.user, context=context, via="api"
            )
            if result.image is None:
                return Submitted(result, None)
            submission = ApiSubmission.objects.create(
                client=client,
                image=result.image,
                external_id=external_id,
                metadata=metadata,
                duplicate=result.outcome == "duplicate",
            )
    except IntegrityError:
        # The same external_id, sent twice at once: the first one stands, this one stored nothing.
        if external_id is not None:
            taken = ApiSubmission.objects.of(client).filter(external_id=external_id).first()
            if taken is not None:
                raise ExternalIdTaken(external_id, taken.image_id) from None
        raise
    return Submitted(result, submission)
