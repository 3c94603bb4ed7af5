from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from moderation import limits

# One week: a longer target is no response-time target.
MAX_MINUTES = 7 * 24 * 60


class SlaTarget(models.Model):
    """How many minutes an item of `category` may wait for a person; category "" is the default."""

    category = models.CharField(max_length=limits.CATEGORY_MAX, unique=True, blank=True)
    minutes = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_MINUTES)]
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["category"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(minutes__gte=1, minutes__lte=MAX_MINUTES),
                name="sla_minutes_in_range",
            )
        ]

    def __str__(self) -> str:
        return f"{self.category or 'default'}: {self.minutes} min"


class SlaDue(models.Model):
    """When a waiting image is due: one row per image in the review queue, kept by reviews.sla.due.

    A table of its own, indexed on the due time, so the queue can be read in due order a page
    at a time (an index scan) instead of computing every waiting item's target per request.
    due_at is empty when no target applies (no default and none for its categories).
    """

    image = models.OneToOneField(
        "moderation.Image", on_delete=models.CASCADE, primary_key=True, related_name="sla_due"
    )
    due_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["due_at", "image"], name="sla_due_order")]

    def __str__(self) -> str:
        return f"image {self.image_id} due {self.due_at or 'never'}"
