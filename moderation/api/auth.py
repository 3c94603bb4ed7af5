"""Bearer keys for the API: who is asking (401), whether they are over their rate (429), and
whether their key holds the operation's scope (403), in that order."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer

from . import keys, ratelimit
from .errors import ApiError
from .models import ApiKey


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer mk_...`, holding `scope`. No session, no cookie: a signed-in
    browser's session is not a key, so it gets 401 here (no CSRF to forge)."""

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    def __call__(self, request: HttpRequest) -> Any:
        # ninja's own __call__ logs a malformed header under DEBUG, key and all: not here.
        token = keys.bearer_token(request.headers.get("Authorization", ""))
        if token is None:
            return None
        return self.authenticate(request, token)

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        key = request_key(request, token)
        if key is None:
            return None
        verdict = ratelimit.count_request(key.client)
        if not verdict.allowed:
            raise ApiError(
                429,
                "rate_limited",
                f"Over this client's limit of requests a minute; try again in "
                f"{verdict.retry_after} s.",
                headers={"Retry-After": str(verdict.retry_after)},
            )
        if not key.allows(self.scope):
            raise ApiError(403, "forbidden", f"This key does not hold the '{self.scope}' scope.")
        keys.touch(key)
        return key


def request_key(request: HttpRequest, token: str | None = None) -> ApiKey | None:
    """The live key a request carries, looked up once per request (the body-size middleware
    asks before the view does)."""
    if hasattr(request, "_api_key"):
        cached: ApiKey | None = request._api_key
        return cached
    if token is None:
        token = keys.bearer_token(request.headers.get("Authorization", ""))
    key = keys.find(token) if token else None
    request._api_key = key  # type: ignore[attr-defined]
    return key


submit = ApiKeyAuth(ApiKey.Scope.SUBMIT)
read = ApiKeyAuth(ApiKey.Scope.READ)
