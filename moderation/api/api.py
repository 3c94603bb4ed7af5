"""The versioned API, /api/v1/: one NinjaAPI, one router per resource.

A resource is added with one line in ROUTERS. Every view is wrapped (`urlpatterns`) so that the
site's sign-in requirement leaves it to the API's own keys, and so that a wrong method gets the
API's error shape rather than ninja's plain-text 405.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, URLResolver, re_path
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI, Router
from ninja.openapi.docs import DocsBase

from . import decisions, errors, images

# (prefix, router): the API's resources. The decisions feed joins here.
ROUTERS: list[tuple[str, Router]] = [
    ("/images", images.router),
    ("/decisions", decisions.router),
]


class LocalDocs(DocsBase):
    """Swagger UI from our own static files (ninja's copy), started by a static script: no CDN,
    no inline script or style, so it works offline and under the site's CSP."""

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        return render(
            request,
            "api/docs.html",
            {"api": api, "openapi_url": self.get_openapi_url(api, kwargs)},
        )


api = NinjaAPI(
    title="IMM moderation API",
    version="1",
    description=(
        "Submit images for moderation and read their outcomes. Authenticate every call with "
        "`Authorization: Bearer <key>` (an admin makes keys on the API keys page or with "
        "`manage.py create_api_key`). Errors are always "
        '`{"error": {"code": ..., "message": ..., "field": ...}}`.'
    ),
    urls_namespace="api-v1",
    docs=LocalDocs(),
    openapi_extra={"info": {"x-rate-limit": "API_RATE_LIMIT requests a minute per client"}},
)
errors.install(api)
for prefix, router in ROUTERS:
    api.add_router(prefix, router)


def _api_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        if response.status_code == 405 and "json" not in response.get("Content-Type", ""):
            allowed = response.get("Allow", "")
            json_response = errors.error_response(
                405, "method_not_allowed", f"This path answers {allowed} only."
            )
            json_response["Allow"] = allowed
            return json_response
        return response

    # Keys, not sessions: no sign-in redirect, and no CSRF (a browser's cookie is no key).
    return login_not_required(csrf_exempt(wrapped))


def _wrapped(patterns: list[Any]) -> list[Any]:
    for pattern in patterns:
        if isinstance(pattern, URLPattern):
            pattern.callback = _api_view(pattern.callback)
        elif isinstance(pattern, URLResolver):
            _wrapped(pattern.url_patterns)
    return patterns


@login_not_required
@csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return errors.error_response(404, "not_found", "There is no such API path.")


_patterns, _app_name, _namespace = api.urls
# For include() in moderation/urls.py, at /api/v1/.
urls = (_wrapped(list(_patterns)), _app_name, _namespace)
# Last under /api/: any other path gets a 404 in the API's shape, not the site's page.
catch_all = re_path(r"^api/(?P<rest>.*)$", not_found)
