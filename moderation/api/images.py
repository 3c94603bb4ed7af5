"""/api/v1/images: submit an image, read one by id or by the client's external id."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, BinaryIO, Literal, cast

from django.http import HttpRequest, JsonResponse
from ninja import File, Form, Header, Path, Query, Router, Schema
from ninja.files import UploadedFile
from pydantic import Field

from moderation import limits
from moderation.audit import log as audit
from moderation.events.models import Event
from moderation.models import AuditEntry, Image, ModerationResult

from . import auth as api_auth
from . import idempotency, services
from .errors import ApiError, ErrorOut, error_response
from .models import (
    EXTERNAL_ID_MAX,
    METADATA_DEPTH_MAX,
    METADATA_MAX_BYTES,
    ApiKey,
    ApiSubmission,
)

router = Router(tags=["images"])

# --- Schemas -------------------------------------------------------------------------------


class FlaggedFrame(Schema):
    offset: int | None = Field(description="The frame's index in the image (0 for a still).")
    label: str
    rate: float | None


class ImmVerdict(Schema):
    suggestion: Literal["pass", "block", "review"] | str = Field(
        description="IMM's suggestion: pass, block or review."
    )
    categories: list[str]
    rate: float | None = Field(description="The highest rate of any flagged frame.")
    frames_checked: int
    flagged_frames: list[FlaggedFrame]
    received_at: datetime


class DecidedBy(Schema):
    kind: Literal["imm", "rule", "person"]
    name: str = Field(description="'IMM', a routing rule's name, or the person's username.")


class Outcome(Schema):
    verdict: Literal["approved", "rejected"]
    decided_by: DecidedBy
    reason: str = Field(description="IMM's routing reason, or the person's category and words.")
    decided_at: datetime


class Waiting(Schema):
    waiting_for: Literal["imm", "review", "admin", "retry"] = Field(
        description="imm: IMM's verdict; review: a reviewer; admin: an admin (escalated); "
        "retry: IMM failed or expired, an admin must retry."
    )
    since: datetime


class ImageOut(Schema):
    id: int
    sha256: str
    status: str = Field(
        description="received, submitted, awaiting_review, approved, rejected, "
        "failed, expired or escalated."
    )
    duplicate_of: int | None = Field(
        description="The image's id when its bytes had been stored before this submission."
    )
    external_id: str | None
    metadata: dict[str, Any]
    submitted_at: datetime
    warnings: list[str]
    imm: ImmVerdict | None
    outcome: Outcome | None = Field(description="The final outcome, once there is one.")
    waiting: Waiting | None = Field(description="What the image waits for, if anything.")


COMMON_ERRORS: dict[int, Any] = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    422: ErrorOut,
    429: ErrorOut,
}

# --- Reading -------------------------------------------------------------------------------

OUTCOME_ACTIONS = ("imm.routed", "review.approved", "review.rejected")
WAITING_FOR = {
    Image.Status.RECEIVED: "imm",
    Image.Status.SUBMITTED: "imm",
    Image.Status.AWAITING_REVIEW: "review",
    Image.Status.ESCALATED: "admin",
    Image.Status.FAILED: "retry",
    Image.Status.EXPIRED: "retry",
}


def _verdict(image: Image) -> dict[str, Any] | None:
    result = (
        ModerationResult.objects.filter(image=image, applied=True)
        .exclude(suggestion="")
        .order_by("-received_at", "-id")
        .first()
    )
    if result is None:
        return None
    frames = [f for f in result.block_frames if isinstance(f, dict)]
    rates = [float(f["Rate"]) for f in frames if isinstance(f.get("Rate"), int | float)]
    return {
        "suggestion": result.suggestion,
        "categories": list(result.categories),
        "rate": max(rates) if rates else None,
        "frames_checked": result.frames_total,
        "flagged_frames": [
            {"offset": f.get("Offset"), "label": str(f.get("Label", "")), "rate": f.get("Rate")}
            for f in frames
        ],
        "received_at": result.received_at,
    }


def _outcome(image: Image) -> dict[str, Any] | None:
    if image.status not in (Image.Status.APPROVED, Image.Status.REJECTED):
        return None
    # The latest outcome event says who settled it and why (moderation/events); images settled
    # before events were kept fall back to their audit entries.
    event = Event.objects.filter(image=image).order_by("-sequence").first()
    if event is not None and event.data.get("status") == image.status:
        by = event.data.get("decided_by") or {}
        kind = by.get("kind") if by.get("kind") in ("imm", "rule", "person") else "imm"
        return {
            "verdict": image.status,
            "decided_by": {"kind": kind, "name": str(by.get("name") or "IMM")},
            "reason": str(event.data.get("reason") or ""),
            "decided_at": event.created_at,
        }
    entry = (
        AuditEntry.objects.filter(image=image, action__in=OUTCOME_ACTIONS, state_after=image.status)
        .order_by("-id")
        .first()
    )
    person = entry is not None and entry.actor_id is not None and entry.action != "imm.routed"
    return {
        "verdict": image.status,
        "decided_by": {
            "kind": "person" if person else "imm",
            "name": entry.actor_label if person and entry else "IMM",
        },
        "reason": entry.reason if entry else "",
        "decided_at": entry.created_at if entry else image.status_changed_at,
    }


def image_view(submission: ApiSubmission, *, warnings: list[str] | None = None) -> dict[str, Any]:
    """An image as its client sees it, through that client's submission of it."""
    image = submission.image
    waiting_for = WAITING_FOR.get(cast(Image.Status, image.status))
    return {
        "id": image.pk,
        "sha256": image.sha256,
        "status": image.status,
        "duplicate_of": image.pk if submission.duplicate else None,
        "external_id": submission.external_id,
        "metadata": submission.metadata,
        "submitted_at": submission.created_at,
        "warnings": warnings
        if warnings is not None
        else (["Low resolution."] if image.low_resolution else []),
        "imm": _verdict(image),
        "outcome": _outcome(image),
        "waiting": (
            {"waiting_for": waiting_for, "since": image.status_changed_at} if waiting_for else None
        ),
    }


