"""Accounts: a user in exactly one role, created with an audit entry."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.db import transaction

from . import audit
from .roles import ROLES, sync_roles


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
