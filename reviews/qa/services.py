"""QA work: rates, checking IMM's verdicts, blind double reviews and gold items, adjudication.

Every change a person makes is one transaction with its audit entry. Claims are settled in the
database as the review queue's are: SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL (BEGIN
IMMEDIATE on SQLite), and a partial unique constraint allows one open item per person.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Exists, Q, Subquery
from django.utils import timezone

from moderation import limits
from moderation.audit import log as audit
from moderation.models import Image
from reviews import services as reviews
from reviews.exposure import limits as exposure_limits
from reviews.models import Decision

from .models import DoubleReview, GoldAnswer, GoldItem, ImmCheck, Rate

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.db.models import QuerySet

VERDICT_STATUS = {"approve": Image.Status.APPROVED, "reject": Image.Status.REJECTED}
STATUS_VERDICT = {status: verdict for verdict, status in VERDICT_STATUS.items()}
BLIND_ANSWERS = ("approve", "reject", "escalate")


class QaError(reviews.ReviewError):
    """Refused QA work, with a message for the page and an HTTP status (409 unless said)."""


class Invalid(QaError):
    status = 400


class NotFound(QaError):
    status = 404


# ---- rates ----------------------------------------------------------------------------------


def set_rate(
    *,
    kind: str,
    category: str,
    percent_text: str,
    admin: User,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
) -> Rate | None:
    """Set (or, with an empty percentage, remove) a sampling rate; audited. Invalid (400) when
    the kind, category or number is wrong."""
    if kind not in Rate.Kind.values:
        raise Invalid("Choose what the rate samples: pass, block, double review or gold.")
    category = category.strip()
    if category and kind not in (Rate.Kind.PASS, Rate.Kind.BLOCK):
        raise Invalid("Only IMM's pass and block rates are set per category.")
    if category and not limits.is_category(category):
        raise Invalid(limits.category_refused("porn"))
    text = percent_text.strip()
    value: float | None = None
    if text:
        try:
            value = float(text)
        except ValueError:
            raise Invalid(f"“{text[:20]}” is not a number: give a percentage, e.g. 2.5.") from None
        if not 0 <= value <= 100:
            raise Invalid("A rate is a percentage from 0 to 100.")
    with transaction.atomic():
        before = Rate.objects.filter(kind=kind, category=category).first()
        if value is None:
            Rate.objects.filter(kind=kind, category=category).delete()
            rate = None
        else:
            rate, _ = Rate.objects.update_or_create(
                kind=kind, category=category, defaults={"percent": value}
            )
        audit.record(
            action="qa.rate_set",
            actor=admin,
            state_before="" if before is None else f"{before.percent:g}%",
            state_after="" if value is None else f"{value:g}%",
            detail={"kind": kind, "category": category},
            context=context,
        )
    return rate


# ---- QA of IMM's verdicts -------------------------------------------------------------------


def open_checks() -> Q:
    return Q(state=ImmCheck.State.OPEN)


def held_check(person: User, *, now: datetime) -> ImmCheck | None:
    return (
        ImmCheck.objects.filter(open_checks(), claimed_by=person, claim_expires_at__gt=now)
        .select_related("image")
        .first()
    )


def claim_check(person: User, *, now: datetime | None = None) -> ImmCheck | None:
    """Start QA: the check the person holds, or the oldest open unclaimed one, leased to them."""
    now = now or timezone.now()
    held = held_check(person, now=now)
    if held is not None:
        return held
    # The same pixels reach the person as in the review queue: the same limits apply.
    candidates = _within_limits(
        ImmCheck.objects.filter(open_checks()).filter(
            Q(claimed_by__isnull=True) | Q(claim_expires_at__lte=now)
        ),
        person,
        now=now,
    )
    for _ in range(5):
        try:
            with transaction.atomic():
                check = (
                    candidates.order_by("sampled_at", "id")
                    .select_for_update(skip_locked=True)
                    .first()
                )
                if check is None:
                    return None
                ImmCheck.objects.filter(open_checks(), claimed_by=person).update(claimed_by=None)
                check.claimed_by, check.claim_expires_at = person, now + reviews.lease()
                check.save(update_fields=["claimed_by", "claim_expires_at"])
                return ImmCheck.objects.select_related("image").get(pk=check.pk)
        except IntegrityError:
            continue
    return held_check(person, now=now)


def visible_check(person: User, pk: int, *, now: datetime | None = None) -> ImmCheck | None:
    """The check `pk` if this person may see it: admins any; others only one they hold."""
    now = now or timezone.now()
    checks = ImmCheck.objects.select_related("image", "checked_by")
    if reviews.is_admin(person):
        return checks.filter(pk=pk).first()
    return checks.filter(open_checks(), pk=pk, claimed_by=person, claim_expires_at__gt=now).first()


@dataclass(frozen=True)
class CheckOutcome:
    check: ImmCheck
    message: str


def answer_check(
    *,
    check_id: int,
    person: User,
    action: str,
    reason: str = "",
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
    now: datetime | None = None,
) -> CheckOutcome:
    """Confirm IMM's verdict, or overturn it (approved <-> rejected, as a person's decision).

    A person's decision made meanwhile wins: the check closes with nothing changed, and says so.
    """
    if action not in ("confirm", "overturn"):
        raise Invalid("Choose Confirm or Overturn.")
    reason = reviews.check_words(reason, what="reason")
    if action == "overturn" and not reason:
        raise Invalid("Say why IMM was wrong.")
    now = now or timezone.now()
    with transaction.atomic():
        check = ImmCheck.objects.select_for_update().filter(pk=check_id).first()
        if check is None:
            raise NotFound(f"There is no QA item {check_id}.")
        if check.state != ImmCheck.State.OPEN:
            raise QaError(f"QA item {check_id} is already {check.get_state_display().lower()}.")
        mine = check.claimed_by_id == person.pk and (check.claim_expires_at or now) > now
        if not (mine or reviews.is_admin(person)):
            raise reviews.NotYours(f"QA item {check_id} is not yours; take the next one.")
        image = Image.objects.select_for_update().get(pk=check.image_id)
        check.checked_by, check.checked_at, check.note = person, now, reason
        detail = {"check": check.pk, "imm": check.suggestion, "categories": check.categories}
        if image.human_decided_at is not None or image.status != check.settled_as:
            check.state = ImmCheck.State.CLOSED
            message = (
                f"A person already decided image {image.pk} (it is "
                f"{image.get_status_display().lower()}); their decision stands. "
                "Nothing was changed."
                if image.human_decided_at is not None
                else f"Image {image.pk} is no longer as IMM settled it; nothing was changed."
            )
            audit.record(
                action="qa.imm_check_closed",
                actor=person,
                image=image,
                state_before=image.status,
                state_after=image.status,
                reason=message,
                detail=detail,
                context=context,
            )
        elif action == "confirm":
            check.state = ImmCheck.State.CONFIRMED
            message = f"Confirmed: image {image.pk} stays {image.get_status_display().lower()}."
            audit.record(
                action="qa.imm_confirmed",
                actor=person,
                image=image,
                state_before=image.status,
                state_after=image.status,
                reason=reason,
                detail=detail,
                context=context,
            )
        else:
            to = (
                Image.Status.REJECTED
                if image.status == Image.Status.APPROVED
                else Image.Status.APPROVED
            )
            check.state = ImmCheck.State.OVERTURNED
            reviews.change_outcome(
                image=image,
                to=to,
                person=person,
                reason=reason,
                action="qa.imm_overturned",
                context=context,
                now=now,
                detail=detail,
            )
            message = f"Overturned: image {image.pk} is now {image.get_status_display().lower()}."
        check.claimed_by = None
        check.save()
    return CheckOutcome(check, message)


def release_check(*, check_id: int, person: User) -> None:
    ImmCheck.objects.filter(open_checks(), pk=check_id, claimed_by=person).update(claimed_by=None)


# ---- blind items: double reviews and gold, served through "Start reviewing" -----------------


@dataclass(frozen=True)
class Blind:
    """A blind item the reviewer holds: the image and when it began waiting, nothing else they
    may see (which kind it is, or an earlier decision, stays on the server)."""

    image: Image
    waiting_since: datetime
    double: DoubleReview | None = None
    gold: GoldAnswer | None = None


def _held_doubles(person: User, *, now: datetime) -> QuerySet[DoubleReview]:
    return DoubleReview.objects.filter(
        state=DoubleReview.State.WAITING, claimed_by=person, claim_expires_at__gt=now
    )


def _held_gold(person: User, *, now: datetime) -> QuerySet[GoldAnswer]:
    return GoldAnswer.objects.filter(reviewer=person, verdict="", expires_at__gt=now)


def _waiting_doubles(person: User, *, now: datetime) -> QuerySet[DoubleReview]:
    """Double reviews this person may take: waiting, not held (or the hold expired), of someone
    else's decision."""
    return (
        DoubleReview.objects.filter(state=DoubleReview.State.WAITING)
        .filter(Q(claimed_by__isnull=True) | Q(claim_expires_at__lte=now))
        .exclude(first_reviewer=person)
    )


