from __future__ import annotations

from django import template

from moderation import intake
from moderation.models import Image

register = template.Library()


@register.simple_tag
def no_preview_reason(image: Image) -> str:
    """Why the page shows no preview of `image`, in plain words (autoescaped by the template)."""
    return intake.no_preview_reason(image.format, image.width, image.height)
