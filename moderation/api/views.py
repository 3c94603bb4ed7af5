"""The API keys page (admins only): clients and their keys, a new key shown once, revoking."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from moderation.audit import log as audit

from . import keys
from .models import ApiClient, ApiKey

ADMIN = "moderation.change_image"  # what makes an admin (reviews.services.is_admin too)


def _page(request: HttpRequest, *, status: int = 200, **extra: object) -> TemplateResponse:
    clients = ApiClient.objects.select_related("user", "created_by").prefetch_related(
        Prefetch("keys", queryset=ApiKey.objects.order_by("-created_at", "-id"))
    )
    return TemplateResponse(
        request,
        "api/keys.html",
        {"clients": clients, "scopes": ApiKey.Scope.choices, "nav": "api_keys", **extra},
        status=status,
    )


@permission_required(ADMIN, raise_exception=True)
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def keys_page(request: HttpRequest) -> HttpResponse:
    """GET lists clients and keys; POST makes a key (and its client if new) and shows it once,
    in this answer only: it is never stored, so it cannot be shown again."""
    if request.method != "POST":
        return _page(request)
    name = request.POST.get("client", "")
    chosen = request.POST.getlist("scopes")
    try:
        made = keys.create_key(
            client_name=name,
            scopes=chosen,
            created_by=request.user,  # type: ignore[arg-type]
            context=audit.AuditContext.from_request(request),
        )
    except keys.Invalid as exc:
        return _page(request, status=400, error=str(exc), client_name=name[:64], chosen=chosen)
    response = TemplateResponse(request, "api/key_created.html", {"made": made, "nav": "api_keys"})
    response["Cache-Control"] = "no-store"
    return response


@permission_required(ADMIN, raise_exception=True)
@require_POST
def revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    revoked = keys.revoke_key(
        key_id=key_id,
        revoked_by=request.user,  # type: ignore[arg-type]
        context=audit.AuditContext.from_request(request),
    )
    if revoked is None:
        messages.info(request, "That key was already revoked (or does not exist).")
    else:
        messages.success(
            request, f"Key {revoked.display} of {revoked.client.name} revoked: it now gets 401."
        )
    return redirect("api_keys")
