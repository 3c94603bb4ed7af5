from __future__ import annotations

from django.http import HttpRequest

from .models import Endpoint


def disabled_endpoints(request: HttpRequest) -> dict[str, object]:
    """Endpoints the worker disabled, for the banner on admins' pages (admins only)."""
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("moderation.change_image"):
        return {}
    disabled = Endpoint.objects.auto_disabled().only("id", "url", "disabled_reason")[:5]
    return {"webhooks_disabled": list(disabled)}
