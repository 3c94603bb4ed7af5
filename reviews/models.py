"""The reviewer queue's own records: claims, decisions, reveals and preferences.

The queue itself is read from moderation.Image's status (awaiting review, escalated); this app
depends on moderation, never the reverse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection, models, transaction
from django.http import Http404

from moderation import limits
from moderation.models import Image

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class Claim(models.Model):
    """A reviewer's lease on one image. At most one per image (the primary key is the image)."""

    image = models.OneToOneField(
        Image, on_delete=models.CASCADE, primary_key=True, related_name="claim"
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="claims"
    )
    claimed_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    # Set by Start reviewing: the day (the server's TIME_ZONE calendar day) whose exposure limits
    # the database holds this claim to. A trigger refuses the insert when the reviewer opted out
    # of a category of the image or reached that day's cap for one (reviews.exposure
    # migration 0002); empty, no limits apply (an undo hands back the image already seen).
    limits_day = models.DateField(null=True, blank=True)

    class Meta:
        # One item at a time per reviewer, settled by the database (a double click on "Next"
        # cannot leave a reviewer holding two).
        constraints = [models.UniqueConstraint(fields=["reviewer"], name="one_claim_per_reviewer")]

    def __str__(self) -> str:
        return f"image {self.image_id} held by {self.reviewer_id} until {self.expires_at:%H:%M:%S}"


class DecisionQuerySet(models.QuerySet["Decision"]):
    def undoable_kinds(self) -> DecisionQuerySet:
        """Decisions a reviewer may take back: approve, reject, escalate (not an undo, nor an
        admin's reopen or override, which another override or reopen changes instead)."""
        return self.filter(verdict__in=UNDOABLE)

    def standing_escalations(self) -> DecisionQuerySet:
        """Escalations not undone, oldest first (the last one per image is the one that stands),
        with who escalated."""
        return (
            self.filter(verdict=Decision.Verdict.ESCALATE, undone_by__isnull=True)
            .select_related("reviewer")
            .order_by("created_at", "id")
        )


class Decision(models.Model):
    """One human decision, never edited: an undo is a new Decision pointing at the one it undoes."""

    class Verdict(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Rejected"
        ESCALATE = "escalate", "Escalated"
        UNDO = "undo", "Undone"
        # An admin's later change to a settled image (reviews.services.reopen, .override).
        REOPEN = "reopen", "Reopened"
        OVERRIDE = "override", "Overridden"

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="decisions")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions"
    )
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    reason = models.CharField(max_length=limits.REASON_MAX, blank=True)
    status_before = models.CharField(max_length=20)
    status_after = models.CharField(max_length=20)
    # The image's status_changed_at before this decision: an undo puts it back, so the item
    # returns to its place in the queue with its waiting age (empty on decisions made before).
    status_changed_before = models.DateTimeField(null=True, blank=True)
    undoes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="undone_by"
    )
    # The image's human_decided_at before this decision: an undo puts it back, so a decision
    # made after an admin's reopen, once undone, leaves the reopen standing against IMM's word.
    human_decided_before = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True, help_text="From claim to decision.")
    created_at = models.DateTimeField(db_index=True)

    objects = DecisionQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["reviewer", "created_at"], name="decision_reviewer_time")]

    def __str__(self) -> str:
        return f"{self.get_verdict_display()} image {self.image_id}"


UNDOABLE = (Decision.Verdict.APPROVE, Decision.Verdict.REJECT, Decision.Verdict.ESCALATE)


class Reveal(models.Model):
    """Clear pixels of an image were served to a person: exposure admins will want to see and limit.

    Written by moderation's image_file view (through signals.pixels_served) whenever it serves a
    clear rendition, so a reveal cannot be skipped: pages load a blurred rendition until then.
    """

    class Variant(models.TextChoices):
        PREVIEW = "preview", "Preview"
        THUMBNAIL = "thumbnail", "Thumbnail"
        ORIGINAL = "original", "Original"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="reveals")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reveals"
    )
    variant = models.CharField(max_length=10, choices=Variant.choices, default=Variant.PREVIEW)
    revealed_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["reviewer", "revealed_at"], name="reveal_reviewer_time")]

    def __str__(self) -> str:
        return f"{self.reviewer_id} revealed the {self.variant} of {self.image_id}"


def record_reveal(
    sender: object, *, image: Image, user: User, variant: str, **kwargs: object
) -> None:
    """Receiver of moderation.signals.pixels_served (connected in ReviewsConfig.ready): the
    Reveal and the person's exposure count (reviews.exposure), together or not at all."""
    from .exposure import counting

    with transaction.atomic():
        if not _still_as_read(image, user):
            raise Http404("no such image")
        Reveal.objects.create(image=image, reviewer=user, variant=variant)
        counting.count(image=image, user=user, variant=variant)


def _still_as_read(image: Image, user: User) -> bool:
    """Whether `user` may still be shown `image`, with its row share-locked until the reveal
    commits. The view read the image a moment ago: a decision taken since (another tab's
    Approve) must either wait for this reveal to be counted, so that the claim made after it
    sees the count (the exposure trigger reads what is committed), or be seen here and the
    pixels refused. A decision locks the row FOR UPDATE; SQLite has one writer at a time."""
    table = connection.ops.quote_name(Image._meta.db_table)
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT status FROM {table} WHERE id = %s{lock}",  # noqa: S608 - a name, not data
            [image.pk],
        )
        row = cursor.fetchone()
    if row is None:
        return False
    return row[0] == image.status or Image.objects.visible_to(user).filter(pk=image.pk).exists()


class ReviewerPreference(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="review_preference",
    )
    greyscale = models.BooleanField(default=False)
    # The queue page and Start reviewing take the most urgent item first (reviews.sla.order)
    # instead of the oldest.
    order_by_due = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"preferences of {self.user_id}"