def held_blind(person: User, *, now: datetime) -> Blind | None:
    double = _held_doubles(person, now=now).select_related("image", "decision").first()
    if double is not None:
        return _blind_double(double)
    gold = _held_gold(person, now=now).select_related("gold__image").first()
    if gold is not None:
        return Blind(image=gold.gold.image, waiting_since=gold.served_at, gold=gold)
    return None


def _blind_double(double: DoubleReview) -> Blind:
    return Blind(
        image=double.image,
        waiting_since=double.decision.status_changed_before or double.created_at,
        double=double,
    )


@dataclass(frozen=True)
class Due:
    """What the blind hook must know before the queue, read together in one query."""

    holds_item: bool  # an ordinary queue item: it comes first
    held_double: bool
    held_gold: bool
    double_waiting: bool  # someone else's decision waiting for a second look
    gold_percent: float


def _due(person: User, *, now: datetime) -> Due:
    gold_rate = Rate.objects.filter(kind=Rate.Kind.GOLD, category="").order_by("-percent")
    row = (
        get_user_model()
        .objects.filter(pk=person.pk)
        .annotate(
            holds_item=Exists(reviews.live_claims(person, now=now)),
            held_double=Exists(_held_doubles(person, now=now)),
            held_gold=Exists(_held_gold(person, now=now)),
            double_waiting=Exists(_waiting_doubles(person, now=now)),
            gold_percent=Subquery(gold_rate.values("percent")[:1]),
        )
        .values("holds_item", "held_double", "held_gold", "double_waiting", "gold_percent")
        .first()
    )
    if row is None:  # no such person (any more): nothing to hand out
        return Due(True, False, False, False, 0.0)
    return Due(
        holds_item=row["holds_item"],
        held_double=row["held_double"],
        held_gold=row["held_gold"],
        double_waiting=row["double_waiting"],
        gold_percent=row["gold_percent"] or 0.0,
    )


