"""Reviewer exposure: how many times each person saw clear pixels, per day and category, and the
limits admins and reviewers set on it."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from moderation import limits

# More than this many images of one category a day is no limit.
MAX_CAP = 10_000


class ExposureCount(models.Model):
    """How many times `reviewer` was shown clear pixels of images in `category` on `day` (the
    server's TIME_ZONE calendar day), by rendition. Category "" counts images with none.

    Kept in the transaction that records each Reveal (reviews.exposure.counting), so the admins'
    page reads a few rows per reviewer and day instead of scanning reveals; each reviewer's rows
    are their own, never a row all reviewers write. A claim reads the reviewer's rows for today
    (reviews.exposure.limits.standing).
    """

    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="exposure_counts"
    )
    day = models.DateField()
    category = models.CharField(max_length=limits.CATEGORY_MAX, blank=True)
    previews = models.PositiveIntegerField(default=0)
    thumbnails = models.PositiveIntegerField(default=0)
    originals = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["reviewer", "day", "category"], name="one_exposure_count"
            )
        ]
        indexes = [models.Index(fields=["day", "reviewer"], name="exposure_day")]

    def __str__(self) -> str:
        return f"{self.reviewer_id} {self.day} {self.category or '-'}: {self.total}"

    @property
    def total(self) -> int:
        return self.previews + self.thumbnails + self.originals


# The column each served rendition counts in.
COLUMN = {"preview": "previews", "thumbnail": "thumbnails", "original": "originals"}


class ExposureCap(models.Model):
    """At most `images` of `category` a day per reviewer from Start reviewing; "" is the default
    for every category without its own."""

    category = models.CharField(max_length=limits.CATEGORY_MAX, unique=True, blank=True)
    images = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_CAP)]
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["category"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(images__gte=1, images__lte=MAX_CAP), name="exposure_cap_range"
            )
        ]

    def __str__(self) -> str:
        return f"{self.category or 'default'}: {self.images} a day"


class OptOut(models.Model):
    """A reviewer asked never to be handed images of `category` by Start reviewing."""

    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="exposure_opt_outs"
    )
    category = models.CharField(max_length=limits.CATEGORY_MAX)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["reviewer", "category"], name="one_opt_out")]

    def __str__(self) -> str:
        return f"{self.reviewer_id} opted out of {self.category}"
