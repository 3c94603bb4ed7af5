"""The Webhooks page (admins only): endpoints, recent deliveries and attempts, and the actions.

Every action is a POST form with CSRF that works without JavaScript; with htmx the endpoint's or
the delivery's row is swapped in place. A new or rotated secret is rendered into the answer to
the POST that made it, never redirected through a URL or the session, and never shown again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ImproperlyConfigured
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from moderation import limits
from moderation.audit import log as audit
from moderation.events.models import Event

from . import schedule, services
from .models import Attempt, Delivery, Endpoint

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    class HtmxHttpRequest(HttpRequest):
        htmx: HtmxDetails


ADMIN = "moderation.change_image"
ENDPOINTS_MAX = 200
RECENT = 50
ACTIONS = {"enable", "disable", "rotate"}


def _vary(response: HttpResponse) -> HttpResponse:
    patch_vary_headers(response, ["HX-Request"])
    return response


def _page(request: HttpRequest, *, status: int = 200, **extra: Any) -> TemplateResponse:
    selected: Endpoint | None = None
    raw = request.GET.get("endpoint", "")
    if raw.isdigit() and len(raw) <= 18:
        selected = Endpoint.objects.filter(pk=int(raw)).first()
    deliveries = Delivery.objects.recent()
    attempts = Attempt.objects.select_related("delivery__event", "endpoint").order_by("-id")
    if selected is not None:
        deliveries = deliveries.filter(endpoint=selected)
        attempts = attempts.filter(endpoint=selected)
    context: dict[str, Any] = {
        "endpoints": Endpoint.objects.select_related("created_by")[:ENDPOINTS_MAX],
        "deliveries": deliveries[:RECENT],
        "attempts": attempts[:RECENT],
        "selected": selected,
        "event_types": Event.Type.choices,
        "max_attempts": schedule.MAX_ATTEMPTS,
        "retry_schedule": schedule.describe(),
        "limits": limits,
        "description_max": services.DESCRIPTION_MAX,
        "form": {"url": "", "description": "", "event_types": []},
        "nav": "webhooks",
        **extra,
    }
    return TemplateResponse(request, "webhooks/page.html", context, status=status)


# Never stored by the browser or a proxy: the answers to adding an endpoint and to rotating
# its secret carry the secret, shown once (the API keys page does the same for a new key).
@permission_required(ADMIN, raise_exception=True)
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def webhooks(request: HttpRequest) -> HttpResponse:
    """The page; a POST registers an endpoint and shows its secret once."""
    if request.method != "POST":
        return _page(request)
    url = request.POST.get("url", "")
    description = request.POST.get("description", "")
    event_types = request.POST.getlist("event_types")
    form = {"url": url, "description": description, "event_types": event_types}
    try:
        created = services.add_endpoint(
            url=url,
            event_types=event_types,
            description=description,
            actor=request.user,
            context=audit.AuditContext.from_request(request),
        )
    except services.WebhookError as exc:
        return _page(request, status=400, form=form, form_error=str(exc))
    except ImproperlyConfigured as exc:
        return _page(request, status=503, form=form, form_error=str(exc))
    return _page(request, status=201, secret=created.secret, secret_for=created.endpoint)


@permission_required(ADMIN, raise_exception=True)
@never_cache
@require_POST
def endpoint_action(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Enable, disable or rotate the secret of one endpoint (the `action` button's value)."""
    action = request.POST.get("action", "")
    if action not in ACTIONS:
        return _vary(
            HttpResponse(
                "Unknown action: choose enable, disable or rotate.",
                status=400,
                content_type="text/plain; charset=utf-8",
            )
        )
    context = audit.AuditContext.from_request(request)
    secret = ""
    status = 200
    try:
        if action == "rotate":
            rotated = services.rotate_secret(endpoint_id=pk, actor=request.user, context=context)
            endpoint, secret = rotated.endpoint, rotated.secret
            message = f"New secret for endpoint {pk}; the old one no longer verifies."
        else:
            endpoint = services.set_enabled(
                endpoint_id=pk, enabled=action == "enable", actor=request.user, context=context
            )
            message = f"Endpoint {pk} {action}d."
    except Endpoint.DoesNotExist:
        raise Http404("No such endpoint.") from None
    except services.Conflict as exc:
        endpoint = Endpoint.objects.get(pk=pk)
        message, status = str(exc), 409
    except ImproperlyConfigured as exc:  # no WEBHOOK_SECRET_KEY: nothing was changed
        return _vary(HttpResponse(str(exc), status=503, content_type="text/plain; charset=utf-8"))
    if request.htmx:
        return _vary(
            TemplateResponse(
                request,
                "webhooks/page.html#endpoint",
                {"endpoint": endpoint, "row_secret": secret, "row_message": message},
                status=status,
            )
        )
    if secret:  # the full page, with the secret shown this once
        return _vary(_page(request, secret=secret, secret_for=endpoint))
    (messages.error if status == 409 else messages.success)(request, message)
    return _vary(redirect("webhooks"))


@permission_required(ADMIN, raise_exception=True)
@require_POST
def delivery_resend(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Give a failed delivery a new series of attempts."""
    status = 200
    try:
        delivery = services.resend(
            delivery_id=pk, actor=request.user, context=audit.AuditContext.from_request(request)
        )
        message = "Queued again: the worker sends it now."
    except Delivery.DoesNotExist:
        raise Http404("No such delivery.") from None
    except services.Conflict as exc:
        delivery = Delivery.objects.select_related("event", "endpoint").get(pk=pk)
        message, status = str(exc), 409
    if request.htmx:
        return _vary(
            TemplateResponse(
                request,
                "webhooks/page.html#delivery",
                {
                    "delivery": delivery,
                    "row_message": message,
                    "max_attempts": schedule.MAX_ATTEMPTS,
                },
                status=status,
            )
        )
    (messages.error if status == 409 else messages.success)(request, f"Delivery {pk}: {message}")
    return _vary(redirect("webhooks"))
