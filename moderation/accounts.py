"""Accounts: a user in exactly one role, created with an audit entry; sign-in lockouts."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any

from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.forms import PasswordChangeForm
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.signals import user_logged_in
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.crypto import salted_hmac

from .audit import log as audit
from .roles import ROLES, sync_roles

logger = logging.getLogger(__name__)


def role_of(user: AbstractBaseUser) -> str | None:
    names = set(user.groups.values_list("name", flat=True))  # type: ignore[attr-defined]
    for role, group in ROLES.items():
        if group in names:
            return role
    return None


def create_user(
    *, username: str, role: str, password: str, email: str = "", validate: bool = True
) -> AbstractBaseUser:
    """Create a user in one role (admins may also use the Django admin). Raises ValueError."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    user_model = get_user_model()
    if user_model.objects.filter(username=username).exists():
        raise ValueError(f"a user named {username!r} already exists")
    candidate = user_model(username=username, email=email)
    if validate:
        validate_password(password, candidate)  # raises ValidationError, a ValueError-like error
    sync_roles()
    with transaction.atomic():
        user = user_model.objects.create_user(
            username=username, email=email, password=password, is_staff=(role == "admin")
        )
        user.groups.add(Group.objects.get(name=ROLES[role]))
        audit.record(
            action="user.created",
            actor=None,
            detail={"username": username, "role": role},
        )
    return user


# Sign-in throttling: django-axes counts failures and refuses sign-ins (settings, AXES_*); what
# follows is ours: the client address it counts by, the lockout page, and the record of a lockout.


def client_address(request: HttpRequest) -> str | None:
    """The address sign-in failures are counted against: REMOTE_ADDR, as the audit log records."""
    return audit.AuditContext.from_request(request).ip_address


def attempted_username(
    request: HttpRequest, credentials: dict[str, Any] | None = None
) -> str | None:
    """The username a sign-in tried, as axes counts it (AXES_USERNAME_CALLABLE).

    Cut to the longest a username can be: a longer one names nobody, and the sign-in form does
    not refuse it, so uncut it would fail to be stored (a 500 on PostgreSQL) and go uncounted.
    """
    field = get_user_model().USERNAME_FIELD
    name = credentials.get(field) if credentials else request.POST.get(field)
    if name is None:
        return None
    longest = getattr(get_user_model()._meta.get_field(field), "max_length", None) or 150
    name = str(name)[:longest]
    if get_user_model().objects.filter(**{field: name}).exists():
        return name
    return unknown_username(name)


UNKNOWN_PREFIX = "unknown:"


def unknown_username(name: str) -> str:
    """What is counted, stored and shown for a typed name that names no account.

    People type their password into the username field; such a name must not reach axes' table,
    the audit log or the logs. A keyed hash still counts repeated tries of one name together.
    """
    digest = salted_hmac("moderation.accounts.unknown_username", name, algorithm="sha256")
    return f"{UNKNOWN_PREFIX}{digest.hexdigest()[:24]}"


def _lifts_at(
    attempts: QuerySet[AccessAttempt], *, limit: int, cool_off: timedelta, now: datetime
) -> datetime | None:
    """When the failures counted in `attempts` drop below the limit, or None if they are below.

    Each row holds its latest failure time and how many failures it counts; a row stops counting
    one cool-off after its time. Newest first, the row that brings the count to the limit is the
    one whose expiry lifts the lock.
    """
    counted = 0
    rows = attempts.filter(attempt_time__gte=now - cool_off).order_by("-attempt_time")
    for attempt_time, failures in rows.values_list("attempt_time", "failures_since_start"):
        counted += failures
        if counted >= limit:
            return attempt_time + cool_off
    return None


def locked_out(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """The lockout page (AXES_LOCKOUT_CALLABLE): why, until when, and how an admin lifts it."""
    limit = get_failure_limit(request, credentials)
    cool_off = get_cool_off(request) or timedelta(0)
    username = get_client_username(request, credentials) or ""
    address = getattr(request, "axes_ip_address", None) or client_address(request)
    now = timezone.now()
    by_address = _lifts_at(
        AccessAttempt.objects.filter(ip_address=address), limit=limit, cool_off=cool_off, now=now
    )
    by_username = (
        _lifts_at(
            AccessAttempt.objects.filter(username=username),
            limit=limit,
            cool_off=cool_off,
            now=now,
        )
        if username
        else None
    )
    lifts = max((t for t in (by_address, by_username) if t), default=now + cool_off)
    context = {
        # Shown to the minute, rounded up: at the time the page names, signing in works.
        "until": (lifts + timedelta(seconds=59)).replace(second=0, microsecond=0),
        "minutes": max(1, math.ceil((lifts - now).total_seconds() / 60)),
        "limit": limit,
        "cool_off_minutes": int(cool_off.total_seconds() // 60),
        # The name is never repeated back: the page would differ for names that are accounts and
        # names that are not (and one of those may be a password typed in the wrong field).
        "address": address if by_address else "",
        "for_a_name": by_username is not None,
    }
    return render(request, "registration/locked_out.html", context, status=429)


@receiver(user_logged_in)
def clear_own_failures(sender: object, request: HttpRequest | None, user: Any, **_: Any) -> None:
    """A successful sign-in forgets that person's failures from that address, nothing more."""
    if request is not None:
        AccessAttempt.objects.filter(
            username=user.get_username(), ip_address=client_address(request)
        ).delete()


@receiver(user_locked_out)
def record_lockout(
    sender: object, request: HttpRequest, username: str | None, ip_address: str | None, **_: Any
) -> None:
    """A lockout that begins is an audit entry; each sign-in refused during it is a log line.

    Axes sets `axes_failures_since_start` only when it has just counted a failure, which is how
    the attempt that trips the limit is told from those refused afterwards (one entry per lockout,
    however often a locked-out client retries).
    """
    name = (username or "")[:150]
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is None:
        logger.warning("sign-in refused, locked out: username %r from %s", name, ip_address)
        return
    logger.warning(
        "sign-in locked out after %d failures: username %r from %s", failures, name, ip_address
    )
    with transaction.atomic():
        audit.record(
            action="user.locked_out",
            actor=None,
            detail={"username": name, "failures": failures},
            context=audit.AuditContext.from_request(request),
        )


class ThrottledPasswordChangeForm(PasswordChangeForm):
    """Django's password change, whose old password is checked by signing in (authenticate).

    So django-axes counts a wrong old password as a failed sign-in and refuses the check during a
    lockout: the page is no unthrottled way to guess the password of a session left signed in.
    """

    def __init__(self, user: Any, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self) -> str:
        old = self.cleaned_data["old_password"]
        username = self.user.get_username()
        if authenticate(self.request, username=username, password=old) is None:
            raise ValidationError(
                self.error_messages["password_incorrect"], code="password_incorrect"
            )
        return old
