"""The calibration page's daily rollups, written only by the `oversight_rollups` pass
(reviews/calibration/rollups.py, called from reviews/dashboard/rollups.py).

The page reads these tables and nothing else of size. Days are UTC days; the page's ranges are
whole days (the last N days and today so far).
"""

from __future__ import annotations

from django.db import models

from moderation import limits


class CalibrationState(models.Model):
    """One row (pk 1): whether the rollups have been filled, and what the last pass did."""

    # The oldest day kept (the longest range's first day when the pass ran); empty until the
    # first pass has filled every day: the page says its figures are being prepared till then.
    first_day = models.DateField(null=True, blank=True)
    last_pass_at = models.DateTimeField(null=True, blank=True)
    last_pass_seconds = models.FloatField(default=0)
    # Days recomputed by the last pass (decision days and upload days).
    last_pass_days = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"calibration rollups from {self.first_day}"


class DecidedDay(models.Model):
    """People's decisions counted by the agreement figures, by the day they were made.

    `n` is signed: an image's counted decision is its latest standing one in the range, so a
    decision adds 1 on its own day and, when a later decision of the image came after it, takes
    1 away on that later decision's day (see rollups.decided_rows). Any sum over the days from a
    range's first day on is then the count of images whose latest decision in the range is this.
    """

    day = models.DateField()
    category = models.CharField(max_length=limits.CATEGORY_MAX)
    # 0-9 as rollups.rate_band gives it; empty for a category row without a rate.
    band = models.PositiveSmallIntegerField(null=True, blank=True)
    suggestion = models.CharField(max_length=16, blank=True)
    # The image's status after the counted decision: approved or rejected.
    outcome = models.CharField(max_length=20)
    n = models.IntegerField()

    class Meta:
        indexes = [models.Index(fields=["day"], name="calibration_decided_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.category} band {self.band} {self.suggestion}: {self.n}"


class UploadedDay(models.Model):
    """Category rows of the images uploaded on a day, as the backtest counts them: by whole rate
    (the integer part), the image's status now and whether a person decided it."""

    day = models.DateField()
    category = models.CharField(max_length=limits.CATEGORY_MAX)
    # floor(rate): the row counts rates in [rate_floor, rate_floor + 1); empty without a rate.
    rate_floor = models.SmallIntegerField(null=True, blank=True)
    status = models.CharField(max_length=20)
    by_person = models.BooleanField()
    n = models.PositiveIntegerField()

    class Meta:
        indexes = [
            models.Index(fields=["category", "day"], name="calibration_uploaded_day"),
            # A pass replaces a day's rows.
            models.Index(fields=["day"], name="calibration_uploaded_day_only"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.category} rate {self.rate_floor}+ {self.status}: {self.n}"


class UploadedRate(models.Model):
    """UploadedDay's rows split by exact rate: read only for the whole rate a threshold falls
    inside (a threshold of 30.5 needs the rates from 30 to 31 one by one)."""

    day = models.DateField()
    category = models.CharField(max_length=limits.CATEGORY_MAX)
    rate_floor = models.SmallIntegerField()
    rate = models.FloatField()
    status = models.CharField(max_length=20)
    by_person = models.BooleanField()
    n = models.PositiveIntegerField()

    class Meta:
        indexes = [
            models.Index(
                fields=["category", "rate_floor", "day"], name="calibration_uploaded_rate"
            ),
            models.Index(fields=["day"], name="calibration_rate_day"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.category} rate {self.rate} {self.status}: {self.n}"
