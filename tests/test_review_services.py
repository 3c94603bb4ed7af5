"""The review queue's services: claims, Skip, decisions and undo, each checked in the database
and in the audit log, and the queue worked by concurrent reviewers on both databases."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import IntegrityError, connection
from django.utils import timezone

from moderation.accounts import create_user
from moderation.audit import log as audit
from moderation.models import AuditEntry, Image
from reviews import services
from reviews.models import Claim, Decision

from .audit_log import assert_log_verifies
from .conftest import PASSWORD, postgres_only

APPROVE, REJECT, ESCALATE, UNDO = (
    Decision.Verdict.APPROVE,
    Decision.Verdict.REJECT,
    Decision.Verdict.ESCALATE,
    Decision.Verdict.UNDO,
)
WAITING, ESCALATED = Image.Status.AWAITING_REVIEW, Image.Status.ESCALATED
APPROVED, REJECTED = Image.Status.APPROVED, Image.Status.REJECTED
CLIENT = audit.AuditContext("198.51.100.23", "pytest-review/1.0")
NOT_WAITING = [status for status in Image.Status.values if status != WAITING]


# ---------------------------------------------------------------------------------- helpers


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def user(username: str, role: str = "reviewer") -> Any:
    return create_user(username=username, role=role, password=PASSWORD, validate=False)


@pytest.fixture
def t0() -> datetime:
    return timezone.now()


@pytest.fixture
def other_reviewer(db) -> Any:
    return user("rio")


@pytest.fixture
def queued(make_image, t0) -> Callable[..., Image]:
    """A waiting image whose status changed `age` before t0, with IMM's verdict on it."""

    def make(
        *,
        age: timedelta = timedelta(0),
        status: str = WAITING,
        suggestion: str = "review",
        categories: tuple[str, ...] = ("porn",),
    ) -> Image:
        image = make_image(status=status)
        Image.objects.filter(pk=image.pk).update(
            status_changed_at=t0 - seconds(3600) - age,
            imm_suggestion=suggestion,
            imm_categories=list(categories),
        )
        image.refresh_from_db()
        return image

    return make


def bare_waiting_images(n: int) -> list[Image]:
    """n waiting images as plain rows (no files): enough for the queue, fast to make."""
    start = timezone.now() - seconds(86400)
    Image.objects.bulk_create(
        Image(
            file=f"images/{i:02x}/{i:064x}.png",
            sha256=f"{i:064x}",
            format=Image.Format.PNG,
            width=320,
            height=240,
            byte_size=1000 + i,
            original_filename=f"queued-{i}.png",
            status=WAITING,
            imm_suggestion="review",
            imm_categories=["porn"] if i % 2 else ["terrorism", "ad"],
        )
        for i in range(1, n + 1)
    )
    images = list(Image.objects.order_by("id"))
    for i, image in enumerate(images):
        Image.objects.filter(pk=image.pk).update(status_changed_at=start + seconds(i))
    return images


def state_of(image: Image) -> dict[str, Any]:
    """Everything a review action can change about one image, to prove that nothing did."""
    return {
        "image": Image.objects.filter(pk=image.pk)
        .values("status", "status_changed_at", "human_decided_at")
        .get(),
        "decisions": list(Decision.objects.filter(image=image).order_by("id").values()),
        "claims": list(Claim.objects.filter(image=image).values()),
        "audit": list(AuditEntry.objects.order_by("id").values_list("id", "entry_hash")),
    }


def review_entries(image: Image) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(image=image, action__startswith="review.").order_by("id"))


def assert_entry(
    entry: AuditEntry,
    *,
    action: str,
    actor: Any,
    before: str,
    after: str,
    suggestion: str,
    categories: list[str],
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
) -> None:
    assert entry.action == action
    assert entry.actor_id == actor.pk
    assert entry.actor_label == actor.username
    assert (entry.state_before, entry.state_after) == (before, after)
    assert entry.detail["imm_suggestion"] == suggestion
    assert entry.detail["imm_categories"] == categories
    assert (entry.ip_address, entry.user_agent) == (context.ip_address, context.user_agent)


def claimed(reviewer: Any, at: datetime, **kwargs: Any) -> Claim:
    claim = services.claim_next(reviewer=reviewer, now=at, **kwargs)
    assert claim is not None
    return claim


# -------------------------------------------------------------------------------- claiming


@pytest.mark.django_db
def test_the_oldest_waiting_image_is_claimed_first_by_status_change_then_id(
    queued, reviewer_user, other_reviewer, admin_user, t0
):
    tie_a = queued(age=seconds(60))
    newest = queued(age=seconds(0))
    oldest = queued(age=seconds(600))
    tie_b = queued(age=seconds(60))
    assert tie_a.pk < newest.pk < oldest.pk < tie_b.pk

    order = [claimed(who, t0).image_id for who in (reviewer_user, other_reviewer, admin_user)]
    order.append(claimed(user("ray"), t0).image_id)

    assert order == [oldest.pk, tie_a.pk, tie_b.pk, newest.pk]
    assert Claim.objects.count() == 4


@pytest.mark.django_db
def test_a_claim_is_a_lease_of_review_lease_seconds(queued, reviewer_user, settings, t0):
    settings.REVIEW_LEASE_SECONDS = 120
    image = queued()

    claim = claimed(reviewer_user, t0)

    stored = Claim.objects.get(image=image)
    assert (stored.reviewer, stored.claimed_at, stored.expires_at) == (
        reviewer_user,
        t0,
        t0 + seconds(120),
    )
    assert claim.expires_at == stored.expires_at


