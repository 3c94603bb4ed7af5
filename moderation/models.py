from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from django.conf import settings
from django.db import models
from django.urls import reverse

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

# IMM's recommended minimum resolution; smaller images are accepted with a warning.
LOW_RESOLUTION_SIDE = 256

CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "BMP": "image/bmp",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif", "WEBP": "webp"}


class ImageQuerySet(models.QuerySet["Image"]):
    def visible_to(self, user: User | AnonymousUser) -> ImageQuerySet:
        """Admins see every image; reviewers see the images waiting for a human."""
        if user.has_perm("moderation.view_image"):
            return self
        if user.has_perm("moderation.review_image"):
            return self.awaiting_review()
        return self.none()

    def awaiting_review(self) -> ImageQuerySet:
        return self.filter(status=Image.Status.AWAITING_REVIEW)

    def newest_first(self) -> ImageQuerySet:
        return self.order_by("-uploaded_at", "-id")


class Image(models.Model):
    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        SUBMITTED = "submitted", "Submitted to IMM"
        AWAITING_REVIEW = "awaiting_review", "Awaiting review"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        FAILED = "failed", "Failed"

    class Format(models.TextChoices):
        PNG = "PNG"
        JPEG = "JPEG"
        BMP = "BMP"
        GIF = "GIF"
        WEBP = "WEBP"

    # Content-addressed: images/<sha256[:2]>/<sha256>.<ext>; the key never changes.
    file = models.FileField(max_length=200)
    preview = models.FileField(max_length=200, blank=True)
    thumbnail = models.FileField(max_length=200, blank=True)
    sha256 = models.CharField(max_length=64, unique=True)
    format = models.CharField(max_length=8, choices=Format.choices)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    frame_count = models.PositiveIntegerField(default=1)
    byte_size = models.PositiveBigIntegerField()
    original_filename = models.CharField(max_length=255)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="uploaded_images",
        help_text="Empty when the system imported the image.",
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RECEIVED)
    status_changed_at = models.DateTimeField(auto_now_add=True)

    objects = ImageQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["-uploaded_at", "-id"], name="image_newest"),
            models.Index(fields=["status", "-uploaded_at", "-id"], name="image_status_newest"),
        ]
        permissions = [("review_image", "Can review images waiting for a human decision")]

    def __str__(self) -> str:
        return f"Image {self.pk} ({self.original_filename})"

    def get_absolute_url(self) -> str:
        return reverse("image_detail", args=[self.pk])

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def low_resolution(self) -> bool:
        return self.width < LOW_RESOLUTION_SIDE or self.height < LOW_RESOLUTION_SIDE

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def source_uri(self) -> str:
        """The oss://bucket/key that IMM is given for this image."""
        return f"oss://{settings.IMM_OSS_BUCKET}/{self.file.name}"

    @property
    def is_animated(self) -> bool:
        return self.frame_count > 1


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AuditLogIsAppendOnly("audit entries cannot be updated")

    def delete(self) -> NoReturn:
        raise AuditLogIsAppendOnly("audit entries cannot be deleted")

    def in_chain_order(self) -> AuditEntryQuerySet:
        return self.order_by("seq")


class AuditLogIsAppendOnly(Exception):
    pass


class AuditEntry(models.Model):
    """One line of the append-only, hash-chained audit log; written only by audit.record."""

    SYSTEM = "system"

    seq = models.PositiveBigIntegerField(unique=True, help_text="Position in the chain, from 1.")
    created_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_entries",
        help_text="Empty when the system acted.",
    )
    actor_label = models.CharField(
        max_length=150, help_text="The username at the time, or 'system'."
    )
    action = models.CharField(max_length=64, db_index=True)
    image = models.ForeignKey(
        Image, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_entries"
    )
    state_before = models.CharField(max_length=20, blank=True)
    state_after = models.CharField(max_length=20, blank=True)
    reason = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64, unique=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "audit entries"
        ordering = ["-seq"]
        indexes = [models.Index(fields=["image", "seq"], name="audit_image_seq")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor_label}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AuditLogIsAppendOnly("audit entries cannot be updated")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AuditLogIsAppendOnly("audit entries cannot be deleted")
