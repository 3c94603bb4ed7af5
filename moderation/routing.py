"""Routing rules: categories that send an image to human review whatever IMM suggests."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from django.db import IntegrityError, transaction

from . import limits
from .audit import log as audit
from .models import RoutingRule

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

# IMM's result labels per scene (REFERENCE.md section 6), offered as choices on the rules page.
SCENE_CATEGORIES: dict[str, list[str]] = {
    "porn": ["sexy", "porn"],
    "terrorism": [
        "bloody", "explosion", "outfit", "logo", "weapon", "politics", "violence", "crowd",
        "parade", "carcrash", "flag", "location", "others",
    ],
    "ad": [
        "ad", "politics", "porn", "abuse", "terrorism", "contraband", "spam", "npx", "qrcode",
        "programCode",
    ],
    "live": ["meaningless", "PIP", "smoking", "drivelive"],
    "logo": ["TV", "trademark"],
}  # fmt: skip


def add_rule(
    *, category: str, note: str, actor: User | AnonymousUser, context: audit.AuditContext
) -> RoutingRule:
    """Add a rule (audited). ValueError with a plain reason when the category is unusable or the
    note too long (limits.TooLong, a ValueError: the note is refused whole, never cut)."""
    category = category.strip()
    if not limits.is_category(category):
        raise ValueError(limits.category_refused("sexy"))
    note = limits.check(note.strip(), limit=limits.RULE_NOTE_MAX, what="note")
    try:
        with transaction.atomic():
            rule = RoutingRule.objects.create(
                category=category,
                note=note,
                created_by=actor if actor.is_authenticated else None,
            )
            audit.record(
                action="routing.rule_added",
                actor=actor,
                reason=rule.note,
                detail={"category": category},
                context=context,
            )
    except IntegrityError:
        raise ValueError(f"There is already a rule for “{category}”.") from None
    return rule


def remove_rule(
    *, rule_id: str, actor: User | AnonymousUser, context: audit.AuditContext
) -> str | None:
    """Remove a rule (audited); the category it held, or None if there was no such rule."""
    pk = limits.whole_number(rule_id)
    if pk is None:
        return None
    with transaction.atomic():
        rule = RoutingRule.objects.select_for_update().filter(pk=pk).first()
        if rule is None:
            return None
        category = rule.category
        rule.delete()
        audit.record(
            action="routing.rule_removed",
            actor=actor,
            detail={"category": category},
            context=context,
        )
    return category


# Every label IMM may name, for the threshold form: a threshold for anything else never applies.
IMM_LABELS = sorted({label for labels in SCENE_CATEGORIES.values() for label in labels})


class Thresholds(NamedTuple):
    approve_below: float | None
    reject_from: float | None


def parse_thresholds(*, category: str, approve_below: str, reject_from: str) -> Thresholds:
    """Read a threshold form; ValueError with a plain reason for an unknown category, a value that
    is not a rate from 0 to 100 (IMM's scale), neither threshold, or an approve threshold above
    the reject one."""
    if category not in IMM_LABELS:
        shown = category if len(category) <= limits.CATEGORY_MAX else category[:20] + "…"
        raise ValueError(f"“{shown}” is not one of IMM's categories ({', '.join(IMM_LABELS)}).")
    thresholds = Thresholds(
        _rate(approve_below, "The auto-approve threshold"),
        _rate(reject_from, "The auto-reject threshold"),
    )
    low, high = thresholds
    if low is None and high is None:
        raise ValueError(
            "Enter an auto-approve threshold, an auto-reject threshold or both "
            "(a rule without thresholds is added on the Routing page)."
        )
    if low is not None and high is not None and low > high:
        raise ValueError(
            f"Auto-approve below {low:g} is above auto-reject from {high:g}: "
            "the approve threshold must not be higher than the reject threshold."
        )
    return thresholds


def _rate(raw: str, what: str) -> float | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = float(raw) if len(raw) <= 20 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise ValueError(f"{what} must be a number from 0 to 100 (IMM's rate, e.g. 95).")
    return value


def set_thresholds(
    *,
    category: str,
    thresholds: Thresholds,
    actor: User | AnonymousUser,
    context: audit.AuditContext,
) -> RoutingRule:
    """Give the category's rule these thresholds, making the rule if there is none (audited, with
    the thresholds before and after). Applies to IMM results recorded from now on."""
    with transaction.atomic():
        rule = RoutingRule.objects.select_for_update().filter(category=category).first()
        if rule is None:
            try:
                # A savepoint: an admin saving the same new category at the same moment wins the
                # insert, and this save then changes the rule that admin made.
                with transaction.atomic():
                    rule = RoutingRule.objects.create(
                        category=category, created_by=actor if actor.is_authenticated else None
                    )
            except IntegrityError:
                rule = RoutingRule.objects.select_for_update().get(category=category)
        before = Thresholds(rule.approve_below, rule.reject_from)
        rule.approve_below, rule.reject_from = thresholds
        rule.save(update_fields=["approve_below", "reject_from"])
        audit.record(
            action="routing.thresholds_set",
            actor=actor,
            reason=f"{category}: people decide rates {rule.band_text}",
            detail={
                "category": category,
                "approve_below": thresholds.approve_below,
                "reject_from": thresholds.reject_from,
                "before": before._asdict(),
            },
            context=context,
        )
    return rule
