from __future__ import annotations

from django.db import models
from django.utils import timezone

from moderation.models import Image


class EventQuerySet(models.QuerySet["Event"]):
    def for_images(self, images: models.QuerySet[Image]) -> EventQuerySet:
        """Events of these images only (an API client's), as a subquery: the feed's order and
        its guarantees hold for any subset of the images."""
        return self.filter(image__in=images.values("pk"))


class Event(models.Model):
    """One final outcome of an image, or one later change to it (see `emit`)."""

    class Type(models.TextChoices):
        APPROVED = "image.approved", "Approved"
        REJECTED = "image.rejected", "Rejected"
        ESCALATED = "image.escalated", "Escalated"
        UNDONE = "image.undone", "Undone"
        REOPENED = "image.reopened", "Reopened"
        OVERRIDDEN = "image.overridden", "Overridden"

    # The id receivers deduplicate on (Standard Webhooks' `webhook-id`): `evt_` and 26 base32 chars.
    public_id = models.CharField(max_length=40, unique=True)
    type = models.CharField(max_length=32, choices=Type.choices)
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="events")
    # 1, 2, 3... per image, in the order the image's changes committed (they hold its row lock).
    sequence = models.PositiveIntegerField()
    # The payload exactly as the feed and webhooks send it.
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    # PostgreSQL: the id of the transaction that wrote the row (pg_current_xact_id), or the
    # image's previous event's if larger, which orders the feed without gaps and keeps each
    # image's events in commit order (feed.py). Empty on SQLite, where one writer at a time makes
    # id order the commit order.
    txid = models.BigIntegerField(null=True, blank=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["image", "sequence"], name="event_one_per_image_sequence"
            )
        ]
        indexes = [models.Index(fields=["txid", "id"], name="event_feed_order")]

    def __str__(self) -> str:
        return f"{self.public_id} {self.type} image {self.image_id} #{self.sequence}"
