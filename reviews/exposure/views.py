from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from moderation import limits as text_limits
from moderation.audit import log as audit
from moderation.routing import SCENE_CATEGORIES

from . import breaks, counting, limits, services
from .models import MAX_CAP, ExposureCap, ExposureCount

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    class AuthedRequest(HttpRequest):
        user: User


ADMIN = "moderation.change_image"
REVIEW = "moderation.review_image"
RANGES = {"1": "Today", "7": "7 days", "30": "30 days"}
# The page lists at most this many reviewer-day-category rows (30 days of a large team).
ROW_LIMIT = 3000


@permission_required(ADMIN, raise_exception=True)
@require_http_methods(["GET", "HEAD", "POST"])
def exposure(request: AuthedRequest) -> HttpResponse:
    """Admins: clear images shown per reviewer, day and category, and the daily caps."""
    if request.method != "POST":
        days = request.GET.get("days", "7")
        if days not in RANGES:
            return _page(request, "7", status=400, error="Choose a range: today, 7 or 30 days.")
        return _page(request, days)
    context = audit.AuditContext.from_request(request)
    if "remove" in request.POST:
        category = request.POST["remove"]
        if services.remove_cap(category=category, actor=request.user, context=context) is None:
            return _page(request, "7", status=404, error="There is no such limit any more.")
        messages.success(request, f"Daily limit for {category or 'the default'} removed.")
        return redirect("exposure")
    try:
        cap = services.set_cap(
            category=request.POST.get("category", ""),
            images=request.POST.get("images", ""),
            actor=request.user,
            context=context,
        )
    except services.Invalid as error:
        return _page(request, "7", status=400, error=str(error), posted=request.POST)
    messages.success(request, f"{cap.category or 'Default'}: at most {cap.images} images a day.")
    return redirect("exposure")


def _page(
    request: AuthedRequest, days: str, *, status: int = 200, error: str = "", posted: object = None
) -> HttpResponse:
    today = counting.day_of(timezone.now())
    since = today - timedelta(days=int(days) - 1)
    counts = ExposureCount.objects.filter(day__gte=since)
    rows = list(
        counts.annotate(shown=counting.TOTAL)
        .values(
            "reviewer__username", "day", "category", "previews", "thumbnails", "originals", "shown"
        )
        .order_by("-day", "reviewer__username", "category")[: ROW_LIMIT + 1]
    )
    totals = list(
        counts.values("reviewer__username")
        .annotate(shown=Sum(counting.TOTAL))
        .order_by("-shown", "reviewer__username")[:200]
    )
    caps = list(ExposureCap.objects.select_related("updated_by"))
    return TemplateResponse(
        request,
        "exposure/exposure.html",
        {
            "rows": rows[:ROW_LIMIT],
            "cut": len(rows) > ROW_LIMIT,
            "totals": totals,
            "days": days,
            "ranges": RANGES,
            "since": since,
            "default_cap": next((c for c in caps if not c.category), None),
            "caps": [c for c in caps if c.category],
            "scenes": SCENE_CATEGORIES,
            "limits": text_limits,
            "max_cap": MAX_CAP,
            "error": error,
            "posted": posted or {},
            "nav": "exposure",
        },
        status=status,
    )


@permission_required(REVIEW, raise_exception=True)
@require_http_methods(["GET", "HEAD", "POST"])
def mine(request: AuthedRequest) -> HttpResponse:
    """A reviewer's own exposure today, the limits that apply, and the categories they opt out
    of (Start reviewing never hands them those)."""
    status, error = 200, ""
    if request.method == "POST":
        try:
            added, removed = services.set_opt_outs(
                reviewer=request.user,
                categories=request.POST.getlist("opt_out"),
                context=audit.AuditContext.from_request(request),
            )
        except services.Invalid as exc:
            status, error = 400, str(exc)
        else:
            messages.success(
                request,
                "Saved." if added or removed else "Nothing changed.",
            )
            return redirect("exposure_mine")
    known = [label for labels in SCENE_CATEGORIES.values() for label in labels]
    mine = limits.standing(request.user.pk, now=timezone.now())
    return TemplateResponse(
        request,
        "exposure/mine.html",
        {
            "shown": [(name, n, mine.cap(name)) for name, n in sorted(mine.shown.items())],
            "reached": mine.reached,
            "choices": sorted(set(known) | mine.opted_out, key=str.lower),
            "opted": mine.opted_out,
            "error": error,
            "nav": "queue",
        },
        status=status,
    )


@permission_required(REVIEW, raise_exception=True)
@require_POST
def dismiss_break(request: AuthedRequest) -> HttpResponse:
    """Dismiss the break reminder: it returns after another stretch of continuous reviewing."""
    request.session[breaks.SESSION_KEY] = timezone.now().isoformat()
    if request.htmx:  # type: ignore[attr-defined]
        return HttpResponse("")
    target = request.POST.get("next", "")
    if not (target.startswith("/") and url_has_allowed_host_and_scheme(target, allowed_hosts=None)):
        target = reverse("review_queue")
    return redirect(target)


def break_due(request: HttpRequest) -> bool:
    """Whether to show this user the break reminder now (for the queue page and the pane)."""
    raw = request.session.get(breaks.SESSION_KEY)
    dismissed = None
    if isinstance(raw, str):
        try:
            dismissed = datetime.fromisoformat(raw)
        except ValueError:
            dismissed = None
    user_id = request.user.pk
    return user_id is not None and breaks.due(user_id, dismissed_at=dismissed)
