"""Claims, decisions and undo: each a transaction with its audit entry.

Claims are settled in the database. `claim_next` locks the oldest waiting, unclaimed image:
on PostgreSQL with SELECT ... FOR UPDATE SKIP LOCKED, so concurrent reviewers each get a
different row without waiting on each other; on SQLite every transaction begins with BEGIN
IMMEDIATE (see settings), which takes the database's one write lock, so claims are serialised.
Either way Claim's primary key is the image, so a second claim on the same image cannot be
inserted: two reviewers never hold the same item. An expired lease simply stops counting, and
the next claim replaces it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OrderBy, OuterRef, Q, QuerySet
from django.utils import timezone

from moderation import limits
from moderation.audit import log as audit
from moderation.events import outbox
from moderation.events.models import Event
from moderation.models import Image

from .models import Claim, Decision
from .sla import due as sla_due

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

DECIDABLE = (Image.Status.AWAITING_REVIEW, Image.Status.ESCALATED)
ESCALATION_REASON = "sent to an admin for a decision"
FINAL_STATUS: dict[str, str] = {
    Decision.Verdict.APPROVE: Image.Status.APPROVED,
    Decision.Verdict.REJECT: Image.Status.REJECTED,
    Decision.Verdict.ESCALATE: Image.Status.ESCALATED,
}
AUDIT_ACTION: dict[str, str] = {
    Decision.Verdict.APPROVE: "review.approved",
    Decision.Verdict.REJECT: "review.rejected",
    Decision.Verdict.ESCALATE: "review.escalated",
    Decision.Verdict.UNDO: "review.undone",
    Decision.Verdict.REOPEN: "review.reopened",
    Decision.Verdict.OVERRIDE: "review.overridden",
}
EVENT_TYPE: dict[str, str] = {
    Decision.Verdict.APPROVE: Event.Type.APPROVED,
    Decision.Verdict.REJECT: Event.Type.REJECTED,
    Decision.Verdict.ESCALATE: Event.Type.ESCALATED,
}
# Settled images: what an admin may reopen or override.
SETTLED = (Image.Status.APPROVED, Image.Status.REJECTED)


def lease() -> timedelta:
    return timedelta(seconds=settings.REVIEW_LEASE_SECONDS)


def undo_window() -> timedelta:
    return timedelta(seconds=settings.REVIEW_UNDO_SECONDS)


def is_admin(user: User | AnonymousUser) -> bool:
    return user.has_perm("moderation.change_image")


# How the database's refusal of a claim over the reviewer's exposure limits begins (the trigger
# in reviews.exposure's migration 0002).
OVER_LIMIT = "exposure limit"


class OverLimit(Exception):
    """claim_next with `limits_day`: the database refused the image it picked, of a category the
    reviewer opted out of or reached that day's cap for; nothing was claimed."""


class ReviewError(Exception):
    """A decision that cannot be made, with a message for the pane and an HTTP status."""

    status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(ReviewError):
    """The request itself is wrong (a reason missing or too long): 400, nothing changed."""

    status = 400


class NotFound(ReviewError):
    """An image (or decision) this user cannot see: 404, with nothing about its state."""

    status = 404


class AlreadyDecided(ReviewError):
    status = 409


class NotYours(ReviewError):
    status = 403


class UndoRefused(ReviewError):
    status = 409


def not_waiting_message(image_id: int, *, changed_nothing: bool = True) -> str:
    """What a reviewer is told about an image they cannot see: never its status or who decided
    (nor whether it exists at all)."""
    tail = " Nothing was changed." if changed_nothing else ""
    return f"Image {image_id} is no longer waiting for review.{tail}"


def reviewable(user: User | AnonymousUser) -> QuerySet[Image]:
    """The images this user may open or act on in the review pages, by id.

    Reviewers: those awaiting review (Image.objects.visible_to). Admins: also escalated and
    decided ones (their pane shows the outcome); never images that did not reach review.
    """
    return Image.objects.visible_to(user).filter(
        status__in=(*DECIDABLE, Image.Status.APPROVED, Image.Status.REJECTED)
    )


def check_words(text: str, *, what: str, limit: int = limits.WORDS_MAX) -> str:
    """A person's words, stripped, if within `limit`; Invalid (400), saying so, if longer."""
    try:
        return limits.check(text.strip(), limit=limit, what=what)
    except limits.TooLong as error:
        raise Invalid(str(error)) from None