def claim_blind(
    person: User, *, now: datetime | None = None, chance: random.Random | None = None
) -> Blind | None:
    """What "Start reviewing" hands out before the queue: the blind item the reviewer holds, a
    double review of someone else's decision, or (at the gold rate) a gold item they have not
    answered. None: the ordinary queue, also when the reviewer holds an ordinary item (it comes
    first). With nothing blind due this is one read, and takes no lock."""
    now = now or timezone.now()
    due = _due(person, now=now)
    if due.holds_item:
        return None
    if due.held_double or due.held_gold:
        held = held_blind(person, now=now)
        if held is not None:
            return held
    if due.double_waiting:
        double = _claim_double(person, now=now)
        if double is not None:
            return _blind_double(double)
    if (chance or random).random() * 100 < due.gold_percent:
        return _serve_gold(person, now=now)
    return None


def _within_limits(items: QuerySet[Any], person: User, *, now: datetime) -> QuerySet[Any]:
    """`items` (with an `image`) without those of a category the person opted out of or whose
    daily limit they reached: blind items obey the same exposure limits as the queue (one read,
    paid only when an item is there to hand out)."""
    blocked = exposure_limits.standing(person.pk, now=now).blocked
    return exposure_limits.without(items, blocked, image="image")


def _claim_double(person: User, *, now: datetime) -> DoubleReview | None:
    waiting = _within_limits(_waiting_doubles(person, now=now), person, now=now)
    for _ in range(5):
        try:
            with transaction.atomic():
                double = (
                    waiting.order_by("created_at", "id")
                    .select_for_update(skip_locked=True, of=("self",))
                    .first()
                )
                if double is None:
                    return None
                # One blind item per person: an expired one of theirs lets go.
                DoubleReview.objects.filter(
                    state=DoubleReview.State.WAITING, claimed_by=person
                ).update(claimed_by=None)
                double.claimed_by, double.claim_expires_at = person, now + reviews.lease()
                double.save(update_fields=["claimed_by", "claim_expires_at"])
                return DoubleReview.objects.select_related("image", "decision").get(pk=double.pk)
        except IntegrityError:
            continue
    return None