@pytest.mark.django_db
def test_the_reviewers_live_claim_is_returned_again_and_renewed_rather_than_a_second_one(
    queued, reviewer_user, t0
):
    first, _second = queued(age=seconds(10)), queued()

    claimed(reviewer_user, t0)
    again = claimed(reviewer_user, t0 + seconds(100))

    assert again.image_id == first.pk
    [claim] = Claim.objects.filter(reviewer=reviewer_user)
    assert claim.image_id == first.pk
    assert claim.claimed_at == t0  # the claim is the same one, only extended
    assert claim.expires_at == t0 + seconds(100) + services.lease()


@pytest.mark.django_db
def test_an_expired_lease_puts_the_item_back_for_the_next_reviewer(
    queued, reviewer_user, other_reviewer, t0
):
    image = queued()
    claimed(reviewer_user, t0)
    lease = services.lease()

    assert services.claim_next(reviewer=other_reviewer, now=t0 + lease - seconds(1)) is None
    assert services.current_claim(reviewer_user, now=t0 + lease - seconds(1)) is not None
    # The lease ends at its expiry time exactly.
    taken = claimed(other_reviewer, t0 + lease)

    assert taken.image_id == image.pk
    assert services.current_claim(reviewer_user, now=t0 + lease) is None
    [claim] = Claim.objects.all()
    assert (claim.reviewer, claim.claimed_at) == (other_reviewer, t0 + lease)


@pytest.mark.django_db
def test_an_expired_lease_puts_the_item_back_on_the_real_clock(
    queued, reviewer_user, other_reviewer
):
    image = queued()
    with time_machine.travel(timezone.now(), tick=False) as clock:
        mine = services.claim_next(reviewer=reviewer_user)
        assert mine is not None
        assert mine.image_id == image.pk
        clock.shift(services.lease() - seconds(1))
        assert services.claim_next(reviewer=other_reviewer) is None
        clock.shift(seconds(1))
        theirs = services.claim_next(reviewer=other_reviewer)

    assert theirs is not None
    assert theirs.image_id == image.pk
    assert Claim.objects.get().reviewer == other_reviewer


@pytest.mark.django_db
def test_exclude_skips_the_given_images(queued, reviewer_user, other_reviewer, t0):
    oldest, middle, newest = queued(age=seconds(20)), queued(age=seconds(10)), queued()

    assert claimed(reviewer_user, t0, exclude=[oldest.pk]).image_id == middle.pk
    assert claimed(other_reviewer, t0, exclude=[oldest.pk, middle.pk]).image_id == newest.pk
    assert services.claim_next(reviewer=user("ray"), now=t0, exclude=[oldest.pk]) is None


@pytest.mark.django_db
def test_a_held_item_that_is_excluded_is_not_returned_again(queued, reviewer_user, t0):
    held, other = queued(age=seconds(10)), queued()
    claimed(reviewer_user, t0)

    assert claimed(reviewer_user, t0, exclude=[held.pk]).image_id == other.pk


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["reviewer", "admin"])
def test_escalated_and_other_non_waiting_images_are_never_claimed(queued, t0, role):
    for status in NOT_WAITING:
        queued(status=status, age=seconds(1000))
    someone = user("sam", role)

    assert services.claim_next(reviewer=someone, now=t0) is None
    assert services.claim_next(reviewer=someone, now=t0, queryset=Image.objects.all()) is None
    assert not Claim.objects.exists()

    waiting = queued()
    assert claimed(someone, t0, queryset=Image.objects.all()).image_id == waiting.pk


@pytest.mark.django_db
def test_nothing_to_claim_is_none(queued, reviewer_user, other_reviewer, t0):
    assert services.claim_next(reviewer=reviewer_user, now=t0) is None
    assert not Claim.objects.exists()

    queued()
    claimed(other_reviewer, t0)
    assert services.claim_next(reviewer=reviewer_user, now=t0) is None  # the one is held
    assert Claim.objects.count() == 1


@pytest.mark.django_db
def test_a_queryset_narrows_the_queue(queued, reviewer_user, other_reviewer, t0):
    queued(age=seconds(30), suggestion="review", categories=("porn",))
    blocked = queued(age=seconds(20), suggestion="block", categories=("terrorism",))
    queued(age=seconds(10), suggestion="review", categories=("terrorism",))
    narrowed = services.waiting().filter(imm_suggestion="block")

    assert claimed(reviewer_user, t0, queryset=narrowed).image_id == blocked.pk
    assert services.claim_next(reviewer=other_reviewer, now=t0, queryset=narrowed) is None
    assert Claim.objects.count() == 1


@pytest.mark.django_db
def test_a_stale_read_of_the_queue_cannot_take_over_a_live_claim(
    queued, reviewer_user, other_reviewer, t0, monkeypatch
):
    # On PostgreSQL a claimer whose snapshot predates another's commit can pick an image that was
    # just claimed; only the Claim primary key stops it. Simulate that read: no claim is seen.
    held, other = queued(age=seconds(10)), queued()
    mine = claimed(reviewer_user, t0)
    monkeypatch.setattr(services, "unclaimed", lambda queryset, *, now: queryset)

    taken = services.claim_next(reviewer=other_reviewer, now=t0 + seconds(1))

    assert taken is None or taken.image_id == other.pk
    claim = Claim.objects.get(image=held)
    assert (claim.reviewer, claim.expires_at) == (reviewer_user, mine.expires_at)


