"""{% load qa_tags %}{% qa_accuracy %}: the per-reviewer accuracy card, for admins only (the
dashboard includes it; anyone else gets nothing)."""

from __future__ import annotations

from typing import Any

from django import template

from reviews.qa import accuracy

register = template.Library()


@register.inclusion_tag("qa/_accuracy.html", takes_context=True)
def qa_accuracy(context: Any) -> dict[str, Any]:
    request = context.get("request")
    if request is None or not request.user.has_perm("moderation.change_image"):
        return {"hidden": True}
    return {"accuracy": accuracy.per_reviewer()}
