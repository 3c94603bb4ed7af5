"""Review of issue 12: QA's ways of handing out work obey the reviewer's exposure limits, blind
items go only to people who cannot look the answer up, and a routing rule's automatic verdict
is sampled for QA like IMM's own."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from moderation.events.models import Event
from moderation.models import AuditEntry, Image, ImageCategory, RoutingRule
from reviews import services as reviews
from reviews.exposure.models import ExposureCap, ExposureCount, OptOut
from reviews.models import Claim
from reviews.qa import services
from reviews.qa.models import DoubleReview, GoldItem, ImmCheck, Rate

from .test_calibration_routing import deliver, running_image
from .test_qa import client_of, decided, rate, user

WAITING, APPROVED, REJECTED = (
    Image.Status.AWAITING_REVIEW,
    Image.Status.APPROVED,
    Image.Status.REJECTED,
)


def categorised(make_image, status: str, *categories: str) -> Image:
    image = make_image(status=status)
    Image.objects.filter(pk=image.pk).update(
        imm_suggestion="review", imm_categories=list(categories)
    )
    ImageCategory.objects.bulk_create(ImageCategory(image=image, category=c) for c in categories)
    image.refresh_from_db()
    return image


def double_review_for(make_image) -> tuple[Any, Image]:
    """A decision by `firstperson` sampled for a double review; (first, its image)."""
    rate("double", 100.0)
    first = user("firstperson")
    decision = decided(make_image, first, "approve")
    Rate.objects.filter(kind="double").delete()
    return first, decision.image


@pytest.mark.django_db
def test_the_item_after_a_blind_answer_is_within_the_reviewer_s_opt_outs(make_image):
    """After a blind answer the next ordinary item came from the whole queue: a category the
    reviewer opted out of was handed to them."""
    _, blind_image = double_review_for(make_image)
    porn = categorised(make_image, WAITING, "porn")
    second = user("secondperson")
    OptOut.objects.create(reviewer=second, category="porn")
    client = client_of(second)

    served = client.post(reverse("review_next"))
    assert served.status_code == 302
    assert served["Location"] == reverse("qa_blind")
    answered = client.post(reverse("qa_blind"), {"image": blind_image.pk, "action": "approve"})

    assert answered.status_code == 302
    assert not Claim.objects.filter(reviewer=second, image=porn).exists()
    assert answered["Location"] == reverse("review_queue")


@pytest.mark.django_db
def test_the_item_after_a_blind_answer_is_within_the_reviewer_s_daily_limits(make_image):
    _, blind_image = double_review_for(make_image)
    porn = categorised(make_image, WAITING, "porn")
    fine = categorised(make_image, WAITING, "ad")
    second = user("secondperson")
    ExposureCap.objects.create(category="porn", images=1)
    ExposureCount.objects.create(
        reviewer=second, day=timezone.localdate(), category="porn", previews=1
    )
    client = client_of(second)

    assert services.claim_blind(second) is not None
    answered = client.post(reverse("qa_blind"), {"image": blind_image.pk, "action": "approve"})

    assert answered.status_code == 302
    assert not Claim.objects.filter(reviewer=second, image=porn).exists()
    assert Claim.objects.get(reviewer=second).image_id == fine.pk


def open_check(image: Image, suggestion: str = "block") -> ImmCheck:
    return ImmCheck.objects.create(
        image=image,
        suggestion=suggestion,
        categories=list(image.imm_categories),
        settled_as=image.status,
        sampled_at=timezone.now(),
    )


@pytest.mark.django_db
def test_start_qa_never_hands_a_check_of_an_opted_out_or_capped_category(make_image):
    """QA of IMM's verdicts is the same pixels reaching a person: the opt-outs and the daily
    limits hold there too (they held for Start reviewing and blind items only)."""
    porn = open_check(categorised(make_image, REJECTED, "porn"))
    ad = open_check(categorised(make_image, REJECTED, "ad"))
    opted = user("optedperson")
    OptOut.objects.create(reviewer=opted, category="porn")
    capped = user("cappedperson")
    ExposureCap.objects.create(category="porn", images=1)
    ExposureCount.objects.create(
        reviewer=capped, day=timezone.localdate(), category="porn", previews=1
    )

    got = services.claim_check(opted)
    assert got is not None
    assert got.pk == ad.pk
    assert services.claim_check(capped) is None

    # Over HTTP: Start QA gives the porn check to no one who may not see it, and to others.
    response = client_of(capped).post(reverse("qa_imm_next"))
    assert response["Location"] == reverse("qa_imm_queue")
    other = services.claim_check(user("otherperson"))
    assert other is not None
    assert other.pk == porn.pk


@pytest.mark.django_db
def test_admins_are_never_served_blind_items(make_image, admin_user):
    """An admin can open the image page, the audit log and the gold list: a double review or a
    gold item is not blind for them, so Start reviewing gives them the ordinary queue."""
    reviewer = user("firstreviewer")
    rate("double", 100.0)
    decided(make_image, reviewer, "reject")
    Rate.objects.filter(kind="double").delete()
    gold_image = make_image(status=APPROVED)
    GoldItem.objects.create(
        image=gold_image, expected="approve", marked_by=admin_user, marked_at=timezone.now()
    )
    rate("gold", 100.0)
    waiting = make_image(status=WAITING)
    admin = client_of(admin_user)

    response = admin.post(reverse("review_next"))

    assert response.status_code == 302
    assert response["Location"] == reverse("review_item", args=[waiting.pk])
    assert Claim.objects.get(reviewer=admin_user).image_id == waiting.pk
    fragment = admin.post(reverse("review_next"), headers={"HX-Request": "true"})
    assert reverse("qa_blind_renew") not in fragment.content.decode()
    # A reviewer still gets them.
    assert services.claim_blind(user("secondreviewer")) is not None


@pytest.mark.django_db
def test_a_routing_rule_s_automatic_verdict_is_sampled_for_qa(make_image):
    """A threshold settles an image IMM sent to people ("review"): an automatic verdict all the
    same, sampled at the rate for the outcome (pass for approved, block for rejected). It was
    never sampled: the sampler only knew IMM's pass and block."""
    RoutingRule.objects.create(category="porn", approve_below=40, reject_from=95)
    rate("block", 100.0)
    rate("pass", 100.0)
    rejected, rejected_task = running_image(make_image)
    approved, approved_task = running_image(make_image)

    deliver(rejected_task, "review", {"porn": 97})
    deliver(approved_task, "review", {"porn": 10})

    rejected.refresh_from_db()
    approved.refresh_from_db()
    assert (rejected.status, approved.status) == (REJECTED, APPROVED)
    assert ImmCheck.objects.get(image=rejected).settled_as == REJECTED
    assert ImmCheck.objects.get(image=approved).settled_as == APPROVED


