from __future__ import annotations

from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest

from .models import Endpoint

BANNER_CACHE_KEY = "webhooks:auto-disabled"
# The banner's list is read at most this often per process (every admin page shows it, and
# pages keep to a budget of queries): an endpoint the worker disables shows within this time.
# Enabling one on the page clears the cached list at once (services.set_enabled).
BANNER_TTL = 30


def disabled_endpoints(request: HttpRequest) -> dict[str, object]:
    """Endpoints the worker disabled, for the banner on admins' pages (admins only)."""
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("moderation.change_image"):
        return {}
    disabled = cache.get(BANNER_CACHE_KEY)
    if disabled is None:
        disabled = list(Endpoint.objects.auto_disabled().values("id", "url", "disabled_reason")[:5])
        cache.set(BANNER_CACHE_KEY, disabled, BANNER_TTL)
    return {"webhooks_disabled": disabled}


def forget_banner() -> None:
    """Drop the banner's cached list now and again once committed (a page read in between
    would otherwise cache the state from before the change)."""
    cache.delete(BANNER_CACHE_KEY)
    transaction.on_commit(lambda: cache.delete(BANNER_CACHE_KEY))
