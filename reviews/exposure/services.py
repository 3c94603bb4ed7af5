"""Changes people make to exposure limits, each with its audit entry in the same transaction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef

from moderation import limits
from moderation.audit import log as audit
from moderation.models import ImageCategory
from reviews.models import Claim

from . import limits as exposure_limits
from .models import MAX_CAP, ExposureCap, OptOut

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class Invalid(ValueError):
    """A limit that cannot be saved, with the reason in plain words (400, nothing changed)."""


def clean_category(raw: str) -> str:
    category = raw.strip()
    if not limits.is_category(category):
        raise Invalid(limits.category_refused("porn"))
    return category


def clean_images(raw: str) -> int:
    images = limits.whole_number(raw.strip())
    if images is None or not 1 <= images <= MAX_CAP:
        raise Invalid(f"A daily limit is a whole number of images from 1 to {MAX_CAP:,}.")
    return images


def set_cap(*, category: str, images: str, actor: User, context: audit.AuditContext) -> ExposureCap:
    """Add or change the daily cap for `category` ("" is the default), audited."""
    if category:
        category = clean_category(category)
    value = clean_images(images)
    # Two admins adding the same new cap at once: the second insert fails on the unique
    # category, and its second try finds the row and changes it.
    for attempt in range(2):
        try:
            with transaction.atomic():
                cap = ExposureCap.objects.select_for_update().filter(category=category).first()
                before = "" if cap is None else str(cap.images)
                cap = cap or ExposureCap(category=category)
                cap.images = value
                cap.updated_by = actor
                cap.save()
                audit.record(
                    action="exposure.cap_set",
                    actor=actor,
                    state_before=before,
                    state_after=str(value),
                    reason=f"{category or 'default'}: {value} images a day",
                    detail={"category": category, "images": value},
                    context=context,
                )
                transaction.on_commit(exposure_limits.forget)
            return cap
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def remove_cap(*, category: str, actor: User, context: audit.AuditContext) -> int | None:
    """Remove a cap (audited); the images it allowed, or None if there was none."""
    with transaction.atomic():
        cap = ExposureCap.objects.select_for_update().filter(category=category).first()
        if cap is None:
            return None
        images = cap.images
        cap.delete()
        audit.record(
            action="exposure.cap_removed",
            actor=actor,
            state_before=str(images),
            reason=f"{category or 'default'}: no daily limit",
            detail={"category": category},
            context=context,
        )
        transaction.on_commit(exposure_limits.forget)
    return images


def set_opt_outs(
    *, reviewer: User, categories: Iterable[str], context: audit.AuditContext
) -> tuple[list[str], list[str]]:
    """Make the reviewer's opt-outs exactly `categories` (audited when they change); returns
    (added, removed). Invalid (400) for a category name that is not one."""
    wanted = {clean_category(c) for c in categories}
    if len(wanted) > 100:
        raise Invalid("At most 100 categories.")
    with transaction.atomic():
        have = set(
            OptOut.objects.select_for_update()
            .filter(reviewer=reviewer)
            .values_list("category", flat=True)
        )
        added, removed = sorted(wanted - have), sorted(have - wanted)
        if not (added or removed):
            return [], []
        OptOut.objects.filter(reviewer=reviewer, category__in=removed).delete()
        OptOut.objects.bulk_create(
            [OptOut(reviewer=reviewer, category=c) for c in added], ignore_conflicts=True
        )
        # Start reviewing first hands back the item the reviewer holds: one of a category they
        # now opt out of goes back to the queue (the trigger only sees new claims).
        held = Claim.objects.filter(reviewer=reviewer).filter(
            Exists(ImageCategory.objects.filter(image=OuterRef("image"), category__in=added))
        )
        released = held.values_list("image_id", flat=True).first() if added else None
        if released is not None:
            Claim.objects.filter(pk=released, reviewer=reviewer).delete()
        audit.record(
            action="exposure.opt_outs_changed",
            actor=reviewer,
            state_before=", ".join(sorted(have)),
            state_after=", ".join(sorted(wanted)),
            reason="categories Start reviewing no longer hands this reviewer",
            detail={"added": added, "removed": removed, "released": released},
            context=context,
        )
        transaction.on_commit(lambda: exposure_limits.forget(reviewer.pk))
    return added, removed
