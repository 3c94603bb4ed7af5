"""The dashboard's hourly rollups, written only by the `oversight_rollups` loop (rollups.py).

The page reads these tables and nothing else of size: the raw tables (decisions, images, the
audit log) are read by the loop, an hour at a time, by their indexed time columns.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from moderation import limits

# Category "" on a row means every image, whatever its categories.
ALL = ""


class RollupState(models.Model):
    """One row (pk 1): how far the rollups are final, and what the last pass did."""

    # Every raw row stamped before this time was committed when a pass read its hour, so hours
    # ending before it are final; a pass recomputes every hour from this one on.
    settled_until = models.DateTimeField(null=True, blank=True)
    last_pass_at = models.DateTimeField(null=True, blank=True)
    last_pass_seconds = models.FloatField(default=0)
    last_pass_hours = models.PositiveIntegerField(default=0)
    # The end of the windows the ReviewerRange rows were added up for (the hour after the pass's).
    ranges_end = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"rollups settled until {self.settled_until}"


class HourlyFigures(models.Model):
    """What happened in one hour, for one category (or every image: category "")."""

    hour = models.DateTimeField()
    category = models.CharField(max_length=limits.CATEGORY_MAX, blank=True)
    # Images uploaded (category "" only: an image has no category before IMM's verdict).
    received = models.PositiveIntegerField(default=0)
    # Moves into the review queue (IMM routing, an undo or an admin's reopen).
    entered_queue = models.PositiveIntegerField(default=0)
    # People's approve, reject and escalate decisions, and of those the escalations.
    decided = models.PositiveIntegerField(default=0)
    escalated = models.PositiveIntegerField(default=0)
    # Decisions on items waiting for a reviewer that came after the item's SLA due time.
    decided_late = models.PositiveIntegerField(default=0)
    # A person's approve or reject against IMM's suggestion: approve = pass, reject = block.
    agreed = models.PositiveIntegerField(default=0)
    disagreed = models.PositiveIntegerField(default=0)
    # Approve or reject of an item IMM suggested "review" for: IMM gave no verdict to agree with.
    imm_unsure = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "category"], name="dashboard_hour_category")
        ]
        indexes = [models.Index(fields=["category", "hour"], name="dashboard_category_hour")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.category or 'all'}"


class ReviewerHour(models.Model):
    """One reviewer's decisions in one hour, with their times as a histogram (see histogram.py)."""

    hour = models.DateTimeField()
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    decided = models.PositiveIntegerField(default=0)
    escalated = models.PositiveIntegerField(default=0)
    # Bucket index (as a string: JSON keys) -> decisions whose seconds fell in it.
    seconds = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "reviewer"], name="dashboard_hour_reviewer")
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} reviewer {self.reviewer_id}"


class ReviewerDay(models.Model):
    """ReviewerHour's rows of one UTC day added up, so a month is read as 30 rows per reviewer."""

    day = models.DateField()
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    decided = models.PositiveIntegerField(default=0)
    escalated = models.PositiveIntegerField(default=0)
    seconds = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "reviewer"], name="dashboard_day_reviewer")
        ]

    def __str__(self) -> str:
        return f"{self.day} reviewer {self.reviewer_id}"


class ReviewerRange(models.Model):
    """One reviewer's figures over one of the page's ranges, added up by the pass (a month is
    hundreds of hour and day rows per reviewer: too many to add up on every page view)."""

    range_key = models.CharField(max_length=8)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    decided = models.PositiveIntegerField(default=0)
    escalated = models.PositiveIntegerField(default=0)
    median_seconds = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["range_key", "reviewer"], name="dashboard_range_reviewer"
            )
        ]

    def __str__(self) -> str:
        return f"{self.range_key} reviewer {self.reviewer_id}"


class QueueHour(models.Model):
    """The review queue as the last pass in an hour saw it, per category (and "" for all)."""

    hour = models.DateTimeField()
    category = models.CharField(max_length=limits.CATEGORY_MAX, blank=True)
    taken_at = models.DateTimeField()
    waiting = models.PositiveIntegerField(default=0)
    # Waiting past their SLA due time when the snapshot was taken.
    overdue = models.PositiveIntegerField(default=0)
    oldest_since = models.DateTimeField(null=True, blank=True)
    # Escalated items waiting for an admin (category "" only).
    escalated = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "category"], name="dashboard_queue_hour")
        ]
        indexes = [models.Index(fields=["category", "hour"], name="dashboard_queue_cat_hour")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.category or 'all'}: {self.waiting} waiting"