def _serve_gold(person: User, *, now: datetime) -> Blind | None:
    gold = (
        _within_limits(
            GoldItem.objects.filter(active=True).exclude(answers__reviewer=person), person, now=now
        )
        .select_related("image")
        .order_by("marked_at", "id")
        .first()
    )
    if gold is None:
        return None
    try:
        with transaction.atomic():
            # An expired open serving is dropped: the item may come back later.
            GoldAnswer.objects.filter(reviewer=person, verdict="").delete()
            answer = GoldAnswer.objects.create(
                gold=gold, reviewer=person, served_at=now, expires_at=now + reviews.lease()
            )
    except IntegrityError:
        return None
    return Blind(image=gold.image, waiting_since=now, gold=answer)


def renew_blind(person: User, *, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    until = now + reviews.lease()
    renewed = DoubleReview.objects.filter(
        state=DoubleReview.State.WAITING, claimed_by=person, claim_expires_at__gt=now
    ).update(claim_expires_at=until)
    renewed += GoldAnswer.objects.filter(reviewer=person, verdict="", expires_at__gt=now).update(
        expires_at=until
    )
    return renewed > 0


def answer_blind(
    *,
    person: User,
    image_id: int,
    action: str,
    reason: str = "",
    category: str = "",
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
    now: datetime | None = None,
) -> str:
    """Record the reviewer's answer on the blind item they hold for `image_id`; returns the
    note for the pane (the same words an ordinary decision gets). Never changes the image."""
    if action not in (*BLIND_ANSWERS, "skip"):
        raise Invalid("Choose Approve, Reject, Escalate or Skip.")
    now = now or timezone.now()
    if action in ("reject", "escalate"):
        reason = reviews.reason_for(verdict=action, category=category, words=reason)
    else:
        reason = ""
    with transaction.atomic():
        double = (
            DoubleReview.objects.select_for_update()
            .filter(state=DoubleReview.State.WAITING, claimed_by=person, image_id=image_id)
            .first()
        )
        gold = (
            None
            if double is not None
            else GoldAnswer.objects.select_for_update()
            .filter(reviewer=person, verdict="", gold__image_id=image_id)
            .select_related("gold")
            .first()
        )
        expires = double.claim_expires_at if double else gold.expires_at if gold else None
        if expires is None or expires <= now:
            raise reviews.NotYours(
                "Your claim on this image has expired; it may be someone else's now. "
                "Take the next item from the queue."
            )
        label = {"approve": "approved", "reject": "rejected", "escalate": "escalated"}
        if double is not None:
            _answer_double(double, person, action, reason, context=context, now=now)
        elif gold is not None:
            _answer_gold(gold, person, action, context=context, now=now)
    if action == "skip":
        return "Skipped; it stays in the queue."
    return f"Image {image_id} {label[action]}."


def _answer_double(
    double: DoubleReview,
    person: User,
    action: str,
    reason: str,
    *,
    context: audit.AuditContext,
    now: datetime,
) -> None:
    image = Image.objects.get(pk=double.image_id)
    if action == "skip":
        double.claimed_by = None
        double.save(update_fields=["claimed_by"])
        audit.record(
            action="qa.double_skipped",
            actor=person,
            image=image,
            detail={"double": double.pk},
            context=context,
        )
        return
    double.second_reviewer, double.second_verdict = person, action
    double.second_reason, double.answered_at = reason, now
    double.claimed_by = None
    double.state = (
        DoubleReview.State.AGREED if action == double.first_verdict else DoubleReview.State.DISPUTED
    )
    double.save()
    audit.record(
        action="qa.double_answered",
        actor=person,
        image=image,
        state_before=image.status,
        state_after=image.status,
        reason=reason,
        detail={"double": double.pk, "answer": action, "outcome": double.state},
        context=context,
    )


def _answer_gold(
    gold: GoldAnswer, person: User, action: str, *, context: audit.AuditContext, now: datetime
) -> None:
    if action == "skip":
        gold.delete()
        return
    gold.verdict, gold.answered_at = action, now
    gold.correct = action == gold.gold.expected
    gold.save(update_fields=["verdict", "answered_at", "correct"])
    audit.record(
        action="qa.gold_answered",
        actor=person,
        image=gold.gold.image,
        detail={"gold": gold.gold_id, "answer": action, "correct": gold.correct},
        context=context,
    )


# ---- adjudication ---------------------------------------------------------------------------


def rule(
    *,
    double_id: int,
    admin: User,
    ruling: str,
    reason: str = "",
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
    now: datetime | None = None,
) -> DoubleReview:
    """An admin's final word on a disputed double review; the image follows it if it differs."""
    if not reviews.is_admin(admin):
        raise reviews.NotYours("Only an admin rules on a disagreement.")
    if ruling not in VERDICT_STATUS:
        raise Invalid("Rule Approve or Reject.")
    reason = reviews.check_words(reason, what="reason")
    now = now or timezone.now()
    with transaction.atomic():
        double = DoubleReview.objects.select_for_update().filter(pk=double_id).first()
        if double is None:
            raise NotFound(f"There is no double review {double_id}.")
        if double.state != DoubleReview.State.DISPUTED:
            raise QaError(
                f"Double review {double_id} is {double.get_state_display().lower()}; "
                "nothing was changed."
            )
        image = Image.objects.select_for_update().get(pk=double.image_id)
        double.ruling, double.ruled_by, double.ruled_at = ruling, admin, now
        double.ruling_reason = reason
        double.state = DoubleReview.State.RULED
        double.save()
        to = VERDICT_STATUS[ruling]
        detail = {"double": double.pk, "ruling": ruling}
        # A person decided the image again since the disputed decision (an override, a reopen
        # and a new decision, a QA overturn): that newer decision stands, as an override by an
        # admin who saw an older page changes nothing. The ruling still scores both reviewers.
        newer = Decision.objects.filter(image=image, pk__gt=double.decision_id).exists()
        double.image = image
        if newer:
            detail["decided_again_since"] = True
        if image.status in reviews.SETTLED and image.status != to and not newer:
            reviews.change_outcome(
                image=image,
                to=to,
                person=admin,
                reason=reason or f"adjudication: {ruling}",
                action="qa.adjudicated",
                context=context,
                now=now,
                detail=detail,
            )
        else:
            audit.record(
                action="qa.adjudicated",
                actor=admin,
                image=image,
                state_before=image.status,
                state_after=image.status,
                reason=reason,
                detail=detail,
                context=context,
            )
    return double


# ---- gold items -----------------------------------------------------------------------------


def mark_gold(
    *,
    image_id: int,
    admin: User,
    expected: str,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
) -> GoldItem:
    """Make a decided image gold with its right answer (or change the answer); audited."""
    if not reviews.is_admin(admin):
        raise reviews.NotYours("Only an admin marks gold items.")
    if expected not in GoldItem.Expected.values:
        raise Invalid("Choose the right answer: approve or reject.")
    with transaction.atomic():
        image = Image.objects.filter(pk=image_id).first()
        if image is None:
            raise NotFound(f"There is no image {image_id}.")
        if image.status not in reviews.SETTLED:
            raise QaError(
                f"Image {image_id} is {image.get_status_display().lower()}; only an approved or "
                "rejected image can be gold."
            )
        gold, _ = GoldItem.objects.update_or_create(
            image=image,
            defaults={"expected": expected, "active": True, "marked_by": admin},
            create_defaults={
                "expected": expected,
                "active": True,
                "marked_by": admin,
                "marked_at": timezone.now(),
            },
        )
        audit.record(
            action="qa.gold_marked",
            actor=admin,
            image=image,
            detail={"gold": gold.pk, "expected": expected},
            context=context,
        )
    return gold


def retire_gold(
    *, gold_id: int, admin: User, context: audit.AuditContext = audit.SYSTEM_CONTEXT
) -> GoldItem:
    if not reviews.is_admin(admin):
        raise reviews.NotYours("Only an admin retires gold items.")
    with transaction.atomic():
        gold = GoldItem.objects.select_for_update().filter(pk=gold_id).first()
        if gold is None:
            raise NotFound(f"There is no gold item {gold_id}.")
        gold.active = False
        gold.save(update_fields=["active"])
        # Open servings end: the reviewers holding them get the ordinary queue next.
        GoldAnswer.objects.filter(gold=gold, verdict="").delete()
        audit.record(
            action="qa.gold_retired",
            actor=admin,
            image=gold.image,
            detail={"gold": gold.pk},
            context=context,
        )
    return gold