# ------------------------------------------------------------------------------ Skip


@pytest.mark.django_db
def test_release_gives_the_item_back_to_the_queue_and_is_audited(
    queued, reviewer_user, other_reviewer, t0
):
    image = queued(suggestion="block", categories=("porn", "sexy"))
    claimed(reviewer_user, t0)

    assert services.release(image=image, reviewer=reviewer_user, context=CLIENT) is True

    assert not Claim.objects.exists()
    [entry] = review_entries(image)
    assert_entry(
        entry,
        action="review.released",
        actor=reviewer_user,
        before=WAITING,
        after=WAITING,
        suggestion="block",
        categories=["porn", "sexy"],
        context=CLIENT,
    )
    assert claimed(other_reviewer, t0 + seconds(1)).image_id == image.pk
    assert_log_verifies()


@pytest.mark.django_db
def test_releasing_an_item_you_do_not_hold_returns_false_and_writes_nothing(
    queued, reviewer_user, other_reviewer, t0
):
    image = queued()
    nobody_holds = state_of(image)
    assert services.release(image=image, reviewer=reviewer_user) is False
    assert state_of(image) == nobody_holds

    claimed(other_reviewer, t0)
    theirs = state_of(image)
    assert services.release(image=image, reviewer=reviewer_user) is False
    assert state_of(image) == theirs
    assert Claim.objects.get().reviewer == other_reviewer


# ------------------------------------------------------------------------------ deciding


@pytest.mark.django_db
def test_approving_sets_approved_with_human_decided_at_a_decision_and_an_audit_entry(
    queued, reviewer_user, t0
):
    image = queued(suggestion="review", categories=("sexy",))
    claimed(reviewer_user, t0)
    at = t0 + seconds(7)

    outcome = services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, context=CLIENT, now=at
    )

    image.refresh_from_db()
    assert (image.status, image.status_changed_at, image.human_decided_at) == (APPROVED, at, at)
    [decision] = Decision.objects.filter(image=image)
    assert decision == outcome.decision
    assert (decision.reviewer, decision.verdict, decision.reason) == (reviewer_user, APPROVE, "")
    assert (decision.status_before, decision.status_after) == (WAITING, APPROVED)
    assert (decision.created_at, decision.seconds, decision.undoes) == (at, 7.0, None)
    assert not Claim.objects.exists()
    [entry] = review_entries(image)
    assert_entry(
        entry,
        action="review.approved",
        actor=reviewer_user,
        before=WAITING,
        after=APPROVED,
        suggestion="review",
        categories=["sexy"],
        context=CLIENT,
    )
    assert entry.detail["decision"] == decision.pk
    assert entry.detail["seconds"] == 7.0


@pytest.mark.django_db
@pytest.mark.parametrize("reason", ["", "   \n\t"])
def test_rejecting_needs_a_reason(queued, reviewer_user, t0, reason):
    image = queued()
    claimed(reviewer_user, t0)
    before = state_of(image)

    with pytest.raises(services.ReviewError, match="Say why") as refused:
        services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=REJECT, reason=reason)

    assert isinstance(refused.value, services.Invalid)
    assert refused.value.status == 400
    assert state_of(image) == before


@pytest.mark.django_db
def test_rejecting_records_the_reason_on_the_decision_and_in_the_audit_log(
    queued, reviewer_user, t0
):
    image = queued(suggestion="block", categories=("terrorism",))
    claimed(reviewer_user, t0)

    services.decide(
        image_id=image.pk,
        reviewer=reviewer_user,
        verdict=REJECT,
        reason="  violence — a weapon pointed at the camera ",
        now=t0 + seconds(3),
    )

    image.refresh_from_db()
    assert (image.status, image.human_decided_at) == (REJECTED, t0 + seconds(3))
    reason = "violence — a weapon pointed at the camera"
    assert Decision.objects.get(image=image).reason == reason
    [entry] = review_entries(image)
    assert_entry(
        entry,
        action="review.rejected",
        actor=reviewer_user,
        before=WAITING,
        after=REJECTED,
        suggestion="block",
        categories=["terrorism"],
    )
    assert entry.reason == reason


@pytest.mark.django_db
def test_escalating_needs_a_note(queued, reviewer_user, t0):
    image = queued()
    claimed(reviewer_user, t0)
    before = state_of(image)

    with pytest.raises(services.ReviewError, match="Add a note"):
        services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=ESCALATE, reason=" ")

    assert state_of(image) == before


