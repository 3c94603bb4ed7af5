"""Request bodies refused by their declared size, before anything reads them.

Django reads a request body only up to its Content-Length (WSGIRequest wraps the input in a
LimitedStream of that length; a missing or unreadable length counts as an empty body), so the
declared length bounds what can be read, and checking it here, before CSRF's process_view or a
view parses a form, means an oversized body is never read at all: not into memory, not into a
temporary file. A body sent without a length (Transfer-Encoding: chunked) would be silently
treated as empty, so it is refused with 411 instead of being half-understood.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.http.multipartparser import MultiPartParserError
from django.http.response import HttpResponseBase
from django.urls import reverse

from . import limits
from .api import errors as api_errors

API_PREFIX = api_errors.PATH_PREFIX

logger = logging.getLogger(__name__)

_View = TypeVar("_View", bound=Callable[..., HttpResponseBase])

MB = 1024 * 1024


def may_upload(request: HttpRequest) -> bool:
    """A person with the upload permission, or an API request whose key holds `submit` (the key
    is looked up from the header alone: nothing of the body is read)."""
    if request.path_info.startswith(API_PREFIX):
        from .api.auth import request_key

        key = request_key(request)
        return key is not None and key.allows("submit")
    user = request.user
    return bool(user.is_authenticated and user.has_perm("moderation.add_image"))


class RequestBodyLimitMiddleware:
    """Answers 413 to a body over REQUEST_MAX_KB from anyone who may not upload (anonymous
    clients included), and over UPLOAD_MAX_REQUEST_MB from anyone; 400 or 411 to a body whose
    size is not declared as a number. Needs request.user, so it sits after authentication."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        refusal = self.refusal(request)
        if refusal is not None:
            status, reason = refusal
            logger.warning(
                "request body refused (%s) for %s from %s: %s",
                status,
                request.path,
                request.META.get("REMOTE_ADDR"),
                reason,
            )
            if request.path_info == reverse("imm_notification"):
                return JsonResponse({"error": reason}, status=status)
            if request.path_info.startswith(API_PREFIX):
                return api_errors.for_status(status, reason)
            return HttpResponse(reason + "\n", status=status, content_type="text/plain")
        return self.get_response(request)

    def refusal(self, request: HttpRequest) -> tuple[int, str] | None:
        declared = request.META.get("CONTENT_LENGTH", "").strip()
        if not declared:
            if request.META.get("HTTP_TRANSFER_ENCODING"):
                return 411, "a request body needs a Content-Length header"
            return None
        length = limits.whole_number(declared)
        if length is None:
            return 400, "the Content-Length header is not a number of bytes"

        small = settings.REQUEST_MAX_KB * 1024
        if length <= small:
            return None
        if not may_upload(request):
            return 413, (
                f"the request body ({length / MB:.1f} MB) is larger than the "
                f"{settings.REQUEST_MAX_KB} KB accepted here"
            )
        if length > settings.UPLOAD_MAX_REQUEST_MB * MB:
            return 413, (
                f"the request body ({length / MB:.1f} MB) is larger than the "
                f"{settings.UPLOAD_MAX_REQUEST_MB} MB one upload may be: choose fewer files at once"
            )
        return None


def reads_own_body(view: _View) -> _View:
    """Mark a view that reads request.body itself; RefuseNulCharactersMiddleware leaves it."""
    view.reads_own_body = True  # type: ignore[attr-defined]
    return view


def _holds_nul(params: QueryDict) -> bool:
    return any(
        "\x00" in key or any("\x00" in value for value in values) for key, values in params.lists()
    )


class RefuseNulCharactersMiddleware:
    """Answers 400 to a query or form parameter that holds a NUL character.

    No field takes one: Django's forms refuse it and PostgreSQL cannot store it in text, so a
    reason, a note or a filter with a NUL in it would fail deep inside a transaction (a 500). The
    views read their parameters directly, so it is refused here, once for all of them. It runs as
    process_view, after the sign-in and CSRF checks, so only requests otherwise let in are parsed.
    A view marked with reads_own_body (the IMM notification endpoint, which parses and checks its
    raw body itself) keeps its body unread: parsing a form here would consume it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: object, view_args: object, view_kwargs: object
    ) -> HttpResponse | None:
        form = request.method == "POST" and not getattr(view_func, "reads_own_body", False)
        try:
            holds_nul = _holds_nul(request.GET) or (form and _holds_nul(request.POST))
        except (MultiPartParserError, RequestDataTooBig, TooManyFilesSent) as exc:
            if not request.path_info.startswith(API_PREFIX):
                raise  # Django answers 400
            if isinstance(exc, MultiPartParserError):
                return api_errors.error_response(
                    400, "bad_request", "The multipart body could not be parsed."
                )
            return api_errors.error_response(
                413,
                "too_large",
                "A form field other than the file, or the number of files, is larger than allowed.",
            )
        if holds_nul:
            logger.warning(
                "request refused (400) for %s from %s: a parameter holds a NUL character",
                request.path,
                request.META.get("REMOTE_ADDR"),
            )
            if request.path_info.startswith(API_PREFIX):
                return api_errors.error_response(
                    400, "bad_request", "A parameter holds a NUL character, which no field accepts."
                )
            return HttpResponse(
                "a parameter holds a NUL character, which no field accepts\n",
                status=400,
                content_type="text/plain",
            )
        return None
