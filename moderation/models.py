from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from . import limits

if TYPE_CHECKING:
    from datetime import datetime

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
        EXPIRED = "expired", "Expired at IMM"
        ESCALATED = "escalated", "Escalated to an admin"

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
    # Set when a person decided the image; IMM's later messages are kept but never override it.
    human_decided_at = models.DateTimeField(null=True, blank=True)
    # IMM's verdict that set the status (copied from the applied result, for lists and filters).
    imm_suggestion = models.CharField(max_length=16, blank=True)
    imm_categories = models.JSONField(default=list, blank=True)
    imm_rate = models.FloatField(null=True, blank=True, help_text="Highest frame rate, if any.")

    objects = ImageQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["-uploaded_at", "-id"], name="image_newest"),
            models.Index(fields=["status", "-uploaded_at", "-id"], name="image_status_newest"),
            # The review queue: oldest first within a status, and per uploader.
            models.Index(fields=["status", "status_changed_at", "id"], name="image_status_age"),
            models.Index(
                fields=["status", "uploaded_by", "status_changed_at", "id"],
                name="image_status_uploader_age",
            ),
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

    def in_log_order(self) -> AuditEntryQuerySet:
        """Positioned entries by position, then the ones waiting for the sequencer, by id."""
        return self.order_by(models.F("seq").asc(nulls_last=True), "id")

    def waiting(self) -> AuditEntryQuerySet:
        """Entries written and committed but not yet given a position by the sequencer."""
        return self.filter(seq__isnull=True)


class AuditLogIsAppendOnly(Exception):
    pass