@pytest.mark.django_db
def test_a_ruling_never_flips_a_decision_made_after_the_disagreement(make_image, admin_user):
    """A disputed double review stays on the list after the image is decided again (here an
    admin's override); the ruling flipped that newer decision unawares, which an override
    itself refuses to do (its `expected`). The ruling now scores the reviewers and the newer
    decision stands."""
    rate("double", 100.0)
    first, second = user("firstperson"), user("secondperson")
    decision = decided(make_image, first, "reject")
    Rate.objects.filter(kind="double").delete()
    blind = services.claim_blind(second)
    assert blind is not None
    services.answer_blind(person=second, image_id=blind.image.pk, action="approve")
    double = DoubleReview.objects.get(decision=decision)
    assert double.state == DoubleReview.State.DISPUTED
    reviews.override(
        image_id=decision.image_id, admin=admin_user, to=APPROVED, reason="looked again"
    )

    response = client_of(admin_user).post(
        reverse("qa_adjudicate", args=[double.pk]), {"ruling": "reject"}, follow=True
    )

    assert response.status_code == 200
    assert Image.objects.get(pk=decision.image_id).status == APPROVED
    assert "decided again" in response.content.decode()
    double.refresh_from_db()
    assert (double.state, double.ruling) == (DoubleReview.State.RULED, "reject")
    entry = AuditEntry.objects.get(action="qa.adjudicated")
    assert (entry.state_before, entry.state_after) == (APPROVED, APPROVED)
    # One outcome event for the change: the override's.
    assert Event.objects.filter(image_id=decision.image_id, type=Event.Type.OVERRIDDEN).count() == 1


@pytest.mark.django_db
def test_skipping_a_blind_item_does_not_hand_the_same_item_straight_back(make_image):
    """Skip on a double review let go of it, and the next item served was that same double
    review (the oldest waiting): the reviewer could not skip it."""
    _, blind_image = double_review_for(make_image)
    waiting = make_image(status=WAITING)
    second = user("secondperson")
    client = client_of(second)
    assert client.post(reverse("review_next"))["Location"] == reverse("qa_blind")

    skipped = client.post(
        reverse("qa_blind"),
        {"image": blind_image.pk, "action": "skip"},
        headers={"HX-Request": "true"},
    )

    assert skipped.status_code == 200
    assert f'data-image="{blind_image.pk}"' not in skipped.content.decode()
    assert skipped["HX-Redirect"] == reverse("review_item", args=[waiting.pk])
    double = DoubleReview.objects.get(image=blind_image)
    assert (double.state, double.claimed_by) == (DoubleReview.State.WAITING, None)