def reason_for(*, verdict: str, category: str = "", words: str = "") -> str:
    """The stored reason for a verdict: the picked category and the person's words, joined.

    Invalid (400) when a reject has neither, an escalation has no note, or either part is over
    its limit (refused whole, never cut).
    """
    category = check_words(category, what="category", limit=limits.CATEGORY_MAX)
    what = "note" if verdict == Decision.Verdict.ESCALATE else "reason"
    words = check_words(words, what=what)
    if verdict == Decision.Verdict.REJECT and not (category or words):
        raise Invalid("Say why: pick a category or write a reason.")
    if verdict == Decision.Verdict.ESCALATE and not (category or words):
        raise Invalid("Add a note for the admin who will look at it.")
    return limits.REASON_JOINER.join(part for part in (category, words) if part)


def waiting(*, now: datetime | None = None) -> QuerySet[Image]:
    """Images waiting for a reviewer, oldest first (escalated ones wait for admins instead)."""
    return Image.objects.filter(status=Image.Status.AWAITING_REVIEW).order_by(
        "status_changed_at", "id"
    )


def unclaimed(queryset: QuerySet[Image], *, now: datetime) -> QuerySet[Image]:
    held = Claim.objects.filter(image=OuterRef("pk"), expires_at__gt=now)
    return queryset.filter(~Exists(held))


def _live(now: datetime) -> Q:
    """A claim that still holds its image: not expired, on an image still waiting for a person."""
    return Q(expires_at__gt=now, image__status__in=DECIDABLE)


def live_claims(reviewer: User, *, now: datetime) -> QuerySet[Claim]:
    """The reviewer's claims that still hold their image (at most one)."""
    return Claim.objects.filter(_live(now), reviewer=reviewer).order_by("claimed_at")


def current_claim(reviewer: User, *, now: datetime | None = None) -> Claim | None:
    return live_claims(reviewer, now=now or timezone.now()).select_related("image").first()


def held_image_id(reviewer: User, *, now: datetime | None = None) -> int | None:
    """The id of the image the reviewer holds, if any (current_claim without the rows)."""
    return (
        live_claims(reviewer, now=now or timezone.now()).values_list("image_id", flat=True).first()
    )


def claim_next(
    *,
    reviewer: User,
    queryset: QuerySet[Image] | None = None,
    now: datetime | None = None,
    exclude: Iterable[int] = (),
    order: Sequence[str | OrderBy] = ("status_changed_at", "id"),
    limits_day: date | None = None,
) -> Claim | None:
    """The reviewer's current item, or the first unclaimed waiting one in `order` (oldest
    first unless told), leased to them.

    `queryset` narrows the queue (the queue page's filters, a reviewer's limits); `exclude`
    skips images (the one just skipped); `limits_day`, if given, holds the claim to the
    reviewer's exposure limits of that day in the database (Claim.limits_day): an image of a
    category they opted out of or reached the cap of is refused with OverLimit, nothing
    claimed (reviews.exposure.limits). Returns None when nothing is waiting.
    """
    now = now or timezone.now()
    excluded = set(exclude)
    if not excluded:
        # Someone who just let an item go (a decision, a skip: `exclude` names it) holds
        # nothing, so only a plain "Start reviewing" looks for a held item first; otherwise the
        # constraint below finds it (a double click, a second tab).
        held = _renew_held(reviewer, now=now, excluded=excluded)
        if held is not None:
            return held
    candidates = unclaimed(queryset if queryset is not None else waiting(), now=now)
    candidates = candidates.exclude(pk__in=excluded).filter(status=Image.Status.AWAITING_REVIEW)
    for _ in range(5):  # a lost race is retried: another row, or the claim a double click made
        try:
            with transaction.atomic():
                image = (
                    candidates.order_by(*order)
                    .select_for_update(skip_locked=True, of=("self",))
                    .first()
                )
                if image is None:
                    break
                # One claim per reviewer (a database constraint): taking a new item lets go of
                # the reviewer's expired or skipped claim; an expired claim on this image is
                # replaced. Never a live claim: while the reviewer holds one, the insert below
                # fails on the constraint and the item they hold is handed back (a double click
                # on Next: the second click finds the claim the first one committed).
                Claim.objects.filter(
                    Q(reviewer=reviewer, expires_at__lte=now)
                    | Q(reviewer=reviewer, image_id__in=excluded)
                    | Q(image=image, expires_at__lte=now)
                ).delete()
                return Claim.objects.create(
                    image=image,
                    reviewer=reviewer,
                    claimed_at=now,
                    expires_at=now + lease(),
                    limits_day=limits_day,
                )
        except IntegrityError as error:
            if limits_day is not None and OVER_LIMIT in str(error):
                raise OverLimit(str(error)) from error
            # The reviewer holds a live claim, or another reviewer took this image after our
            # snapshot was taken (the retry picks another).
            held = _renew_held(reviewer, now=now, excluded=excluded)
            if held is not None:
                return held
            # A live claim on an image that was settled meanwhile (IMM's own review, an
            # admin) holds nothing any more: let it go.
            Claim.objects.filter(reviewer=reviewer).exclude(image__status__in=DECIDABLE).delete()
    return _renew_held(reviewer, now=now, excluded=excluded)


