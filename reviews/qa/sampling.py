"""Which automatic verdicts and human decisions get a second look.

Sampling happens in the transaction that settled or decided the image (a receiver of
moderation.signals.auto_settled, and of Decision's post_save), so a sampled item exists exactly
when the outcome it checks was committed. The choice is deterministic: a hash of the image (or
decision) and the kind is compared with the rate, so a replayed IMM result makes the same choice,
and the one-per-image constraint makes a second INSERT a no-op. Reading the outcome events after
the fact would need a cursor and a worker of its own; this costs one small SELECT of the rates
and, for the few sampled, one INSERT.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db.models import Max
from django.utils import timezone

from moderation.models import Image
from reviews.models import Decision

from .models import DoubleReview, ImmCheck, Rate

SAMPLED_VERDICTS = (Decision.Verdict.APPROVE, Decision.Verdict.REJECT)
# The rate that samples an automatic outcome IMM itself left to people (a threshold settled it).
OUTCOME_KIND: dict[str, str] = {
    Image.Status.APPROVED: Rate.Kind.PASS,
    Image.Status.REJECTED: Rate.Kind.BLOCK,
}


def share(kind: str, key: int) -> float:
    """A fixed number in [0, 1) for (kind, key): the same every time, spread evenly."""
    digest = hashlib.sha256(f"qa:{kind}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def imm_percent(suggestion: str, categories: list[str]) -> float:
    """The rate for an IMM verdict: the highest among its categories' rates, else the default."""
    rates = Rate.objects.filter(kind=suggestion, category__in=["", *categories])
    by_category = dict(rates.values_list("category", "percent"))
    named = [by_category[c] for c in categories if c in by_category]
    if named:
        return max(named)
    return by_category.get("", 0.0)


def percent(kind: str) -> float:
    found = Rate.objects.filter(kind=kind, category="").aggregate(p=Max("percent"))["p"]
    return found or 0.0


def sample_auto_settled(
    sender: object, *, image: Image, suggestion: str, categories: list[str], **kwargs: Any
) -> None:
    """Receiver of moderation.signals.auto_settled: maybe one ImmCheck for this image.

    A routing rule's threshold also settles images IMM said "review" for: those are sampled at
    the rate of the outcome (pass for approved, block for rejected), as IMM's own would be.
    """
    kind = (
        suggestion
        if suggestion in (Rate.Kind.PASS, Rate.Kind.BLOCK)
        else OUTCOME_KIND.get(image.status)
    )
    if kind is None:
        return
    if share(kind, image.pk) >= imm_percent(kind, categories) / 100:
        return
    ImmCheck.objects.bulk_create(
        [
            ImmCheck(
                image=image,
                suggestion=suggestion,
                categories=list(categories),
                settled_as=image.status,
                sampled_at=timezone.now(),
            )
        ],
        ignore_conflicts=True,
    )


def on_decision(sender: object, *, instance: Decision, created: bool, **kwargs: Any) -> None:
    """Receiver of Decision's post_save: sample approvals and rejections for a double review,
    and withdraw double reviews the new decision makes moot (an undo, a reopen, an override)."""
    if not created:
        return
    if instance.verdict in SAMPLED_VERDICTS:
        # An admin's word on an escalated item is the last one: no second review of it.
        if instance.status_before == Image.Status.ESCALATED:
            return
        if share(Rate.Kind.DOUBLE, instance.pk) < percent(Rate.Kind.DOUBLE) / 100:
            DoubleReview.objects.create(
                decision=instance,
                image_id=instance.image_id,
                first_reviewer_id=instance.reviewer_id,
                first_verdict=instance.verdict,
                created_at=instance.created_at,
            )
        return
    DoubleReview.objects.filter(
        image_id=instance.image_id, state=DoubleReview.State.WAITING
    ).update(state=DoubleReview.State.WITHDRAWN, claimed_by=None)
