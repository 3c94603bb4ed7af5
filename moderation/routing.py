"""Routing rules: categories that send an image to human review whatever IMM suggests."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    if not category or len(category) > limits.CATEGORY_MAX or any(c.isspace() for c in category):
        raise ValueError(
            f"A category is one word of at most {limits.CATEGORY_MAX} characters, e.g. sexy."
        )
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