def _renew_held(reviewer: User, *, now: datetime, excluded: set[int]) -> Claim | None:
    with transaction.atomic():
        held = current_claim(reviewer, now=now)
        if held is None or held.image_id in excluded:
            return None
        return renew(claim=held, now=now)


def renew(*, claim: Claim, now: datetime | None = None) -> Claim | None:
    """Extend a live claim (the pane does this while the reviewer is active).

    None if the claim is gone or has expired meanwhile (decided in another tab, replaced).
    """
    expires_at = extend_lease(image_id=claim.pk, reviewer_id=claim.reviewer_id, now=now)
    if expires_at is None:
        return None
    claim.expires_at = expires_at
    return claim


def extend_lease(
    *, image_id: int, reviewer_id: int, now: datetime | None = None
) -> datetime | None:
    """Extend the reviewer's live claim on the image in one conditional UPDATE.

    Returns the new expiry, or None if the reviewer holds no live claim on it (none, someone
    else's, expired, or on an image settled meanwhile: by an admin, or IMM's own manual review).
    """
    now = now or timezone.now()
    expires_at = now + lease()
    renewed = Claim.objects.filter(_live(now), pk=image_id, reviewer_id=reviewer_id).update(
        expires_at=expires_at
    )
    return expires_at if renewed else None


def release(
    *, image: Image, reviewer: User, context: audit.AuditContext = audit.SYSTEM_CONTEXT
) -> bool:
    """Skip: give the item back to the queue (audited). False if the reviewer did not hold it."""
    with transaction.atomic():
        claim = Claim.objects.select_for_update().filter(image=image, reviewer=reviewer).first()
        if claim is None:
            return False
        claim.delete()
        audit.record(
            action="review.released",
            actor=reviewer,
            image=image,
            state_before=image.status,
            state_after=image.status,
            detail=_imm_detail(image),
            context=context,
        )
    return True


def _imm_detail(image: Image, **extra: Any) -> dict[str, Any]:
    return {
        "imm_suggestion": image.imm_suggestion,
        "imm_categories": image.imm_categories,
        "imm_rate": image.imm_rate,
        **extra,
    }


def _take_claim(image_id: int) -> Claim | None:
    """Delete the image's claim and return it (as it was), or None if there was none."""
    table = connection.ops.quote_name(Claim._meta.db_table)
    column = connection.ops.quote_name(Claim._meta.pk.column)
    taken = Claim.objects.raw(
        f"DELETE FROM {table} WHERE {column} = %s RETURNING *",  # noqa: S608 - names, not data
        [image_id],
    )
    return next(iter(taken), None)


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    image: Image