def _dump(data: dict[str, Any]) -> Any:
    return json.loads(ImageOut.model_validate(data).model_dump_json())


@router.get(
    "/{int:image_id}",
    auth=api_auth.read,
    response={200: ImageOut, 404: ErrorOut, **COMMON_ERRORS},
    summary="One image, by id",
)
def get_image(
    request: HttpRequest,
    image_id: int = Path(..., ge=1, le=limits.WHOLE_NUMBER_MAX),
) -> Any:
    key = cast(ApiKey, request.auth)  # type: ignore[attr-defined]
    submission = (
        ApiSubmission.objects.of(key.client)
        .filter(image_id=image_id)
        .select_related("image")
        .order_by("-id")
        .first()
    )
    if submission is None:
        raise ApiError(404, "not_found", f"No image {image_id} was submitted by this client.")
    return image_view(submission)


@router.get(
    "",
    auth=api_auth.read,
    response={200: ImageOut, 404: ErrorOut, **COMMON_ERRORS},
    summary="One image, by the external id it was submitted with",
)
def get_by_external_id(
    request: HttpRequest,
    external_id: str = Query(..., min_length=1, max_length=EXTERNAL_ID_MAX),
) -> Any:
    key = cast(ApiKey, request.auth)  # type: ignore[attr-defined]
    submission = (
        ApiSubmission.objects.of(key.client)
        .filter(external_id=external_id)
        .select_related("image")
        .first()
    )
    if submission is None:
        raise ApiError(
            404, "not_found", "No image was submitted by this client with that external_id."
        )
    return image_view(submission)


# --- Submitting ----------------------------------------------------------------------------


