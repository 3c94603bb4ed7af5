"""/api/v1/decisions: every final outcome of the client's images and every later change to one,
in commit order, behind an opaque cursor (moderation/events/feed.py holds the guarantees)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, cast

from django.http import HttpRequest
from ninja import Query, Router, Schema
from pydantic import Field

from moderation.events import feed
from moderation.events.models import Event
from moderation.models import Image

from . import auth as api_auth
from .errors import ApiError, ErrorOut
from .models import ApiKey, ApiSubmission

router = Router(tags=["decisions"])

CURSOR_MAX = 200
EventType = Literal[
    "image.approved",
    "image.rejected",
    "image.escalated",
    "image.undone",
    "image.reopened",
    "image.overridden",
]


class FeedDecidedBy(Schema):
    kind: Literal["imm", "rule", "person"]
    name: str = Field(description="'IMM', the routing rule's name, or the person's username.")


class FeedItem(Schema):
    id: str = Field(description="The event's id (the same as a webhook's webhook-id).")
    type: EventType
    image_id: int
    external_id: str | None = Field(description="Your id for the image, if you gave one.")
    sequence: int = Field(description="1, 2, 3... per image, in the order its changes committed.")
    status: str = Field(description="The image's status after this change.")
    previous_status: str | None = None
    decided_by: FeedDecidedBy
    verdict: str
    reason: str
    occurred_at: datetime


class FeedOut(Schema):
    items: list[FeedItem]
    next: str | None = Field(
        description="Ask again with after=<next>; it is the cursor you sent when nothing is new."
    )


@router.get(
    "",
    auth=api_auth.read,
    response={
        200: FeedOut,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        422: ErrorOut,
        429: ErrorOut,
    },
    summary="Outcomes and later changes, in commit order",
    description=(
        "Every final outcome of an image this client submitted (IMM's or a person's) and every "
        "later change to it (undone, reopened, overridden), oldest first. Pass the page's `next` "
        "as `after` to continue: no event is skipped or repeated. Events committed before the "
        "client submitted an image are included; an image that was already decided when "
        "submitted has its outcome in the submission's answer too."
    ),
)
def decisions(
    request: HttpRequest,
    after: str | None = Query(None, max_length=CURSOR_MAX),
    limit: int = Query(100, ge=1, le=feed.MAX_LIMIT),
) -> Any:
    key = cast(ApiKey, request.auth)  # type: ignore[attr-defined]
    submissions = ApiSubmission.objects.of(key.client)
    images = Image.objects.filter(pk__in=submissions.values("image_id"))
    try:
        page = feed.page(events=Event.objects.for_images(images), after=after or None, limit=limit)
    except feed.BadCursor as exc:
        raise ApiError(400, "bad_cursor", str(exc), field="after") from None
    # The client's own id for each image: its latest submission's (ids are unique per client).
    external: dict[int, str | None] = {}
    for image_id, external_id in (
        submissions.filter(image_id__in={e.image_id for e in page.items})
        .order_by("id")
        .values_list("image_id", "external_id")
    ):
        external[image_id] = external_id or external.get(image_id)
    return {
        "items": [{**e.data, "external_id": external.get(e.image_id)} for e in page.items],
        "next": page.next,
    }