def decide(
    *,
    image_id: int,
    reviewer: User,
    verdict: str,
    reason: str = "",
    category: str = "",
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
    now: datetime | None = None,
) -> Outcome:
    """Approve, reject or escalate one image: decision, status and audit entry in one transaction.

    `reason` is the person's words (the escalation note), `category` the reject category picked
    from the list; both are stored whole, joined (see reason_for), or refused with Invalid (400).
    Only the reviewer holding a live claim, or an admin, may decide; only admins decide escalated
    images. An image the reviewer cannot see (not awaiting review: settled meanwhile, or never
    theirs to see) raises NotFound (404) and says nothing of its state. For an admin, an image
    that is no longer waiting raises AlreadyDecided (409) with its status: nothing is overwritten.
    """
    if verdict not in FINAL_STATUS:
        raise ValueError(f"unknown verdict {verdict!r}")
    reason = reason_for(verdict=verdict, category=category, words=reason)
    now = now or timezone.now()
    admin = is_admin(reviewer)
    with transaction.atomic():
        # Read through what this person may see, in the locking read itself: an image settled
        # while a reviewer waited for the lock is simply not found (PostgreSQL re-checks the
        # status of a row it waited for).
        image = Image.objects.visible_to(reviewer).select_for_update().filter(pk=image_id).first()
        if image is None and not admin:
            raise NotFound(not_waiting_message(image_id))
        if image is None:
            raise Image.DoesNotExist(f"no image {image_id}")
        if image.status not in DECIDABLE:
            last = image.decisions.order_by("-created_at", "-id").first()
            who = f" by {last.reviewer.get_username()}" if last else ""
            raise AlreadyDecided(
                f"Image {image.pk} was already decided{who}: it is "
                f"{image.get_status_display().lower()}. Nothing was changed."
            )
        # The claim is taken off as it is read (DELETE ... RETURNING: one statement, not a
        # locking SELECT and a DELETE); a refusal below raises, which rolls the delete back.
        claim = _take_claim(image.pk)
        live = claim is not None and claim.expires_at > now
        if image.status == Image.Status.ESCALATED and not admin:
            raise NotYours("Only an admin decides an escalated image.")
        if not admin and not (live and claim is not None and claim.reviewer_id == reviewer.pk):
            holder = (
                f"{claim.reviewer.get_username()} holds it now"
                if live and claim is not None
                else "your claim on it has expired"
            )
            raise NotYours(f"You can no longer decide image {image.pk}: {holder}.")
        if verdict == Decision.Verdict.ESCALATE and image.status == Image.Status.ESCALATED:
            raise AlreadyDecided(f"Image {image.pk} is already escalated.")
        before, waited_since = image.status, image.status_changed_at
        decided_before = image.human_decided_at
        after = FINAL_STATUS[verdict]
        image.status = after
        image.status_changed_at = now
        image.human_decided_at = now if after != Image.Status.ESCALATED else None
        image.save(update_fields=["status", "status_changed_at", "human_decided_at"])
        sla_due.forget(image.pk)
        seconds = (
            (now - claim.claimed_at).total_seconds()
            if claim is not None and claim.reviewer_id == reviewer.pk
            else None
        )
        decision = Decision.objects.create(
            image=image,
            reviewer=reviewer,
            verdict=verdict,
            reason=reason,
            status_before=before,
            status_after=after,
            status_changed_before=waited_since,
            human_decided_before=decided_before,
            seconds=seconds,
            created_at=now,
        )
        audit.record(
            action=AUDIT_ACTION[verdict],
            actor=reviewer,
            image=image,
            state_before=before,
            state_after=after,
            reason=reason,
            detail=_imm_detail(image, decision=decision.pk, seconds=seconds),
            context=context,
        )
        outbox.emit_outcome(
            image=image,
            type=EVENT_TYPE[verdict],
            decided_by=outbox.DecidedBy.person(reviewer),
            verdict=after,
            # An escalation note is a reviewer's word to the admins (the audit log keeps it);
            # the platforms that read events are told only where the image went.
            reason=ESCALATION_REASON if verdict == Decision.Verdict.ESCALATE else reason,
            previous_status=before,
            now=now,
        )
    return Outcome(decision, image)