@pytest.mark.django_db
def test_an_escalated_image_is_decided_by_an_admin_only(
    queued, reviewer_user, other_reviewer, admin_user, t0
):
    image = queued(suggestion="review", categories=("porn",))
    claimed(reviewer_user, t0)

    services.decide(
        image_id=image.pk,
        reviewer=reviewer_user,
        verdict=ESCALATE,
        reason="Looks like art; not sure.",
        now=t0 + seconds(5),
    )
    image.refresh_from_db()
    assert (image.status, image.human_decided_at) == (ESCALATED, None)
    assert not Claim.objects.exists()
    # Escalated images are not in the reviewers' queue, and reviewers cannot see or decide them.
    assert services.claim_next(reviewer=other_reviewer, now=t0 + seconds(6)) is None
    for reviewer in (reviewer_user, other_reviewer):
        before = state_of(image)
        with pytest.raises(services.NotFound, match="no longer waiting for review") as refused:
            services.decide(image_id=image.pk, reviewer=reviewer, verdict=APPROVE)
        assert refused.value.status == 404
        assert "escalated" not in refused.value.message
        assert state_of(image) == before
    # IMM's later message changed its verdict: each entry carries the verdict of its moment.
    Image.objects.filter(pk=image.pk).update(imm_categories=["porn", "sexy"])

    outcome = services.decide(
        image_id=image.pk, reviewer=admin_user, verdict=APPROVE, now=t0 + seconds(60)
    )

    image.refresh_from_db()
    assert (image.status, image.human_decided_at) == (APPROVED, t0 + seconds(60))
    assert (outcome.decision.status_before, outcome.decision.status_after) == (ESCALATED, APPROVED)
    assert outcome.decision.seconds is None  # the admin never claimed it
    escalated, approved = review_entries(image)
    assert_entry(
        escalated,
        action="review.escalated",
        actor=reviewer_user,
        before=WAITING,
        after=ESCALATED,
        suggestion="review",
        categories=["porn"],
    )
    assert escalated.reason == "Looks like art; not sure."
    assert_entry(
        approved,
        action="review.approved",
        actor=admin_user,
        before=ESCALATED,
        after=APPROVED,
        suggestion="review",
        categories=["porn", "sexy"],
    )


@pytest.mark.django_db
def test_a_reviewer_without_the_claim_is_refused_with_who_holds_it(
    queued, reviewer_user, other_reviewer, t0
):
    image = queued()
    claimed(other_reviewer, t0)
    before = state_of(image)

    with pytest.raises(services.NotYours, match="rio holds it now") as refused:
        services.decide(
            image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0 + seconds(1)
        )

    assert refused.value.status == 403
    assert state_of(image) == before


@pytest.mark.django_db
def test_a_reviewer_whose_claim_expired_is_refused(queued, reviewer_user, t0):
    image = queued()
    claimed(reviewer_user, t0)
    before = state_of(image)

    with pytest.raises(services.NotYours, match="your claim on it has expired") as refused:
        services.decide(
            image_id=image.pk,
            reviewer=reviewer_user,
            verdict=REJECT,
            reason="spam",
            now=t0 + services.lease(),
        )

    assert refused.value.status == 403
    assert state_of(image) == before


@pytest.mark.django_db
def test_an_admin_may_decide_without_a_claim_even_one_a_reviewer_holds(
    queued, reviewer_user, admin_user, t0
):
    unclaimed, held = queued(), queued(categories=("ad",))
    claimed(reviewer_user, t0, exclude=[unclaimed.pk])

    services.decide(image_id=unclaimed.pk, reviewer=admin_user, verdict=APPROVE, now=t0)
    services.decide(image_id=held.pk, reviewer=admin_user, verdict=REJECT, reason="advert", now=t0)

    assert Image.objects.get(pk=unclaimed.pk).status == APPROVED
    assert Image.objects.get(pk=held.pk).status == REJECTED
    assert not Claim.objects.exists()  # the reviewer's claim ended with the decision
    assert [d.seconds for d in Decision.objects.order_by("id")] == [None, None]
    [entry] = review_entries(held)
    assert_entry(
        entry,
        action="review.rejected",
        actor=admin_user,
        before=WAITING,
        after=REJECTED,
        suggestion="review",
        categories=["ad"],
    )
    with pytest.raises(services.NotFound):
        services.decide(image_id=held.pk, reviewer=reviewer_user, verdict=APPROVE)


@pytest.mark.django_db
@pytest.mark.parametrize(("verdict", "reason"), [(APPROVE, ""), (REJECT, "nsfw"), (ESCALATE, "?")])
def test_an_admin_deciding_an_already_decided_item_gets_409_with_its_status(
    queued, reviewer_user, admin_user, t0, verdict, reason
):
    image = queued()
    claimed(reviewer_user, t0)
    services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0)
    before = state_of(image)

    with pytest.raises(services.AlreadyDecided, match="already decided by rex") as refused:
        services.decide(
            image_id=image.pk,
            reviewer=admin_user,
            verdict=verdict,
            reason=reason,
            now=t0 + seconds(1),
        )

    assert refused.value.status == 409
    assert "it is approved. Nothing was changed" in refused.value.message
    assert state_of(image) == before
    assert Decision.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(("verdict", "reason"), [(APPROVE, ""), (REJECT, "nsfw"), (ESCALATE, "?")])
def test_a_reviewer_deciding_an_already_decided_item_gets_404_without_its_status(
    queued, reviewer_user, t0, verdict, reason
):
    image = queued()
    claimed(reviewer_user, t0)
    services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0)
    before = state_of(image)

    with pytest.raises(services.NotFound) as refused:
        services.decide(
            image_id=image.pk,
            reviewer=reviewer_user,
            verdict=verdict,
            reason=reason,
            now=t0 + seconds(1),
        )

    assert refused.value.status == 404
    assert refused.value.message == (
        f"Image {image.pk} is no longer waiting for review. Nothing was changed."
    )
    assert state_of(image) == before
    assert Decision.objects.count() == 1


