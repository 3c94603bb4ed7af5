from __future__ import annotations

from django.http import HttpRequest

from .models import ImmStatus


def imm_status(request: HttpRequest) -> dict[str, object]:
    """The IMM pause, for the banner on admins' pages (one indexed read, admins only)."""
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("moderation.change_image"):
        return {}
    status = ImmStatus.objects.filter(pk=1, paused=True).first()
    return {"imm_paused": status}