def undo(
    *,
    decision_id: int,
    reviewer: User,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
    now: datetime | None = None,
) -> Outcome:
    """Take back one's own decision within the undo window: a new audited event, not an edit.

    Keyed on the decision, which must be the caller's own (NotFound, 404, otherwise): a reviewer
    undoes their approve although the image no longer waits for review. The image goes back to
    where it was, with the waiting age it had (its place in the queue), and the reviewer holds
    it again.
    """
    now = now or timezone.now()
    with transaction.atomic():
        original = (
            Decision.objects.undoable_kinds()
            .select_for_update()
            .filter(pk=decision_id, reviewer=reviewer)
            .first()
        )
        if original is None:
            raise NotFound("There is no decision of yours to undo.")
        if now - original.created_at > undo_window():
            raise UndoRefused(
                f"Too late to undo: decisions can be undone for {settings.REVIEW_UNDO_SECONDS} "
                "seconds."
            )
        if Decision.objects.filter(undoes=original).exists():
            raise UndoRefused("That decision was already undone.")
        image = Image.objects.select_for_update().get(pk=original.image_id)
        # An admin's reopen or override since (even one that ended where the decision left it)
        # is a newer decision: the reviewer's undo would silently take it back.
        changed = Decision.objects.filter(image=image, pk__gt=original.pk).exists()
        if changed or image.status != original.status_after:
            # Reviewers are not told what it is now (they cannot see it any more); admins are.
            now_is = f" ({image.get_status_display().lower()})" if is_admin(reviewer) else ""
            raise UndoRefused(
                f"Image {image.pk} has changed since your decision{now_is}; it cannot be undone."
            )
        decided_at = image.status_changed_at
        image.status = original.status_before
        image.status_changed_at = original.status_changed_before or now
        # Back to what it was: none (IMM's word may settle it again), or an admin's reopen.
        image.human_decided_at = original.human_decided_before
        image.save(update_fields=["status", "status_changed_at", "human_decided_at"])
        sla_due.sync(image)
        decision = Decision.objects.create(
            image=image,
            reviewer=reviewer,
            verdict=Decision.Verdict.UNDO,
            undoes=original,
            status_before=original.status_after,
            status_after=original.status_before,
            status_changed_before=decided_at,
            created_at=now,
        )
        # The reviewer goes back to this image; whatever they were given next returns to the queue.
        Claim.objects.filter(Q(image=image) | Q(reviewer=reviewer)).delete()
        if image.status == Image.Status.AWAITING_REVIEW:
            Claim.objects.create(
                image=image, reviewer=reviewer, claimed_at=now, expires_at=now + lease()
            )
        audit.record(
            action=AUDIT_ACTION[Decision.Verdict.UNDO],
            actor=reviewer,
            image=image,
            state_before=original.status_after,
            state_after=original.status_before,
            reason=f"undid {original.get_verdict_display().lower()} (decision {original.pk})",
            detail=_imm_detail(image, decision=decision.pk, undoes=original.pk),
            context=context,
        )
        outbox.emit_outcome(
            image=image,
            type=Event.Type.UNDONE,
            decided_by=outbox.DecidedBy.person(reviewer),
            verdict="undone",
            reason=f"undid {original.get_verdict_display().lower()}",
            previous_status=original.status_after,
            now=now,
        )
    return Outcome(decision, image)


def _settled_image(*, image_id: int, admin: User, expected: str | None, what: str) -> Image:
    """The settled image `image_id`, locked, for an admin's reopen or override.

    NotYours (403) for a non-admin; NotFound (404) if there is no such image; AlreadyDecided
    (409) if it is not settled, or is no longer `expected` (what the admin's page showed): the
    admin is told what it is now, and nothing is overwritten.
    """
    if not is_admin(admin):
        raise NotYours(f"Only an admin may {what} an image.")
    image = Image.objects.select_for_update().filter(pk=image_id).first()
    if image is None:
        raise NotFound(f"There is no image {image_id}.")
    now_is = image.get_status_display().lower()
    if expected is not None and image.status != expected:
        raise AlreadyDecided(
            f"Image {image.pk} changed meanwhile: it is {now_is} now. Nothing was changed."
        )
    if image.status not in SETTLED:
        raise AlreadyDecided(
            f"Image {image.pk} is {now_is}; only an approved or rejected image can be "
            f"{'reopened' if what == 'reopen' else 'overridden'}. Nothing was changed."
        )
    return image