class AuditEntry(models.Model):
    """One entry of the append-only, verifiable audit log; written only by audit.record.

    `content` is the exact bytes hashed into the entry's leaf of the log's Merkle tree; the
    structured columns are a copy for pages and filters, checked against it by verify_audit.
    `seq` and `leaf_hash` are empty until the sequencer gives the entry its position (the only
    change an entry ever gets).
    """

    SYSTEM = "system"
    # How each action reads on pages; an action missing here shows as its code.
    ACTION_LABELS = {
        "image.uploaded": "Uploaded",
        "image.duplicate": "Uploaded again (duplicate)",
        "image.refused": "Upload refused",
        "user.created": "Account created",
        "user.locked_out": "Sign-in locked out",
        "imm.submitted": "Submitted to IMM",
        "imm.resubmitted": "Resubmitted to IMM",
        "imm.submit_failed": "Submission failed",
        "imm.result_received": "IMM result received",
        "imm.routed": "Routed",
        "imm.failed": "IMM task failed",
        "imm.expired": "Expired at IMM",
        "imm.paused": "IMM submissions paused",
        "imm.resumed": "IMM submissions resumed",
        "image.retry_requested": "Retry requested",
        "routing.rule_added": "Routing rule added",
        "routing.rule_removed": "Routing rule removed",
        "routing.thresholds_set": "Routing thresholds set",
        "review.approved": "Approved by a reviewer",
        "review.rejected": "Rejected by a reviewer",
        "review.escalated": "Escalated to an admin",
        "review.undone": "Decision undone",
        "review.reopened": "Reopened by an admin (back to review)",
        "review.overridden": "Outcome overridden by an admin",
        "review.released": "Skipped (released to the queue)",
        "api.client_created": "API client created",
        "api.key_created": "API key created",
        "api.key_revoked": "API key revoked",
        "webhook.endpoint_added": "Webhook endpoint added",
        "webhook.endpoint_enabled": "Webhook endpoint enabled",
        "webhook.endpoint_disabled": "Webhook endpoint disabled",
        "webhook.endpoint_auto_disabled": "Webhook endpoint disabled after failing",
        "webhook.secret_rotated": "Webhook secret rotated",
        "webhook.delivery_resent": "Webhook delivery resent",
        "sla.target_set": "Response-time target set",
        "sla.target_removed": "Response-time target removed",
        "exposure.cap_set": "Daily exposure limit set",
        "exposure.cap_removed": "Daily exposure limit removed",
        "exposure.opt_outs_changed": "Category opt-outs changed",
        "qa.rate_set": "QA sampling rate set",
        "qa.imm_confirmed": "IMM verdict confirmed in QA",
        "qa.imm_overturned": "IMM verdict overturned in QA",
        "qa.imm_check_closed": "QA check closed (a person had decided)",
        "qa.double_answered": "Double review answered",
        "qa.double_skipped": "Double review skipped",
        "qa.adjudicated": "Disagreement ruled on by an admin",
        "qa.gold_marked": "Marked as a gold item",
        "qa.gold_retired": "Gold item retired",
        "qa.gold_answered": "Gold item answered",
    }

    seq = models.PositiveBigIntegerField(
        unique=True,
        null=True,
        blank=True,
        help_text="Position in the log from 1 (the leaf index + 1); empty until sequenced.",
    )
    created_at = models.DateTimeField(db_index=True)
    # No index of their own: (actor, id) and (image, id) below serve lookups by either, and
    # every index is one more write per entry (two, counting the sequencer's update).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_entries",
        help_text="Empty when the system acted.",
        db_index=False,
    )
    actor_label = models.CharField(
        max_length=150, help_text="The username at the time, or 'system'."
    )
    action = models.CharField(max_length=64)
    image = models.ForeignKey(
        Image,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_entries",
        db_index=False,
    )
    state_before = models.CharField(max_length=20, blank=True)
    state_after = models.CharField(max_length=20, blank=True)
    reason = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    content = models.BinaryField(help_text="The exact bytes hashed into the entry's leaf.")
    entry_hash = models.CharField(max_length=64, help_text="SHA-256 of content, in hex.")
    leaf_hash = models.BinaryField(
        max_length=32, null=True, blank=True, help_text="SHA-256(0x00 || content); set with seq."
    )
    prev_hash = models.CharField(
        max_length=64, blank=True, help_text="Entries from the hash-chain era only: the link."
    )

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "audit entries"
        # Write order: an entry waiting for its position has none to sort by.
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["image", "id"], name="audit_image_id"),
            # The log page filters by action or actor and pages by id.
            models.Index(fields=["action", "id"], name="audit_action_id"),
            models.Index(fields=["actor", "id"], name="audit_actor_id"),
            # What the sequencer reads, oldest first: only the entries still waiting.
            models.Index(fields=["id"], condition=models.Q(seq__isnull=True), name="audit_waiting"),
        ]

    def __str__(self) -> str:
        return f"{self.position_label} {self.action} by {self.actor_label}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AuditLogIsAppendOnly("audit entries cannot be updated")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AuditLogIsAppendOnly("audit entries cannot be deleted")

    @property
    def position_label(self) -> str:
        return f"#{self.seq}" if self.seq is not None else "pending"

    @property
    def action_label(self) -> str:
        return self.ACTION_LABELS.get(self.action, self.action)


class ModerationTask(models.Model):
    """One CreateImageModerationTask attempt for an image, from sending to its final result.

    `submission_key` is our idempotency token: it goes to IMM in Tags (and UserData), so after an
    ambiguous failure ListTasks(TagSelector="submission=<key>") finds the task if IMM created it.
    At most one live (sending or running) task per image, enforced by the database.
    """

    class State(models.TextChoices):
        SENDING = "sending", "Sending"
        RUNNING = "running", "Running at IMM"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    LIVE_STATES = (State.SENDING, State.RUNNING)

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="moderation_tasks")
    submission_key = models.CharField(max_length=32, unique=True)
    task_id = models.CharField(max_length=128, unique=True, null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    event_id = models.CharField(max_length=128, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.SENDING)
    scenes = models.JSONField(default=list)
    interval = models.PositiveIntegerField(default=1)
    max_frames = models.PositiveIntegerField(default=1)
    attempts = models.PositiveIntegerField(default=0, help_text="Create requests sent.")
    ambiguous = models.BooleanField(
        default=False, help_text="A create request may have reached IMM with no answer back."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    poll_count = models.PositiveIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error_code = models.CharField(max_length=128, blank=True)
    last_error_message = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["image"],
                condition=models.Q(state__in=["sending", "running"]),
                name="one_live_task_per_image",
            )
        ]
        indexes = [models.Index(fields=["state", "next_poll_at"], name="task_poll_due")]

    def __str__(self) -> str:
        return self.task_id or f"submission {self.submission_key}"