@pytest.mark.django_db
def test_escalating_an_escalated_item_is_409_and_changes_nothing(
    queued, reviewer_user, admin_user, t0
):
    image = queued()
    claimed(reviewer_user, t0)
    services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=ESCALATE, reason="hmm")
    before = state_of(image)

    with pytest.raises(services.AlreadyDecided, match="already escalated") as refused:
        services.decide(image_id=image.pk, reviewer=admin_user, verdict=ESCALATE, reason="again")

    assert refused.value.status == 409
    assert state_of(image) == before


@pytest.mark.django_db
@pytest.mark.parametrize("verdict", [UNDO, "delete", ""])
def test_an_unknown_verdict_is_refused_before_anything_is_touched(
    queued, reviewer_user, t0, verdict
):
    image = queued()
    claimed(reviewer_user, t0)
    before = state_of(image)

    with pytest.raises(ValueError, match="unknown verdict"):
        services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=verdict, reason="x")

    assert state_of(image) == before


@pytest.mark.django_db
def test_renewing_extends_a_live_claim_and_refuses_one_that_is_gone_or_expired(
    queued, reviewer_user, t0
):
    queued()
    claim = claimed(reviewer_user, t0)

    renewed = services.renew(claim=claim, now=t0 + seconds(60))
    assert renewed is not None
    assert Claim.objects.get().expires_at == t0 + seconds(60) + services.lease()

    late = t0 + seconds(60) + services.lease() + seconds(1)
    assert services.renew(claim=claim, now=late) is None
    assert Claim.objects.get().expires_at == t0 + seconds(60) + services.lease()
    Claim.objects.all().delete()
    assert services.renew(claim=claim, now=t0 + seconds(61)) is None


@pytest.mark.django_db
def test_extending_a_lease_by_image_is_one_update_and_only_for_the_live_claimant(
    queued, reviewer_user, other_reviewer, t0, django_assert_num_queries
):
    image = queued()
    claimed(reviewer_user, t0)
    expiry = t0 + seconds(30) + services.lease()

    with django_assert_num_queries(1):
        assert (
            services.extend_lease(
                image_id=image.pk, reviewer_id=reviewer_user.pk, now=t0 + seconds(30)
            )
            == expiry
        )
    assert Claim.objects.get().expires_at == expiry

    assert services.extend_lease(image_id=image.pk, reviewer_id=other_reviewer.pk, now=t0) is None
    assert services.extend_lease(image_id=image.pk + 1, reviewer_id=reviewer_user.pk) is None
    after_expiry = expiry + seconds(1)
    assert (
        services.extend_lease(image_id=image.pk, reviewer_id=reviewer_user.pk, now=after_expiry)
        is None
    )
    assert Claim.objects.get().expires_at == expiry


@pytest.mark.django_db
def test_a_lease_on_an_image_settled_meanwhile_is_not_extended(queued, reviewer_user, t0):
    image = queued()
    claimed(reviewer_user, t0)
    # IMM's own manual review (or an admin) settles it while the reviewer holds it.
    Image.objects.filter(pk=image.pk).update(status=Image.Status.APPROVED)

    renewed = services.extend_lease(
        image_id=image.pk, reviewer_id=reviewer_user.pk, now=t0 + seconds(30)
    )

    assert renewed is None
    assert Claim.objects.get().expires_at == t0 + services.lease()


@pytest.mark.django_db
def test_the_seconds_from_claim_to_decision_are_stored_and_renewal_keeps_the_start(
    queued, reviewer_user, t0
):
    image = queued()
    claimed(reviewer_user, t0)
    services.renew(claim=Claim.objects.get(), now=t0 + seconds(100))

    services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0 + seconds(130.25)
    )

    assert Decision.objects.get().seconds == 130.25
    assert review_entries(image)[0].detail["seconds"] == 130.25


def fail_the_audit_write(monkeypatch) -> None:
    """Make audit.record's INSERT fail in the database: it has no content hash (NOT NULL)."""
    monkeypatch.setattr(audit, "content_hash", lambda content: None)


# The outermost transaction is decide's own (transaction=True: no test-wide transaction), so a
# failed audit INSERT must roll back the decision row, the status change and the claim deletion.
@pytest.mark.django_db(transaction=True)
def test_a_decision_its_status_and_its_audit_entry_commit_together_or_not_at_all(
    queued, reviewer_user, t0, monkeypatch
):
    image = queued()
    claimed(reviewer_user, t0)
    before = state_of(image)

    with monkeypatch.context() as patch:
        fail_the_audit_write(patch)
        with pytest.raises(IntegrityError):
            services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0)

    assert not connection.in_atomic_block
    assert state_of(image) == before
    assert Claim.objects.get().reviewer == reviewer_user
    # Nothing half-done is left in the way: the same decision now goes through.
    services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0)
    assert Image.objects.get(pk=image.pk).status == APPROVED
    assert [e.action for e in review_entries(image)] == ["review.approved"]


@pytest.mark.django_db(transaction=True)
def test_an_undo_and_its_audit_entry_commit_together_or_not_at_all(
    queued, reviewer_user, t0, monkeypatch
):
    image = queued()
    claimed(reviewer_user, t0)
    decision = services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0
    ).decision
    before = state_of(image)

    with monkeypatch.context() as patch:
        fail_the_audit_write(patch)
        with pytest.raises(IntegrityError):
            services.undo(decision_id=decision.pk, reviewer=reviewer_user, now=t0 + seconds(1))

    assert state_of(image) == before
    services.undo(decision_id=decision.pk, reviewer=reviewer_user, now=t0 + seconds(2))
    assert Image.objects.get(pk=image.pk).status == WAITING