def reopen(
    *,
    image_id: int,
    admin: User,
    reason: str,
    expected: str | None = None,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
    now: datetime | None = None,
) -> Outcome:
    """An admin sends a settled (approved or rejected) image back to the review queue.

    A Decision (reopen), the audit entry and the image.reopened event in one transaction, with
    the image row locked. The reason is required (Invalid, 400). `expected` is the status the
    admin saw: another change meanwhile raises AlreadyDecided (409). The reopen is a person's
    decision: IMM's later word does not settle the image (human_decided_at is set) until a
    reviewer decides it.
    """
    reason = check_words(reason, what="reason")
    if not reason:
        raise Invalid("Say why it goes back to review.")
    now = now or timezone.now()
    with transaction.atomic():
        image = _settled_image(image_id=image_id, admin=admin, expected=expected, what="reopen")
        before, settled_at, decided_before = (
            image.status,
            image.status_changed_at,
            image.human_decided_at,
        )
        image.status = Image.Status.AWAITING_REVIEW
        image.status_changed_at = now
        image.human_decided_at = now
        image.save(update_fields=["status", "status_changed_at", "human_decided_at"])
        sla_due.sync(image)
        # A lease left from before it was settled (IMM settled it while a reviewer held it)
        # would come back to life with the status: the reopened image waits for anyone.
        Claim.objects.filter(image=image).delete()
        decision = Decision.objects.create(
            image=image,
            reviewer=admin,
            verdict=Decision.Verdict.REOPEN,
            reason=reason,
            status_before=before,
            status_after=image.status,
            status_changed_before=settled_at,
            human_decided_before=decided_before,
            created_at=now,
        )
        audit.record(
            action=AUDIT_ACTION[Decision.Verdict.REOPEN],
            actor=admin,
            image=image,
            state_before=before,
            state_after=image.status,
            reason=reason,
            detail=_imm_detail(image, decision=decision.pk),
            context=context,
        )
        outbox.emit_outcome(
            image=image,
            type=Event.Type.REOPENED,
            decided_by=outbox.DecidedBy.person(admin),
            verdict="reopened",
            reason=reason,
            previous_status=before,
            now=now,
        )
    return Outcome(decision, image)


def override(
    *,
    image_id: int,
    admin: User,
    to: str,
    reason: str,
    expected: str | None = None,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
    now: datetime | None = None,
) -> Outcome:
    """An admin changes a settled image's outcome: approved to rejected, or rejected to approved.

    `to` is the outcome wanted (Invalid, 400, unless approved or rejected); an image that is
    already `to`, or no longer `expected`, raises AlreadyDecided (409), so two admins never flip
    it back and forth unawares. A Decision (override), the audit entry and the image.overridden
    event in one transaction; it is a person's decision, which IMM never overwrites.
    """
    if to not in SETTLED:
        raise Invalid("Choose the outcome: approved or rejected.")
    reason = check_words(reason, what="reason")
    if not reason:
        raise Invalid("Say why the outcome changes.")
    now = now or timezone.now()
    with transaction.atomic():
        image = _settled_image(image_id=image_id, admin=admin, expected=expected, what="override")
        if image.status == to:
            raise AlreadyDecided(
                f"Image {image.pk} is already {image.get_status_display().lower()}. "
                "Nothing was changed."
            )
        decision = change_outcome(
            image=image,
            to=to,
            person=admin,
            reason=reason,
            action=AUDIT_ACTION[Decision.Verdict.OVERRIDE],
            context=context,
            now=now,
            detail=_imm_detail(image),
        )
    return Outcome(decision, image)


def change_outcome(
    *,
    image: Image,
    to: str,
    person: User,
    reason: str,
    action: str,
    context: audit.AuditContext,
    now: datetime,
    detail: Mapping[str, Any],
) -> Decision:
    """Set a locked, settled image to `to` as a person's decision (IMM never overwrites it): a
    Decision (override), the audit entry `action` (its detail and the decision's id) and the
    image.overridden event, in the caller's transaction. An admin's override and QA's overturns
    and rulings all change an outcome this way."""
    before, settled_at, decided_before = (
        image.status,
        image.status_changed_at,
        image.human_decided_at,
    )
    image.status = to
    image.status_changed_at = now
    image.human_decided_at = now
    image.save(update_fields=["status", "status_changed_at", "human_decided_at"])
    decision = Decision.objects.create(
        image=image,
        reviewer=person,
        verdict=Decision.Verdict.OVERRIDE,
        reason=reason,
        status_before=before,
        status_after=to,
        status_changed_before=settled_at,
        human_decided_before=decided_before,
        created_at=now,
    )
    audit.record(
        action=action,
        actor=person,
        image=image,
        state_before=before,
        state_after=to,
        reason=reason,
        detail={**detail, "decision": decision.pk},
        context=context,
    )
    outbox.emit_outcome(
        image=image,
        type=Event.Type.OVERRIDDEN,
        decided_by=outbox.DecidedBy.person(person),
        verdict=to,
        reason=reason,
        previous_status=before,
        now=now,
    )
    return decision