class ModerationResult(models.Model):
    """A result message from IMM, stored whole, keyed on TaskId; the same content is kept once."""

    class Source(models.TextChoices):
        NOTIFICATION = "notification", "Notification"
        POLL = "poll", "Polling"

    imm_task_id = models.CharField(max_length=128, db_index=True)
    task = models.ForeignKey(
        ModerationTask, null=True, blank=True, on_delete=models.PROTECT, related_name="results"
    )
    image = models.ForeignKey(
        Image, null=True, blank=True, on_delete=models.PROTECT, related_name="moderation_results"
    )
    fingerprint = models.CharField(max_length=64, unique=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    status = models.CharField(max_length=16)
    suggestion = models.CharField(max_length=16, blank=True)
    categories = models.JSONField(default=list)
    frames_total = models.PositiveIntegerField(default=0)
    block_frames = models.JSONField(default=list)
    uri = models.CharField(max_length=1024, blank=True)
    code = models.CharField(max_length=128, blank=True)
    message = models.TextField(blank=True)
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True)
    raw = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    applied = models.BooleanField(default=False, help_text="This result set the image's status.")
    outcome = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["received_at", "id"]
        indexes = [
            # The poller looks for kept (unmatched) results every round, and prunes old ones:
            # a handful of rows among every result ever received.
            models.Index(
                fields=["received_at"],
                condition=models.Q(task__isnull=True),
                name="result_unmatched_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.imm_task_id}: {self.suggestion or self.status}"


class NotificationInboxQuerySet(models.QuerySet["NotificationInboxMessage"]):
    def waiting(self) -> NotificationInboxQuerySet:
        """Not applied yet: due now, or failed and waiting for its next attempt."""
        return self.filter(applied_at__isnull=True)

    def due(self, now: datetime) -> NotificationInboxQuerySet:
        return self.waiting().filter(
            models.Q(next_attempt_at__isnull=True) | models.Q(next_attempt_at__lte=now)
        )


class NotificationInboxMessage(models.Model):
    """A task message IMM delivered, stored as the endpoint accepted it, until it is applied.

    The endpoint only inserts; moderation.imm.inbox applies each through record_result and sets
    applied_at in the same transaction. received_at and applied_at give arrival-to-routed.
    """

    received_at = models.DateTimeField(default=timezone.now)
    source = models.CharField(max_length=16, choices=ModerationResult.Source.choices)
    task_id = models.CharField(max_length=128)
    message = models.JSONField(help_text="The task message, as TaskMessage.parse accepted it.")
    applied_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(
        max_length=16, blank=True, help_text="What record_result made of it (recorded, ...)."
    )
    attempts = models.PositiveIntegerField(default=0, help_text="Failed attempts to apply it.")
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationInboxQuerySet.as_manager()

    class Meta:
        indexes = [
            # Appliers claim the oldest waiting message again and again: a handful of rows
            # among every message kept for the retention.
            models.Index(
                fields=["id"], condition=models.Q(applied_at__isnull=True), name="inbox_waiting_idx"
            ),
            models.Index(
                fields=["applied_at"],
                condition=models.Q(applied_at__isnull=False),
                name="inbox_applied_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} ({'applied' if self.applied_at else 'waiting'})"


class RoutingRule(models.Model):
    """What to do with images whose IMM result names this category.

    Without thresholds: send them to a person, whatever IMM suggested. With thresholds, the
    category's rate in the result (IMM's 0-100 confidence, the highest over the frames labelled
    with it) decides: below `approve_below` approve, from `reject_from` up reject, a person in
    between. Either threshold may be left out (that side then goes to a person too).
    """

    category = models.CharField(max_length=limits.CATEGORY_MAX, unique=True)
    note = models.CharField(max_length=limits.RULE_NOTE_MAX, blank=True)
    approve_below = models.FloatField(
        null=True, blank=True, help_text="IMM rate (0-100) below which the image is approved."
    )
    reject_from = models.FloatField(
        null=True, blank=True, help_text="IMM rate (0-100) from which the image is rejected."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["category"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(approve_below__isnull=True)
                | models.Q(approve_below__gte=0, approve_below__lte=100),
                name="rule_approve_below_is_a_rate",
            ),
            models.CheckConstraint(
                condition=models.Q(reject_from__isnull=True)
                | models.Q(reject_from__gte=0, reject_from__lte=100),
                name="rule_reject_from_is_a_rate",
            ),
            models.CheckConstraint(
                condition=models.Q(approve_below__isnull=True)
                | models.Q(reject_from__isnull=True)
                | models.Q(approve_below__lte=models.F("reject_from")),
                name="rule_approve_below_not_above_reject_from",
            ),
        ]

    def __str__(self) -> str:
        return self.category

    @property
    def has_thresholds(self) -> bool:
        return self.approve_below is not None or self.reject_from is not None

    def call(self, rate: float | None) -> RuleCall:
        """What this rule's thresholds make of the category's rate (None: the result gave none)."""
        name = self.category
        if rate is None:
            return RuleCall("people", f"no rate for {name} in the result: a person decides")
        if self.reject_from is not None and rate >= self.reject_from:
            return RuleCall(
                "reject", f"rate {rate:g} >= {self.reject_from:g} for {name}: auto-reject"
            )
        if self.approve_below is not None and rate < self.approve_below:
            return RuleCall(
                "approve", f"rate {rate:g} < {self.approve_below:g} for {name}: auto-approve"
            )
        return RuleCall("people", f"rate {rate:g} for {name} is {self.band_text}: a person decides")

    @property
    def thresholds_text(self) -> str:
        """The thresholds in words, e.g. "approve below 40; reject from 95"."""
        return thresholds_text(self.approve_below, self.reject_from)

    @property
    def band_text(self) -> str:
        """The people band in words, e.g. "from 40 to below 95"."""
        low = "from 0" if self.approve_below is None else f"from {self.approve_below:g}"
        high = "to 100" if self.reject_from is None else f"to below {self.reject_from:g}"
        return f"{low} {high}"


def thresholds_text(approve_below: float | None, reject_from: float | None) -> str:
    words = []
    if approve_below is not None:
        words.append(f"approve below {approve_below:g}")
    if reject_from is not None:
        words.append(f"reject from {reject_from:g}")
    return "; ".join(words) or "no thresholds"


class RuleCall(NamedTuple):
    """A routing rule's word on one category: approve, reject or people, and why."""

    verdict: str
    reason: str


class ImmStatus(models.Model):
    """One row: whether submissions are paused by an access or configuration error, and why."""

    paused = models.BooleanField(default=False)
    reason_code = models.CharField(max_length=128, blank=True)
    reason_message = models.TextField(blank=True)
    changed_at = models.DateTimeField(null=True, blank=True)
    poller_seen_at = models.DateTimeField(
        null=True, blank=True, help_text="The last round of manage.py imm_poller (a heartbeat)."
    )

    def __str__(self) -> str:
        return f"paused: {self.reason_code}" if self.paused else "submitting"

    @classmethod
    def current(cls) -> ImmStatus:
        status, _ = cls.objects.get_or_create(pk=1)
        return status


class ImmRateLimit(models.Model):
    """IMM's request budget, shared by every submitter thread and process: one row per budget.

    Written only by moderation.imm.ratelimit, one statement at a time. Times are Unix seconds by
    the database's clock, so workers on several hosts count the same windows.
    """

    name = models.CharField(primary_key=True, max_length=32)
    window_start = models.BigIntegerField(default=0, help_text="The second being counted.")
    asked = models.IntegerField(default=0, help_text="Requests asked for in that second.")
    paused_until = models.FloatField(
        default=0, help_text="Nobody sends before this time: IMM said we are throttled."
    )
    checked_at = models.FloatField(default=0, help_text="The database's clock at the last ask.")

    def __str__(self) -> str:
        return f"{self.name}: {self.asked} asked in second {self.window_start}"


class ImageCategory(models.Model):
    """One category of the IMM verdict that routed an image, for filtering the review queue."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="category_rows")
    category = models.CharField(max_length=64)
    # The category's rate in that verdict (the highest over its frames, 0-100); empty when the
    # verdict gave none, and on rows written before rates were kept.
    rate = models.FloatField(null=True, blank=True)
    # That verdict's suggestion (Image.imm_suggestion), here too so that calibration counts by
    # category, rate and suggestion from this table alone, without reading the images table. A
    # database default too: bulk loads that name only the image and category (bench/common.py's
    # COPY) still work.
    suggestion = models.CharField(max_length=16, blank=True, db_default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["image", "category"], name="image_category_once")
        ]
        indexes = [models.Index(fields=["category", "image"], name="category_image")]

    def __str__(self) -> str:
        return f"{self.image_id}: {self.category}"


class ChainCheck(models.Model):
    """The outcome of one verification of the audit log (manage.py verify_audit, or the log page).

    `entries` is how many positioned entries verified (before the fault, if any); `head_hash` the
    root hash over them, in hex."""

    checked_at = models.DateTimeField(auto_now_add=True, db_index=True)
    ok = models.BooleanField()
    entries = models.PositiveBigIntegerField()
    head_hash = models.CharField(max_length=64, blank=True)
    problem = models.TextField(blank=True)
    seconds = models.FloatField()

    class Meta:
        ordering = ["-checked_at"]

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'BROKEN'} at {self.checked_at:%Y-%m-%d %H:%M}"


class VerificationRequest(models.Model):
    """The verification of the audit log last asked for from the log page: its task result's id.

    Only the latest is kept; its task's status says whether a walk is still queued or running,
    so that "Verify now" does not queue another meanwhile.
    """

    task_result_id = models.CharField(max_length=64)
    requested_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"verification {self.task_result_id} asked for at {self.requested_at:%Y-%m-%d %H:%M}"


class AppendOnlyQuerySet(models.QuerySet[Any]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AuditLogIsAppendOnly(f"{self.model._meta.verbose_name_plural} cannot be updated")

    def delete(self) -> NoReturn:
        raise AuditLogIsAppendOnly(f"{self.model._meta.verbose_name_plural} cannot be deleted")


class AuditTreeNode(models.Model):
    """A perfect subtree of the audit log's Merkle tree, level 1 and up; written by the sequencer.

    (level, index) covers leaves [index * 2**level, (index + 1) * 2**level); its hash never
    changes once written. Level 0, the leaves, is AuditEntry.leaf_hash (index = seq - 1).
    """

    pk = models.CompositePrimaryKey("level", "index")
    level = models.PositiveSmallIntegerField()
    index = models.PositiveBigIntegerField()
    hash = models.BinaryField(max_length=32)

    objects = AppendOnlyQuerySet.as_manager()

    def __str__(self) -> str:
        return f"subtree level {self.level} index {self.index}"


class AuditCheckpoint(models.Model):
    """A signed checkpoint of the audit log (C2SP tlog-checkpoint), one per sequencer batch."""

    tree_size = models.PositiveBigIntegerField(unique=True)
    root_hash = models.BinaryField(max_length=32)
    # The tree's right frontier at this size (merkle.CompactRange.to_bytes), from which the
    # sequencer extends the tree without reading it back.
    compact_range = models.BinaryField()
    signed_note = models.TextField(help_text="The checkpoint as a C2SP signed note, verbatim.")
    created_at = models.DateTimeField()

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-tree_size"]

    def __str__(self) -> str:
        return f"checkpoint at tree size {self.tree_size}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AuditLogIsAppendOnly("audit checkpoints cannot be updated")
        super().save(*args, **kwargs)
