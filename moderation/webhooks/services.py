"""What admins do to webhooks, each change with its audit entry in the same transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from moderation.audit import log as audit
from moderation.events.models import Event

from . import signing, transport
from .context_processors import forget_banner
from .models import URL_MAX, Delivery, Endpoint, new_salt

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    Actor = User | AnonymousUser | None

DESCRIPTION_MAX = 200


class WebhookError(ValueError):
    """A request an admin made that cannot be done, with a message to show them."""


class Conflict(WebhookError):
    """The thing changed meanwhile (already enabled, no longer failed...)."""


@dataclass(frozen=True)
class NewEndpoint:
    endpoint: Endpoint
    # Shown once, to the admin who registered it; never stored or logged.
    secret: str


def parse_event_types(raw: Iterable[str]) -> list[str]:
    """Event types from a form or the command line; refuses an unknown one by name."""
    types = [value.strip() for value in raw if value.strip()]
    unknown = [value for value in types if value not in Event.Type.values]
    if unknown:
        raise WebhookError(
            f"unknown event type {unknown[0]!r}; known: {', '.join(Event.Type.values)}"
        )
    return sorted(set(types), key=Event.Type.values.index)


def add_endpoint(
    *,
    url: str,
    event_types: Iterable[str] = (),
    description: str = "",
    actor: Actor,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
) -> NewEndpoint:
    """Register an endpoint; its secret is returned once. Refuses a URL webhooks may not reach
    (transport.check_destination resolves it now; every send checks again)."""
    url = url.strip()
    description = description.strip()
    if not url:
        raise WebhookError("Give the endpoint's URL.")
    if len(url) > URL_MAX:
        raise WebhookError(f"The URL is longer than {URL_MAX} characters.")
    if len(description) > DESCRIPTION_MAX:
        raise WebhookError(f"The description is longer than {DESCRIPTION_MAX} characters.")
    types = parse_event_types(event_types)
    try:
        transport.check_destination(url)
    except transport.RefusedDestination as exc:
        raise WebhookError(f"Refused: {exc}.") from None
    signing.require_key()  # before writing anything: no endpoint without a secret
    with transaction.atomic():
        endpoint = Endpoint.objects.create(
            url=url,
            event_types=types,
            description=description,
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        audit.record(
            action="webhook.endpoint_added",
            actor=actor,
            detail={"endpoint": endpoint.pk, "url": url, "event_types": types},
            context=context,
        )
    return NewEndpoint(endpoint, signing.secret(endpoint))


def set_enabled(
    *,
    endpoint_id: int,
    enabled: bool,
    actor: Actor,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
) -> Endpoint:
    """Enable or disable an endpoint. Enabling clears its failure record, so the worker tries
    its waiting deliveries again at once."""
    now = timezone.now()
    with transaction.atomic():
        endpoint = Endpoint.objects.select_for_update().get(pk=endpoint_id)
        if endpoint.enabled == enabled:
            raise Conflict(f"The endpoint is already {'enabled' if enabled else 'disabled'}.")
        endpoint.enabled = enabled
        if enabled:
            endpoint.disabled_reason = ""
            endpoint.disabled_at = None
            endpoint.disabled_automatically = False
            endpoint.consecutive_failures = 0
            endpoint.failing_since = None
            endpoint.paused_until = None
        else:
            endpoint.disabled_reason = "Disabled by an admin."
            endpoint.disabled_at = now
            endpoint.disabled_automatically = False
        endpoint.save()
        # The admins' banner lists auto-disabled endpoints from a cache; this one changed.
        forget_banner()
        audit.record(
            action="webhook.endpoint_enabled" if enabled else "webhook.endpoint_disabled",
            actor=actor,
            detail={"endpoint": endpoint.pk, "url": endpoint.url},
            context=context,
        )
    return endpoint


def rotate_secret(
    *,
    endpoint_id: int,
    actor: Actor,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
) -> NewEndpoint:
    """A new salt, so a new secret (returned once); the old one stops verifying at once."""
    signing.require_key()
    with transaction.atomic():
        endpoint = Endpoint.objects.select_for_update().get(pk=endpoint_id)
        endpoint.secret_salt = new_salt()
        endpoint.secret_rotated_at = timezone.now()
        endpoint.save(update_fields=["secret_salt", "secret_rotated_at"])
        audit.record(
            action="webhook.secret_rotated",
            actor=actor,
            detail={"endpoint": endpoint.pk, "url": endpoint.url},
            context=context,
        )
    return NewEndpoint(endpoint, signing.secret(endpoint))


def resend(
    *,
    delivery_id: int,
    actor: Actor,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
) -> Delivery:
    """Give a failed delivery a new series of attempts, starting now."""
    with transaction.atomic():
        updated = Delivery.objects.filter(pk=delivery_id, state=Delivery.State.FAILED).update(
            state=Delivery.State.PENDING,
            attempts=0,
            next_attempt_at=timezone.now(),
            leased_by="",
            leased_until=None,
        )
        if not updated:
            if not Delivery.objects.filter(pk=delivery_id).exists():
                raise Delivery.DoesNotExist
            raise Conflict("Only a failed delivery can be resent; this one is not failed now.")
        delivery = Delivery.objects.select_related("event", "endpoint").get(pk=delivery_id)
        audit.record(
            action="webhook.delivery_resent",
            actor=actor,
            image=delivery.event.image,
            detail={
                "delivery": delivery.pk,
                "event": delivery.event.public_id,
                "endpoint": delivery.endpoint_id,
            },
            context=context,
        )
    return delivery
