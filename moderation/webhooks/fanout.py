"""The outbox's second half: an event's deliveries, written with the event."""

from __future__ import annotations

from typing import Any

from moderation.events.models import Event

from .models import Delivery, Endpoint


def on_event_saved(sender: type[Event], instance: Event, created: bool, **kwargs: Any) -> None:
    """post_save on Event: one pending delivery per enabled endpoint that receives its type.

    It runs in the transaction that writes the event (emit() refuses to run outside one), so
    the deliveries commit or roll back with the change the event reports.
    """
    if not created or kwargs.get("raw"):
        return
    endpoints = Endpoint.objects.enabled().only("id", "event_types")
    deliveries = [
        Delivery(event=instance, endpoint=endpoint)
        for endpoint in endpoints
        if endpoint.receives(instance.type)
    ]
    if deliveries:
        Delivery.objects.bulk_create(deliveries)
