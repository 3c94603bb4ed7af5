"""Endpoint secrets and signatures, as the Standard Webhooks specification defines them.

No secret is stored: an endpoint's `whsec_...` secret is derived on demand as
base64(HMAC-SHA256(WEBHOOK_SECRET_KEY, "<endpoint id>:<salt>")), the salt being random per
endpoint and kept in its row. So a copy of the database alone signs nothing, rotating a secret
is a new salt, and changing WEBHOOK_SECRET_KEY changes every endpoint's secret at once.

Signing uses the `standardwebhooks` package, the same code receivers verify with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from standardwebhooks.webhooks import Webhook

from .models import Endpoint


def _key() -> bytes:
    key = settings.WEBHOOK_SECRET_KEY
    if not key:
        raise ImproperlyConfigured(
            "WEBHOOK_SECRET_KEY is not set (or WEBHOOK_SECRET_KEY_FILE): webhook secrets are "
            "derived from it. `make run` and `make serve` generate one; see .env.example."
        )
    return str(key).encode()


def require_key() -> None:
    """Raise ImproperlyConfigured unless WEBHOOK_SECRET_KEY is set."""
    _key()


def secret_bytes(endpoint: Endpoint) -> bytes:
    if endpoint.pk is None:
        raise ValueError("an endpoint has a secret once it is saved (the id is part of it)")
    message = f"{endpoint.pk}:{endpoint.secret_salt}".encode()
    return hmac.new(_key(), message, hashlib.sha256).digest()


def secret(endpoint: Endpoint) -> str:
    """The endpoint's secret as receivers configure it: `whsec_` and base64 of 32 bytes."""
    return "whsec_" + base64.b64encode(secret_bytes(endpoint)).decode()


def body(data: Any) -> bytes:
    """The request body for an event's payload: compact JSON, UTF-8."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Signer:
    """Signs messages for one endpoint (the secret derived once, not per message)."""

    webhook: Webhook

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint) -> Signer:
        return cls(Webhook(secret_bytes(endpoint)))

    def headers(
        self, *, msg_id: str, payload: bytes, now: datetime | None = None
    ) -> dict[str, str]:
        """The three Standard Webhooks headers for `payload` sent as message `msg_id`."""
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        signature = self.webhook.sign(msg_id=msg_id, timestamp=moment, data=payload.decode())
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signature,
        }
