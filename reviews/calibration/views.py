"""The IMM calibration page (admins): agreement by category and rate band, and rate thresholds
for routing rules with a backtest before they are saved."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST, require_safe

from moderation import routing
from moderation.audit import log as audit
from moderation.models import RoutingRule

from . import backtest, figures, rollups

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse, QueryDict
    from django_htmx.middleware import HtmxDetails

    class HtmxHttpRequest(HttpRequest):
        htmx: HtmxDetails


ADMIN = "moderation.change_image"
RANGES = (7, 30, 90)  # days of decisions and uploads the page reads; bounded, so it stays fast
DEFAULT_DAYS = 30


class BadRequest(ValueError):
    pass


def _days(query: QueryDict) -> int:
    raw = query.get("days", str(DEFAULT_DAYS))
    if raw not in {str(days) for days in RANGES}:
        raise BadRequest(f"The range is one of {', '.join(map(str, RANGES))} days.")
    return int(raw)


@permission_required(ADMIN, raise_exception=True)
@require_safe
def calibration(request: HtmxHttpRequest) -> HttpResponse:
    """The page; with a category and thresholds in the query, their backtest too (for htmx,
    the backtest alone)."""
    context: dict[str, Any] = {"form": request.GET}
    status = 200
    try:
        days = _days(request.GET)
    except BadRequest as exc:
        days, status = DEFAULT_DAYS, 400
        context["range_error"] = str(exc)
    since = rollups.range_start(days)
    ready = context["ready"] = rollups.is_ready()
    if "category" in request.GET:
        try:
            thresholds = routing.parse_thresholds(
                category=request.GET.get("category", ""),
                approve_below=request.GET.get("approve_below", ""),
                reject_from=request.GET.get("reject_from", ""),
            )
        except ValueError as exc:
            status = 400
            context["error"] = str(exc)
        else:
            if ready:
                context["backtest"] = backtest.run(
                    category=request.GET["category"], thresholds=thresholds, since=since
                )
    if request.htmx and "category" in request.GET:
        return _render(request, "calibration/page.html#backtest", {**context, "days": days}, status)
    return _page(request, {**context, "days": days}, status, since=since)


def _page(
    request: HttpRequest, context: dict[str, Any], status: int, *, since: datetime
) -> HttpResponse:
    if "ready" not in context:
        context["ready"] = rollups.is_ready()
    context.update(
        tables=figures.agreement(since=since) if context["ready"] else [],
        rules=RoutingRule.objects.exclude(approve_below=None, reject_from=None),
        ranges=RANGES,
        categories=routing.IMM_LABELS,
        nav="calibration",
    )
    return _render(request, "calibration/page.html", context, status)


def _render(
    request: HttpRequest, template: str, context: dict[str, Any], status: int
) -> HttpResponse:
    response = TemplateResponse(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


@permission_required(ADMIN, raise_exception=True)
@require_POST
def thresholds(request: HttpRequest) -> HttpResponse:
    """Save a category's thresholds (as previewed), or remove a rule; both audited."""
    context = audit.AuditContext.from_request(request)
    if "remove" in request.POST:
        removed = routing.remove_rule(
            rule_id=request.POST["remove"], actor=request.user, context=context
        )
        if removed is None:
            return _page(
                request,
                {"days": DEFAULT_DAYS, "form": {}, "error": "There is no such rule."},
                404,
                since=rollups.range_start(DEFAULT_DAYS),
            )
        messages.success(request, f"Rule for “{removed}” removed.")
        return redirect("calibration")
    category = request.POST.get("category", "")
    try:
        saved = routing.set_thresholds(
            category=category,
            thresholds=routing.parse_thresholds(
                category=category,
                approve_below=request.POST.get("approve_below", ""),
                reject_from=request.POST.get("reject_from", ""),
            ),
            actor=request.user,
            context=context,
        )
    except ValueError as exc:
        return _page(
            request,
            {"days": DEFAULT_DAYS, "form": request.POST, "error": str(exc)},
            400,
            since=rollups.range_start(DEFAULT_DAYS),
        )
    messages.success(
        request,
        f"Saved: new IMM results naming “{saved.category}” are decided by rate; "
        f"people decide rates {saved.band_text}.",
    )
    return redirect("calibration")
