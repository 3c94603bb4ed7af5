"""What Start reviewing may hand a reviewer: not categories they opted out of, nor those whose
daily cap they reached (reviews.exposure.models)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from moderation.models import Image, ImageCategory

from . import counting
from .models import ExposureCap, OptOut


@dataclass(frozen=True)
class Reached:
    category: str
    cap: int


def caps() -> dict[str, int]:
    """Every cap, category -> images a day ("" is the default). A few rows."""
    return dict(ExposureCap.objects.values_list("category", "images"))


def reached(user_id: int, *, now: datetime | None = None) -> list[Reached]:
    """The categories whose cap the user has reached today, by name."""
    table = caps()
    if not table:
        return []
    shown = counting.today(user_id, now=now)
    out = []
    for category, n in sorted(shown.items()):
        cap = table.get(category, table.get(""))
        # Images with no category ("") are not a category a cap can name.
        if category and cap is not None and n >= cap:
            out.append(Reached(category, cap))
    return out


def opted_out(user_id: int) -> list[str]:
    return list(
        OptOut.objects.filter(reviewer_id=user_id)
        .order_by("category")
        .values_list("category", flat=True)
    )


def allowed(
    user_id: int, images: QuerySet[Image], *, now: datetime | None = None
) -> QuerySet[Image]:
    """`images` without those of a category the user opted out of or reached today's cap for.

    Two small reads (the user's counts for today with the caps, and their opt-outs); with
    nothing to leave out the queryset is unchanged, so the claim query stays as it was.
    """
    blocked = {r.category for r in reached(user_id, now=now or timezone.now())}
    blocked.update(opted_out(user_id))
    if not blocked:
        return images
    return images.exclude(
        Exists(ImageCategory.objects.filter(image=OuterRef("pk"), category__in=blocked))
    )
