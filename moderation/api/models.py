"""The platform API's records: clients, their keys, their submissions, idempotency and rate limits.

A client acts through a service user of its own (ApiClient.user), which is the actor on the audit
entries its calls cause; it has no role, no usable password and is inactive, so it can never sign
in or review. Keys are stored as their SHA-256 only: the key itself is shown once, when made.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

# A submission's metadata, as JSON text (UTF-8 bytes), and an external id's length.
METADATA_MAX_BYTES = 4096
# How deeply a submission's metadata may nest (objects and arrays).
METADATA_DEPTH_MAX = 32
EXTERNAL_ID_MAX = 200


class ApiClient(models.Model):
    """A platform that calls the API; its keys and submissions hang off it."""

    name = models.CharField(max_length=64, unique=True)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="api_client",
        help_text="The service user its calls are audited as; it never signs in.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Empty when made by manage.py create_api_key.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def live(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    class Scope(models.TextChoices):
        SUBMIT = "submit", "Submit images"
        READ = "read", "Read images and outcomes"

    client = models.ForeignKey(ApiClient, on_delete=models.PROTECT, related_name="keys")
    prefix = models.CharField(
        max_length=16, unique=True, help_text="The key's public part, shown in lists."
    )
    key_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the key, hex.")
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"mk_{self.prefix}_… ({self.client})"

    @property
    def display(self) -> str:
        return f"mk_{self.prefix}_…"

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


class ApiSubmissionQuerySet(models.QuerySet["ApiSubmission"]):
    def of(self, client: ApiClient) -> ApiSubmissionQuerySet:
        return self.filter(client=client)


class ApiSubmission(models.Model):
    """One image submitted by one client. Images are stored once by content, so several clients
    (or one client, twice) may submit the same bytes: each gets a submission of its own, and a
    client sees an image only through its own submissions."""

    client = models.ForeignKey(ApiClient, on_delete=models.PROTECT, related_name="submissions")
    image = models.ForeignKey(
        "moderation.Image", on_delete=models.PROTECT, related_name="api_submissions"
    )
    # NULL, not "", when none is given: unique per client only when given.
    external_id = models.CharField(  # noqa: DJ001
        max_length=EXTERNAL_ID_MAX, null=True, blank=True
    )
    metadata = models.JSONField(default=dict, blank=True)
    duplicate = models.BooleanField(
        default=False, help_text="The bytes had been stored before this submission."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ApiSubmissionQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["client", "external_id"],
                condition=models.Q(external_id__isnull=False),
                name="api_external_id_once_per_client",
            )
        ]
        indexes = [models.Index(fields=["client", "image", "-id"], name="api_submission_image")]

    def __str__(self) -> str:
        return f"{self.client}: image {self.image_id}"


class IdempotencyRecord(models.Model):
    """The first answer to a request sent with an Idempotency-Key, per client and key.

    Inserted (in progress) before the request is handled, so a concurrent retry finds it and is
    told so; completed with the answer, which later retries with the same body get again."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "key"], name="api_idempotency_key_once")
        ]

    def __str__(self) -> str:
        return f"{self.client_id}: {self.key}"


class ApiRateLimit(models.Model):
    """One row per client: the window being counted and the requests in it. Written only by
    moderation.api.ratelimit, one statement at a time, by the database's clock, so every
    gunicorn worker and host counts the same windows."""

    client = models.OneToOneField(
        ApiClient, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    window_start = models.BigIntegerField(default=0, help_text="Unix second the window began.")
    count = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.client_id}: {self.count} since {self.window_start}"
