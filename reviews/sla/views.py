from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_http_methods

from moderation import limits
from moderation.audit import log as audit
from moderation.routing import SCENE_CATEGORIES

from . import services
from .models import MAX_MINUTES, SlaTarget

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    class AuthedRequest(HttpRequest):
        user: User


ADMIN = "moderation.change_image"


@permission_required(ADMIN, raise_exception=True)
@require_http_methods(["GET", "HEAD", "POST"])
def targets(request: AuthedRequest) -> HttpResponse:
    """Admins: the default response-time target and one per category (add, change, remove)."""
    if request.method != "POST":
        return _page(request)
    context = audit.AuditContext.from_request(request)
    if "remove" in request.POST:
        category = request.POST["remove"]
        minutes = services.remove_target(category=category, actor=request.user, context=context)
        if minutes is None:
            return _page(request, status=404, error="There is no such target any more.")
        messages.success(request, f"Target for {category or 'the default'} removed.")
        return redirect("sla_targets")
    category = request.POST.get("category", "")
    try:
        target = services.set_target(
            category=category,
            minutes=request.POST.get("minutes", ""),
            actor=request.user,
            context=context,
        )
    except services.Invalid as error:
        return _page(request, status=400, error=str(error), posted=request.POST)
    messages.success(
        request, f"{target.category or 'Default'}: {target.minutes} minutes. Due times updated."
    )
    return redirect("sla_targets")


def _page(
    request: AuthedRequest, *, status: int = 200, error: str = "", posted: object = None
) -> HttpResponse:
    rows = list(SlaTarget.objects.select_related("updated_by"))
    return TemplateResponse(
        request,
        "sla/targets.html",
        {
            "default": next((t for t in rows if not t.category), None),
            "categories": [t for t in rows if t.category],
            "scenes": SCENE_CATEGORIES,
            "limits": limits,
            "max_minutes": MAX_MINUTES,
            "error": error,
            "posted": posted or {},
            "nav": "sla",
        },
        status=status,
    )
