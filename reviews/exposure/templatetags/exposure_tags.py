"""{% load exposure_tags %}{% exposure_today %}: today's exposure per reviewer and category, for
admins only (the dashboard includes it; anyone else gets nothing)."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils import timezone

from reviews.exposure import counting, limits
from reviews.exposure.models import ExposureCount

register = template.Library()

ROWS = 30  # the most exposed reviewer-category pairs shown; the exposure page has them all


@register.inclusion_tag("exposure/_today.html", takes_context=True)
def exposure_today(context: Any) -> dict[str, Any]:
    request = context.get("request")
    if request is None or not request.user.has_perm("moderation.change_image"):
        return {"hidden": True}
    table = limits.caps()
    rows = [
        {
            "reviewer": name,
            "category": category or "no category",
            "shown": n,
            "cap": table.get(category, table.get("")) if category else None,
        }
        for name, category, n in ExposureCount.objects.filter(day=counting.day_of(timezone.now()))
        .annotate(n=counting.TOTAL)
        .filter(n__gt=0)
        .order_by("-n", "reviewer__username", "category")
        .values_list("reviewer__username", "category", "n")[:ROWS]
    ]
    return {"rows": rows, "limit": ROWS}
