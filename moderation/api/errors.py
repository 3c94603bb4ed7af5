"""The API's one error shape, `{"error": {"code", "message", "field"?}}`, for every error.

ApiError is what the API's own code raises; `install` turns ninja's errors (validation, auth,
unknown routes and methods) and Django's (a body too large, too many parts) into the same shape,
and anything unexpected into a 500 that says nothing of the request (its headers hold the key).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFilesSent
from django.http import Http404, HttpRequest, JsonResponse
from ninja import Schema
from ninja.errors import AuthenticationError, AuthorizationError, HttpError, ValidationError
from pydantic import Field

if TYPE_CHECKING:
    from ninja import NinjaAPI

logger = logging.getLogger(__name__)

# Where every API path starts: errors under it are answered in this shape, not as pages.
PATH_PREFIX = "/api/"


class ErrorDetail(Schema):
    code: str
    message: str
    field: str | None = None
    rule: str | None = Field(
        None, description="For a refused image: the intake rule it broke (format, size, ...)."
    )


class ErrorOut(Schema):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field = field
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    detail: dict[str, Any] = {"code": code, "message": message}
    if field:
        detail["field"] = field
    response = JsonResponse({"error": detail}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


# The codes of statuses answered outside the API's own code (middleware, ninja, Django).
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
}


def for_status(status: int, message: str) -> JsonResponse:
    return error_response(status, STATUS_CODES.get(status, "error"), message)


def _field(location: Any) -> str | None:
    # ninja's loc is ("form", "external_id"), ("query", "limit"), ("path", "image_id"), ...;
    # a missing file is ("file", "file"); a whole-body error has no field.
    parts = [str(p) for p in list(location or ())[1:]]
    return parts[-1] if parts else None


def install(api: NinjaAPI) -> None:
    """Answer every error the API can meet in the one shape."""

    @api.exception_handler(ApiError)
    def api_error(request: HttpRequest, exc: ApiError) -> JsonResponse:
        return error_response(
            exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers
        )

    @api.exception_handler(ValidationError)
    def validation(request: HttpRequest, exc: ValidationError) -> JsonResponse:
        first = exc.errors[0] if exc.errors else {}
        field = _field(first.get("loc"))
        message = str(first.get("msg") or "the request is not valid")
        if field:
            message = f"{field}: {message}"
        return error_response(422, "invalid", message, field=field)

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> JsonResponse:
        return error_response(
            401,
            "unauthorized",
            "Send a valid, unrevoked API key as 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )

    @api.exception_handler(AuthorizationError)
    def forbidden(request: HttpRequest, exc: AuthorizationError) -> JsonResponse:
        return error_response(403, "forbidden", exc.message)

    @api.exception_handler(Http404)
    def not_found(request: HttpRequest, exc: Http404) -> JsonResponse:
        return error_response(404, "not_found", str(exc) or "Not found.")

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, exc: HttpError) -> JsonResponse:
        return for_status(exc.status_code, exc.message)

    @api.exception_handler(RequestDataTooBig)
    def too_big(request: HttpRequest, exc: RequestDataTooBig) -> JsonResponse:
        return error_response(
            413, "too_large", "A form field other than the file is larger than allowed."
        )

    @api.exception_handler(TooManyFilesSent)
    def too_many_files(request: HttpRequest, exc: TooManyFilesSent) -> JsonResponse:
        return error_response(413, "too_large", "The request carries too many files.")

    @api.exception_handler(SuspiciousOperation)
    def suspicious(request: HttpRequest, exc: SuspiciousOperation) -> JsonResponse:
        # A malformed multipart body, a bad header: the client's fault, said plainly.
        return error_response(400, "bad_request", "The request could not be parsed.")

    @api.exception_handler(Exception)
    def unexpected(request: HttpRequest, exc: Exception) -> JsonResponse:
        # Logged with the path only: the request's headers carry the client's key.
        logger.error(
            "API error on %s %s: %s",
            request.method,
            request.path,
            type(exc).__name__,
            exc_info=exc,
        )
        return error_response(500, "internal", "Something went wrong on our side; try again.")
