"""API keys: making them, finding the key a request carries, revoking them.

A key reads `mk_<prefix>_<secret>`: `mk_` says what it is (secret scanners can look for it), the
prefix (8 hex characters) is its public name in lists, and the secret is 32 random bytes. Only
the SHA-256 of the whole key is stored; a request's key is found by looking its hash up, so the
comparison is the index's, over hashes, and takes no time that depends on the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from moderation.audit import log as audit

from .models import ApiClient, ApiKey

if TYPE_CHECKING:
    from django.contrib.auth.models import User

KEY_PREFIX = "mk_"
SECRET_BYTES = 32
KEY_PATTERN = re.compile(r"^mk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SCOPES = tuple(ApiKey.Scope.values)
# last_used_at is written at most this often per key: a busy client costs no write per request.
LAST_USED_EVERY = timedelta(minutes=1)
SERVICE_USER_PREFIX = "api:"


class Invalid(ValueError):
    """A client or key cannot be made as asked; the message says why."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> list[str]:
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise Invalid(
            f"scopes must be one or more of {', '.join(SCOPES)}, separated by commas; got {text!r}"
        )
    return scopes


def check_name(name: str) -> str:
    name = name.strip()
    if not NAME_PATTERN.match(name):
        raise Invalid(
            "A client's name is 1 to 64 letters, digits, dots, dashes or underscores, "
            "starting with a letter or digit."
        )
    return name


@dataclass(frozen=True)
class NewKey:
    """A key just made: `key` is its only copy, to show once."""

    key: str
    record: ApiKey
    client_created: bool


def get_or_create_client(
    *, name: str, created_by: User | None, context: audit.AuditContext = audit.SYSTEM_CONTEXT
) -> tuple[ApiClient, bool]:
    """The client named `name`, made (with its service user, audited) if it does not exist."""
    name = check_name(name)
    existing = ApiClient.objects.filter(name=name).first()
    if existing is not None:
        return existing, False
    user_model = get_user_model()
    try:
        with transaction.atomic():
            # "api:" cannot start a person's username (Django's validator refuses ":"). Inactive,
            # with no usable password and no group: it never signs in and never reviews.
            user = user_model(username=f"{SERVICE_USER_PREFIX}{name}", is_active=False)
            user.set_unusable_password()
            user.save()
            client = ApiClient.objects.create(name=name, user=user, created_by=created_by)
            audit.record(
                action="api.client_created",
                actor=created_by,
                detail={"client": name, "service_user": user.get_username()},
                context=context,
            )
    except IntegrityError:
        # Made meanwhile by someone else: theirs stands.
        return ApiClient.objects.get(name=name), False
    return client, True


def create_key(
    *,
    client_name: str,
    scopes: list[str],
    created_by: User | None,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
) -> NewKey:
    """Make a key for the client (made first if needed); the audit entry names its prefix."""
    for scope in scopes:
        if scope not in SCOPES:
            raise Invalid(f"unknown scope {scope!r}: scopes are {', '.join(SCOPES)}")
    if not scopes:
        raise Invalid("a key needs at least one scope")
    client, made = get_or_create_client(name=client_name, created_by=created_by, context=context)
    with transaction.atomic():
        while True:
            prefix = secrets.token_hex(4)
            if not ApiKey.objects.filter(prefix=prefix).exists():
                break
        key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
        record = ApiKey.objects.create(
            client=client, prefix=prefix, key_hash=digest(key), scopes=sorted(set(scopes))
        )
        audit.record(
            action="api.key_created",
            actor=created_by,
            detail={"client": client.name, "prefix": prefix, "scopes": record.scopes},
            context=context,
        )
    return NewKey(key=key, record=record, client_created=made)


def revoke_key(
    *, key_id: int, revoked_by: User, context: audit.AuditContext = audit.SYSTEM_CONTEXT
) -> ApiKey | None:
    """Revoke a key; None if it was already revoked (nothing changes then)."""
    with transaction.atomic():
        now = timezone.now()
        changed = ApiKey.objects.filter(pk=key_id, revoked_at__isnull=True).update(revoked_at=now)
        if not changed:
            return None
        record = ApiKey.objects.select_related("client").get(pk=key_id)
        audit.record(
            action="api.key_revoked",
            actor=revoked_by,
            detail={"client": record.client.name, "prefix": record.prefix},
            context=context,
        )
    return record


def find(key: str) -> ApiKey | None:
    """The live key `key` is, with its client and service user; None if none is."""
    if not KEY_PATTERN.match(key):
        return None
    hashed = digest(key)
    found = (
        ApiKey.objects.live()
        .select_related("client", "client__user")
        .filter(key_hash=hashed)
        .first()
    )
    if found is None or not hmac.compare_digest(found.key_hash, hashed):
        return None
    return found


def bearer_token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def touch(record: ApiKey) -> None:
    """Note the key as used now, at most once a LAST_USED_EVERY (one conditional UPDATE)."""
    now = timezone.now()
    if record.last_used_at is not None and now - record.last_used_at < LAST_USED_EVERY:
        return
    ApiKey.objects.filter(pk=record.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_EVERY)
    ).update(last_used_at=now)
    record.last_used_at = now