def _metadata(text: str | None) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    if len(text.encode("utf-8", "surrogatepass")) > METADATA_MAX_BYTES:
        raise ApiError(
            422,
            "invalid",
            f"metadata is {len(text.encode('utf-8', 'surrogatepass')):,} bytes; "
            f"it can be at most {METADATA_MAX_BYTES:,}.",
            field="metadata",
        )
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: 4 KB of "[[[[..." nests deeper than Python's stack allows.
        raise ApiError(
            422, "invalid", "metadata must be a JSON object.", field="metadata"
        ) from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid", "metadata must be a JSON object.", field="metadata")
    if _depth(value) > METADATA_DEPTH_MAX:
        # Stored, it would be read back and serialised on every read of the image: a depth
        # the JSON encoders refuse would make the image unreadable, so refuse it now.
        raise ApiError(
            422,
            "invalid",
            f"metadata nests deeper than {METADATA_DEPTH_MAX} levels.",
            field="metadata",
        )
    try:
        stored = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        # NaN, Infinity, or a number too large for a float (1e400): not JSON.
        raise ApiError(
            422,
            "invalid",
            "metadata holds a number JSON cannot carry (NaN, Infinity or out of range).",
            field="metadata",
        ) from None
    # PostgreSQL's jsonb holds no NUL character and no lone surrogate: refuse them here, plainly.
    try:
        stored.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            422, "invalid", "metadata holds text that is not valid Unicode.", field="metadata"
        ) from None
    if "\\u0000" in stored:
        raise ApiError(422, "invalid", "metadata holds a NUL character.", field="metadata")
    return cast(dict[str, Any], value)


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in `value` (1 for a flat object), without recursion;
    it stops counting once past METADATA_DEPTH_MAX."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > METADATA_DEPTH_MAX:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _external_id(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > EXTERNAL_ID_MAX:
        raise ApiError(
            422,
            "invalid",
            f"external_id is {len(value):,} characters; it can be at most {EXTERNAL_ID_MAX}.",
            field="external_id",
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ApiError(
            422, "invalid", "external_id holds a control character.", field="external_id"
        )
    return value


def _file_digest(upload: UploadedFile) -> str:
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest()


@router.post(
    "",
    auth=api_auth.submit,
    response={201: ImageOut, 409: ErrorOut, 413: ErrorOut, **COMMON_ERRORS},
    summary="Submit an image",
    description=(
        "Multipart: `file` (the image), optional `external_id` (your own id, unique per client) "
        "and `metadata` (a JSON object, at most 4 KB). The same checks and wording as the upload "
        "page: 422 with `rule` when refused. With an `Idempotency-Key` header a retry gets the "
        "first answer; the same key with a different body is a 409."
    ),
)
def submit_image(
    request: HttpRequest,
    file: File[UploadedFile],
    external_id: Form[str | None] = None,
    metadata: Form[str | None] = None,
    idempotency_key: str | None = Header(
        None,
        alias="Idempotency-Key",
        max_length=idempotency.KEY_MAX,
        pattern=idempotency.KEY_PATTERN,
        description="Printable ASCII, at most 255 characters (a UUID, say).",
    ),
) -> Any:
    key = cast(ApiKey, request.auth)  # type: ignore[attr-defined]
    client = key.client
    external = _external_id(external_id)
    meta = _metadata(metadata)
    claim = None
    if idempotency_key:
        digest = idempotency.request_hash(
            file=_file_digest(file),
            filename=file.name or "",
            external_id=external,
            metadata=meta,
        )
        claim = idempotency.claim(client=client, key=idempotency_key, digest=digest)
        if claim.state == "mismatch":
            raise ApiError(
                409,
                "idempotency_mismatch",
                "This Idempotency-Key was used with a different request; use a new key.",
            )
        if claim.state == "in_progress":
            raise ApiError(
                409,
                "idempotency_in_progress",
                "A request with this Idempotency-Key is still being handled; retry shortly.",
            )
        if claim.state == "replay":
            replay = JsonResponse(claim.record.body, status=claim.record.status_code or 200)
            replay["Idempotent-Replayed"] = "true"
            return replay
    try:
        status, body = _submit(request, client, file, external, meta)
    except BaseException:
        if claim is not None:
            idempotency.release(claim.record)
        raise
    if claim is not None:
        idempotency.complete(claim.record, status=status, body=body)
    return JsonResponse(body, status=status)


def _submit(
    request: HttpRequest,
    client: Any,
    file: UploadedFile,
    external_id: str | None,
    metadata: dict[str, Any],
) -> tuple[int, Any]:
    """Run the intake; the answer as (status, JSON body), which an idempotent retry replays."""
    try:
        done = services.submit(
            client=client,
            fp=cast(BinaryIO, file),
            filename=file.name or "",
            external_id=external_id,
            metadata=metadata,
            context=audit.AuditContext.from_request(request),
        )
    except services.ExternalIdTaken as taken:
        response = error_response(
            409,
            "external_id_taken",
            f"external_id {taken.external_id!r} was already used by this client, "
            f"for image {taken.image_id}.",
            field="external_id",
        )
        return 409, json.loads(response.content)
    if done.submission is None:
        result = done.result
        body = {
            "error": {
                "code": "refused",
                "message": f"This file {result.reason}.",
                "field": "file",
                "rule": result.rule,
            }
        }
        return 422, body
    return 201, _dump(image_view(done.submission, warnings=done.result.warnings))