# ---------------------------------------------------------------------------------- undo


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("verdict", "reason", "after"),
    [(APPROVE, "", APPROVED), (REJECT, "gore", REJECTED), (ESCALATE, "ask Ada", ESCALATED)],
)
def test_undo_within_the_window_puts_the_image_back_and_the_claim_back_with_the_reviewer(
    queued, reviewer_user, other_reviewer, t0, verdict, reason, after
):
    image = queued(suggestion="block", categories=("porn",))
    claimed(reviewer_user, t0)
    original = services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=verdict, reason=reason, now=t0
    ).decision
    original_row = Decision.objects.filter(pk=original.pk).values().get()
    at = t0 + services.undo_window()  # the last moment it may be undone

    outcome = services.undo(decision_id=original.pk, reviewer=reviewer_user, context=CLIENT, now=at)

    # Back with its waiting age: the queue orders by it, and it had waited since before t0.
    waited_since = original.status_changed_before
    assert waited_since is not None
    assert waited_since < t0
    image.refresh_from_db()
    assert (image.status, image.status_changed_at, image.human_decided_at) == (
        WAITING,
        waited_since,
        None,
    )
    undo = Decision.objects.get(undoes=original)
    assert undo == outcome.decision
    assert (undo.verdict, undo.reviewer, undo.created_at) == (UNDO, reviewer_user, at)
    assert (undo.status_before, undo.status_after) == (after, WAITING)
    assert Decision.objects.filter(pk=original.pk).values().get() == original_row
    claim = Claim.objects.get(image=image)
    assert (claim.reviewer, claim.claimed_at, claim.expires_at) == (
        reviewer_user,
        at,
        at + services.lease(),
    )
    assert services.claim_next(reviewer=other_reviewer, now=at) is None
    *_, entry = review_entries(image)
    assert_entry(
        entry,
        action="review.undone",
        actor=reviewer_user,
        before=after,
        after=WAITING,
        suggestion="block",
        categories=["porn"],
        context=CLIENT,
    )
    assert (
        entry.reason == f"undid {original.get_verdict_display().lower()} (decision {original.pk})"
    )
    assert (entry.detail["decision"], entry.detail["undoes"]) == (undo.pk, original.pk)
    # The image is the reviewer's again, to decide afresh.
    services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=REJECT, reason="second look", now=at
    )
    assert Image.objects.get(pk=image.pk).status == REJECTED


@pytest.mark.django_db
def test_an_admins_undo_returns_an_escalated_image_to_the_admins_without_a_claim(
    queued, reviewer_user, admin_user, t0
):
    image = queued()
    claimed(reviewer_user, t0)
    services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=ESCALATE, reason="?")
    decision = services.decide(
        image_id=image.pk, reviewer=admin_user, verdict=REJECT, reason="no", now=t0
    ).decision

    services.undo(decision_id=decision.pk, reviewer=admin_user, now=t0 + seconds(2))

    image.refresh_from_db()
    assert (image.status, image.human_decided_at) == (ESCALATED, None)
    assert not Claim.objects.exists()
    assert review_entries(image)[-1].action == "review.undone"


@pytest.mark.django_db
def test_undo_after_the_window_is_refused(queued, reviewer_user, t0):
    image = queued()
    claimed(reviewer_user, t0)
    decision = services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0
    ).decision
    before = state_of(image)

    with pytest.raises(services.UndoRefused, match="Too late to undo") as refused:
        services.undo(
            decision_id=decision.pk,
            reviewer=reviewer_user,
            now=t0 + services.undo_window() + timedelta(microseconds=1),
        )

    assert refused.value.status == 409
    assert state_of(image) == before


@pytest.mark.django_db
def test_undo_after_the_window_is_refused_on_the_real_clock(queued, reviewer_user):
    image = queued()
    with time_machine.travel(timezone.now(), tick=False) as clock:
        claimed(reviewer_user, timezone.now())
        decision = services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE)
        clock.shift(seconds(11))
        with pytest.raises(services.UndoRefused, match="Too late"):
            services.undo(decision_id=decision.decision.pk, reviewer=reviewer_user)

    assert Image.objects.get(pk=image.pk).status == APPROVED


@pytest.mark.django_db
def test_undoing_twice_is_refused(queued, reviewer_user, t0):
    image = queued()
    claimed(reviewer_user, t0)
    decision = services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0
    ).decision
    undo = services.undo(
        decision_id=decision.pk, reviewer=reviewer_user, now=t0 + seconds(1)
    ).decision
    before = state_of(image)

    with pytest.raises(services.UndoRefused, match="already undone"):
        services.undo(decision_id=decision.pk, reviewer=reviewer_user, now=t0 + seconds(2))
    with pytest.raises(services.NotFound, match="no decision of yours"):
        services.undo(decision_id=undo.pk, reviewer=reviewer_user, now=t0 + seconds(2))

    assert state_of(image) == before


