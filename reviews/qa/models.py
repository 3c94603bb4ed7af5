"""Quality assurance records: sampling rates, IMM checks, double reviews and gold items.

Every row here is written beside the work it checks, never in its way: sampling is one INSERT
in the transaction that settled or decided the image, and nothing on the claim or decide path
waits for these tables.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from moderation import limits
from moderation.models import Image
from reviews.models import Decision


class Rate(models.Model):
    """A sampling share in percent. IMM checks: per suggestion (pass, block) and category, ""
    being the default for the suggestion. Double reviews and gold: category "" only."""

    class Kind(models.TextChoices):
        PASS = "pass", "IMM said pass"
        BLOCK = "block", "IMM said block"
        DOUBLE = "double", "Double review of human decisions"
        GOLD = "gold", "Gold items served"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    category = models.CharField(max_length=limits.CATEGORY_MAX, blank=True)
    percent = models.FloatField()
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "category"], name="qa_one_rate_per_kind"),
            models.CheckConstraint(
                condition=Q(percent__gte=0, percent__lte=100), name="qa_rate_is_a_percent"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.category or 'default'}: {self.percent}%"


class ImmCheck(models.Model):
    """A sampled copy of an image IMM settled, for a person to confirm or overturn."""

    class State(models.TextChoices):
        OPEN = "open", "Waiting"
        CONFIRMED = "confirmed", "Confirmed"
        OVERTURNED = "overturned", "Overturned"
        # A person decided the image meanwhile, or IMM moved it: nothing for QA to change.
        CLOSED = "closed", "Closed unchanged"

    # One check per image, whatever replays or later words arrive (settled by the database).
    image = models.OneToOneField(Image, on_delete=models.CASCADE, related_name="qa_check")
    suggestion = models.CharField(max_length=10)
    categories = models.JSONField(default=list)
    settled_as = models.CharField(max_length=20)
    sampled_at = models.DateTimeField()
    state = models.CharField(max_length=12, choices=State.choices, default=State.OPEN)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    checked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="imm_checks",
    )
    checked_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=limits.REASON_MAX, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["sampled_at", "id"], condition=Q(state="open"), name="qa_imm_open")
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["claimed_by"], condition=Q(state="open"), name="qa_one_imm_claim"
            )
        ]

    def __str__(self) -> str:
        return f"QA of IMM's {self.suggestion} on image {self.image_id}: {self.state}"


class DoubleReview(models.Model):
    """A human decision sampled for a second, blind review by someone else."""

    class State(models.TextChoices):
        WAITING = "waiting", "Waiting"
        AGREED = "agreed", "Agreed"
        DISPUTED = "disputed", "Waiting for an admin"
        RULED = "ruled", "Ruled by an admin"
        # The first decision was undone, or the image changed since: nothing left to check.
        WITHDRAWN = "withdrawn", "Withdrawn"

    decision = models.OneToOneField(Decision, on_delete=models.PROTECT, related_name="+")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+")
    first_reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    first_verdict = models.CharField(max_length=10)
    created_at = models.DateTimeField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.WAITING)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    second_reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    second_verdict = models.CharField(max_length=10, blank=True)
    second_reason = models.CharField(max_length=limits.REASON_MAX, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    ruling = models.CharField(max_length=10, blank=True)
    ruled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    ruled_at = models.DateTimeField(null=True, blank=True)
    ruling_reason = models.CharField(max_length=limits.REASON_MAX, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at", "id"], condition=Q(state="waiting"), name="qa_double_waiting"
            )
        ]
        constraints = [
            # One blind item at a time per reviewer, settled by the database (a double click).
            models.UniqueConstraint(
                fields=["claimed_by"], condition=Q(state="waiting"), name="qa_one_double_claim"
            ),
            models.CheckConstraint(
                condition=Q(second_reviewer__isnull=True)
                | ~Q(second_reviewer=models.F("first_reviewer")),
                name="qa_second_reviewer_differs",
            ),
        ]

    def __str__(self) -> str:
        return f"double review of decision {self.decision_id}: {self.state}"


class GoldItem(models.Model):
    """A decided image whose right answer an admin has set, served blind to reviewers."""

    class Expected(models.TextChoices):
        APPROVE = "approve", "Approve"
        REJECT = "reject", "Reject"

    image = models.OneToOneField(Image, on_delete=models.CASCADE, related_name="gold")
    expected = models.CharField(max_length=10, choices=Expected.choices)
    active = models.BooleanField(default=True)
    marked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    marked_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"gold image {self.image_id}: {self.expected}"


class GoldAnswer(models.Model):
    """One serving of a gold item to a reviewer: open (verdict "") until they answer."""

    gold = models.ForeignKey(GoldItem, on_delete=models.CASCADE, related_name="answers")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    served_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    verdict = models.CharField(max_length=10, blank=True)
    correct = models.BooleanField(null=True)
    answered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Each reviewer sees a gold item once; one open serving per reviewer.
            models.UniqueConstraint(fields=["gold", "reviewer"], name="qa_gold_once_each"),
            models.UniqueConstraint(
                fields=["reviewer"], condition=Q(verdict=""), name="qa_one_open_gold"
            ),
        ]

    def __str__(self) -> str:
        return f"gold {self.gold_id} to {self.reviewer_id}: {self.verdict or 'open'}"
