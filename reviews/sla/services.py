"""Admins set response-time targets: each change audited, and every due time recomputed with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction

from moderation import limits
from moderation.audit import log as audit

from . import due
from .models import MAX_MINUTES, SlaTarget

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class Invalid(ValueError):
    """A target that cannot be saved, with the reason in plain words (400, nothing changed)."""


def clean_category(raw: str) -> str:
    """A category name as IMM labels them (one word), or Invalid."""
    category = raw.strip()
    if not limits.is_category(category):
        raise Invalid(limits.category_refused("porn"))
    return category


def clean_minutes(raw: str) -> int:
    minutes = limits.whole_number(raw.strip())
    if minutes is None or not 1 <= minutes <= MAX_MINUTES:
        raise Invalid(
            f"A target is a whole number of minutes from 1 to {MAX_MINUTES:,} (one week)."
        )
    return minutes


def set_target(
    *, category: str, minutes: str, actor: User, context: audit.AuditContext
) -> SlaTarget:
    """Add or change the target for `category` ("" is the default), audited, and recompute
    every waiting image's due time in the same transaction. Invalid (400) for bad input."""
    if category:
        category = clean_category(category)
    value = clean_minutes(minutes)
    # Two admins adding the same new target at once: the second insert fails on the unique
    # category, and its second try finds the row and changes it.
    for attempt in range(2):
        try:
            with transaction.atomic():
                target = SlaTarget.objects.select_for_update().filter(category=category).first()
                before = "" if target is None else str(target.minutes)
                if target is None:
                    target = SlaTarget(category=category)
                target.minutes = value
                target.updated_by = actor
                target.save()
                audit.record(
                    action="sla.target_set",
                    actor=actor,
                    state_before=before,
                    state_after=str(value),
                    reason=f"{category or 'default'}: {value} min",
                    detail={"category": category, "minutes": value},
                    context=context,
                )
                due.recompute()
            return target
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def remove_target(*, category: str, actor: User, context: audit.AuditContext) -> int | None:
    """Remove a target (audited) and recompute due times; the minutes it had, or None if there
    was none."""
    with transaction.atomic():
        target = SlaTarget.objects.select_for_update().filter(category=category).first()
        if target is None:
            return None
        minutes = target.minutes
        target.delete()
        audit.record(
            action="sla.target_removed",
            actor=actor,
            state_before=str(minutes),
            reason=f"{category or 'default'}: no target",
            detail={"category": category},
            context=context,
        )
        due.recompute()
    return minutes