@pytest.mark.django_db
def test_the_first_decision_stays_undone_after_the_image_is_decided_again(
    queued, reviewer_user, t0
):
    image = queued()
    claimed(reviewer_user, t0)
    first = services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0
    ).decision
    services.undo(decision_id=first.pk, reviewer=reviewer_user, now=t0 + seconds(1))
    services.decide(image_id=image.pk, reviewer=reviewer_user, verdict=APPROVE, now=t0 + seconds(2))
    before = state_of(image)

    # The status matches the first decision's outcome again, but that decision was undone.
    with pytest.raises(services.UndoRefused, match="already undone"):
        services.undo(decision_id=first.pk, reviewer=reviewer_user, now=t0 + seconds(3))

    assert state_of(image) == before


@pytest.mark.django_db
def test_undoing_someone_elses_decision_is_refused(
    queued, reviewer_user, other_reviewer, admin_user, t0
):
    image = queued()
    claimed(reviewer_user, t0)
    decision = services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=REJECT, reason="nsfw", now=t0
    ).decision
    before = state_of(image)

    for someone in (other_reviewer, admin_user):
        with pytest.raises(services.NotFound, match="no decision of yours"):
            services.undo(decision_id=decision.pk, reviewer=someone, now=t0 + seconds(1))

    assert state_of(image) == before


@pytest.mark.django_db
def test_undo_is_refused_when_the_image_changed_since(queued, reviewer_user, admin_user, t0):
    image = queued()
    claimed(reviewer_user, t0)
    escalation = services.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=ESCALATE, reason="unsure", now=t0
    ).decision
    services.decide(image_id=image.pk, reviewer=admin_user, verdict=APPROVE, now=t0 + seconds(2))
    before = state_of(image)

    with pytest.raises(services.UndoRefused, match="has changed since") as refused:
        services.undo(decision_id=escalation.pk, reviewer=reviewer_user, now=t0 + seconds(3))

    assert refused.value.status == 409
    # The reviewer cannot see the image any more: not told what became of it.
    assert "approved" not in refused.value.message
    assert state_of(image) == before
    assert Image.objects.get(pk=image.pk).status == APPROVED


# ---------------------------------------------------------------------------- concurrency

REVIEWERS, QUEUE = 8, 120


