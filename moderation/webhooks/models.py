from __future__ import annotations

import secrets
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from moderation.events.models import Event

from .schedule import MAX_ATTEMPTS

URL_MAX = 2000
RESPONSE_HEAD_BYTES = 200


def new_salt() -> str:
    return secrets.token_hex(16)


class EndpointQuerySet(models.QuerySet["Endpoint"]):
    def enabled(self) -> EndpointQuerySet:
        return self.filter(enabled=True)

    def auto_disabled(self) -> EndpointQuerySet:
        """Disabled by the worker after failing continuously: the admins' banner lists them."""
        return self.filter(enabled=False, disabled_automatically=True)


class Endpoint(models.Model):
    """A receiver an admin registered. Its secret is derived (signing.py), never stored."""

    url = models.URLField(max_length=URL_MAX)
    description = models.CharField(max_length=200, blank=True)
    # Event types (Event.Type values) it receives; empty means all of them.
    event_types = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_automatically = models.BooleanField(default=False)
    # Mixed with WEBHOOK_SECRET_KEY and the id into the secret; a new salt is a new secret.
    secret_salt = models.CharField(max_length=64, default=new_salt)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Health, kept by the worker: failures in a row, since when, and the rest it takes after one.
    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"webhook endpoint {self.pk} {self.url}"

    def receives(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types

    @property
    def event_types_label(self) -> str:
        return ", ".join(self.event_types) if self.event_types else "all events"


class DeliveryQuerySet(models.QuerySet["Delivery"]):
    def due(self, now: datetime) -> DeliveryQuerySet:
        """Pending deliveries whose time has come (a lapsed lease included), to endpoints that
        are enabled and not resting after a failure."""
        return self.filter(
            state=Delivery.State.PENDING,
            next_attempt_at__lte=now,
            endpoint__enabled=True,
        ).exclude(endpoint__paused_until__gt=now)

    def recent(self) -> DeliveryQuerySet:
        return self.select_related("event", "endpoint").order_by("-id")


class Delivery(models.Model):
    """One event on its way to one endpoint: pending until an attempt gets a 2xx (delivered) or
    the last attempt fails (failed)."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="deliveries")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    # Attempts made in the current series (a resend starts a new one); MAX_ATTEMPTS at most.
    attempts = models.PositiveIntegerField(default=0)
    # When the next attempt is due. While a worker holds the lease it is the lease's end, so a
    # worker that dies mid-send leaves the delivery due again once the lease lapses.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    leased_by = models.CharField(max_length=64, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_status = models.CharField(max_length=32, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="delivery_one_per_endpoint")
        ]
        indexes = [
            # The worker's claim: only pending rows, in the order they fall due.
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_due",
                condition=models.Q(state="pending"),
            ),
            models.Index(fields=["endpoint", "-id"], name="delivery_by_endpoint"),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} of event {self.event_id} to endpoint {self.endpoint_id}"

    @property
    def max_attempts(self) -> int:
        return MAX_ATTEMPTS


class Attempt(models.Model):
    """One HTTP request of a delivery: when, what came back (or what went wrong), how long."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    attempted_at = models.DateTimeField()
    # The HTTP status, or None when no answer came; then `error` names what went wrong.
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=32, blank=True)
    latency_ms = models.PositiveIntegerField()
    # The first RESPONSE_HEAD_BYTES bytes of the answer (or of the error), as text.
    response_head = models.CharField(max_length=RESPONSE_HEAD_BYTES * 4, blank=True)
    worker = models.CharField(max_length=64, blank=True)

    class Meta:
        indexes = [models.Index(fields=["endpoint", "-id"], name="attempt_by_endpoint")]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}: {self.outcome}"

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def outcome(self) -> str:
        return str(self.status_code) if self.status_code is not None else self.error