def work_the_queue_concurrently() -> None:
    """REVIEWERS threads, each its own user and connection, claim and decide until none waits."""
    images = bare_waiting_images(QUEUE)
    reviewers = [user(f"reviewer{n}") for n in range(REVIEWERS)]
    entries_before = AuditEntry.objects.count()
    barrier = threading.Barrier(REVIEWERS, timeout=60)
    lock = threading.Lock()
    claims: list[tuple[int, int, datetime]] = []  # (image, reviewer, claimed at): every claim
    gave_up: list[tuple[datetime, set[int]]] = []  # when a reviewer got None, and what was left
    errors: list[str] = []

    def work(reviewer: Any) -> None:
        try:
            barrier.wait()
            n = 0
            while (claim := services.claim_next(reviewer=reviewer)) is not None:
                with lock:
                    claims.append((claim.image_id, reviewer.pk, claim.claimed_at))
                verdict = (APPROVE, REJECT)[n % 2]
                services.decide(
                    image_id=claim.image_id,
                    reviewer=reviewer,
                    verdict=verdict,
                    reason="" if verdict == APPROVE else f"rejected by {reviewer.username}",
                )
                n += 1
            now = timezone.now()
            left = set(services.unclaimed(services.waiting(), now=now).values_list("pk", flat=True))
            if left:
                with lock:
                    gave_up.append((now, left))
        except BaseException as exc:
            errors.append(f"{reviewer.username}: {exc!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(r,)) for r in reviewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    # Each image claimed once, by one reviewer: no image was ever held by two at once.
    claimed_images = Counter(image for image, _, _ in claims)
    assert claimed_images == Counter({image.pk: 1 for image in images})
    # None means nothing was left to claim. An image that looked unclaimed just after a reviewer
    # got None is fine if another reviewer was claiming it then (its claim began earlier and was
    # not committed yet); a claim that began later means the image was there to be had.
    claimed_at = {image: at for image, _, at in claims}
    stranded = [(at, image) for at, left in gave_up for image in left if claimed_at[image] >= at]
    assert stranded == []
    # Each image decided exactly once, by the reviewer who claimed it.
    decisions = list(Decision.objects.values_list("image_id", "reviewer_id", "verdict", "pk"))
    assert all(verdict != UNDO for _, _, verdict, _ in decisions)
    assert sorted((image, reviewer) for image, reviewer, _, _ in decisions) == sorted(
        (image, reviewer) for image, reviewer, _ in claims
    )
    verdicts = {image: verdict for image, _, verdict, _ in decisions}
    statuses = dict(Image.objects.values_list("id", "status"))
    assert statuses == {
        image: services.FINAL_STATUS[verdict] for image, verdict in verdicts.items()
    }
    assert not Claim.objects.exists()
    # One audit entry per decision, none lost, and the chain still verifies.
    entries = AuditEntry.objects.filter(action__startswith="review.")
    assert entries.count() == len(decisions) == QUEUE
    assert sorted(entries.values_list("detail__decision", flat=True)) == sorted(
        pk for *_, pk in decisions
    )
    for image, reviewer, verdict, _ in decisions:
        entry = entries.get(image_id=image)
        assert (entry.actor_id, entry.action) == (reviewer, services.AUDIT_ACTION[verdict])
    assert AuditEntry.objects.count() == entries_before + QUEUE
    assert_log_verifies()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_eight_reviewers_working_the_queue_at_once_decide_every_image_exactly_once():
    work_the_queue_concurrently()


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite variant of the test above")
@pytest.mark.django_db(transaction=True)
def test_eight_reviewers_working_a_sqlite_queue_at_once_decide_every_image_exactly_once():
    # The test database is a file (tests/settings.py), so each thread has its own connection;
    # BEGIN IMMEDIATE with the busy timeout serialises the claims and decisions.
    work_the_queue_concurrently()


ROUNDS = 15


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pair", ["admin and claimant", "two admins"])
def test_two_decisions_racing_on_one_item_make_one_decision_and_one_refusal(pair):
    # The loser is told: an admin with a 409 naming the status and who decided, a reviewer with
    # a 404 that says neither (the image is no longer theirs to see).
    images = bare_waiting_images(ROUNDS)
    admin = user("ada", "admin")
    other = user("rex") if pair == "admin and claimant" else user("alf", "admin")
    claimant = other if pair == "admin and claimant" else None
    barrier = threading.Barrier(2, timeout=60)
    outcomes: dict[tuple[int, int], str] = {}  # (image, decider): verdict, or the HTTP status
    refusals: dict[int, str] = {}
    errors: list[str] = []

    def race(decider: Any, verdict: str) -> None:
        try:
            for image in images:
                if decider is claimant:
                    # A reviewer holds one item at a time: claim each just before its race.
                    Claim.objects.create(
                        image=image,
                        reviewer=claimant,
                        claimed_at=timezone.now(),
                        expires_at=timezone.now() + services.lease(),
                    )
                barrier.wait()
                try:
                    services.decide(
                        image_id=image.pk, reviewer=decider, verdict=verdict, reason="race"
                    )
                except (services.AlreadyDecided, services.NotFound) as refused:
                    outcomes[image.pk, decider.pk] = str(refused.status)
                    refusals[image.pk] = refused.message
                else:
                    outcomes[image.pk, decider.pk] = verdict
        except BaseException as exc:
            errors.append(f"{decider.username}: {exc!r}")
            barrier.abort()
        finally:
            connection.close()

    threads = [
        threading.Thread(target=race, args=(admin, APPROVE)),
        threading.Thread(target=race, args=(other, REJECT)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    winners: Counter[int] = Counter()
    for image in images:
        results = sorted(outcomes[image.pk, who.pk] for who in (admin, other))
        assert results[1] in (APPROVE, REJECT)
        [decision] = Decision.objects.filter(image=image)
        assert decision.verdict == results[1]
        if decision.reviewer == admin and claimant is not None:
            assert results[0] == "404"
            assert refusals[image.pk] == services.not_waiting_message(image.pk)
        else:
            assert results[0] == "409"
            assert f"already decided by {decision.reviewer.username}" in refusals[image.pk]
        winners[decision.reviewer_id] += 1
        assert Image.objects.get(pk=image.pk).status == services.FINAL_STATUS[decision.verdict]
        [entry] = review_entries(image)
        assert (entry.actor_id, entry.action) == (
            decision.reviewer_id,
            services.AUDIT_ACTION[decision.verdict],
        )
    assert sum(winners.values()) == ROUNDS
    assert not Claim.objects.exists()
    assert_log_verifies()


@pytest.mark.django_db(transaction=True)
def test_a_double_click_on_next_leaves_the_reviewer_one_claim():
    bare_waiting_images(6)
    reviewer = user("dbl")
    barrier = threading.Barrier(2, timeout=60)
    got: list[int | None] = []
    errors: list[str] = []

    def click() -> None:
        try:
            barrier.wait()
            claim = services.claim_next(reviewer=reviewer)
            got.append(claim.image_id if claim else None)
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert Claim.objects.filter(reviewer=reviewer).count() == 1
    held = Claim.objects.get(reviewer=reviewer).image_id
    assert got == [held, held]


def test_undo_gives_back_the_item_handed_out_next(make_image, reviewer_user):
    first = make_image(status=Image.Status.AWAITING_REVIEW)
    second = make_image(status=Image.Status.AWAITING_REVIEW)
    services.claim_next(reviewer=reviewer_user)
    outcome = services.decide(
        image_id=first.pk, reviewer=reviewer_user, verdict=Decision.Verdict.APPROVE
    )
    assert services.claim_next(reviewer=reviewer_user).image_id == second.pk
    services.undo(decision_id=outcome.decision.pk, reviewer=reviewer_user)
    assert list(
        Claim.objects.filter(reviewer=reviewer_user).values_list("image_id", flat=True)
    ) == [first.pk]
    assert services.claim_next(reviewer=reviewer_user).image_id == first.pk


def test_a_claim_on_an_image_imm_settled_meanwhile_does_not_block_the_next(
    make_image, reviewer_user
):
    settled = make_image(status=Image.Status.AWAITING_REVIEW)
    waiting_one = make_image(status=Image.Status.AWAITING_REVIEW)
    assert services.claim_next(reviewer=reviewer_user).image_id == settled.pk
    # IMM's own manual review re-routed it while the reviewer held it.
    Image.objects.filter(pk=settled.pk).update(status=Image.Status.APPROVED)
    assert services.claim_next(reviewer=reviewer_user).image_id == waiting_one.pk
