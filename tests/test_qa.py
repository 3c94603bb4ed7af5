"""Quality assurance (issue 12, points 3 and 4): sampling of IMM's automatic verdicts and of
people's decisions, the QA pane's confirm and overturn, blind double review (never leaking the
first decision), adjudication, gold items, accuracy, access control, and claims under
concurrency on PostgreSQL."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from moderation.accounts import create_user
from moderation.events.models import Event
from moderation.imm import pipeline
from moderation.imm.client import ImmClient
from moderation.models import AuditEntry, Image, ImageCategory
from moderation.signals import auto_settled
from reviews import services as reviews
from reviews.models import Decision
from reviews.qa import accuracy, sampling, services
from reviews.qa.models import DoubleReview, GoldAnswer, GoldItem, ImmCheck, Rate

from .conftest import PASSWORD, postgres_only
from .test_pipeline import FakeImm, client_for, deliver

WAITING, APPROVED, REJECTED = (
    Image.Status.AWAITING_REVIEW,
    Image.Status.APPROVED,
    Image.Status.REJECTED,
)


def user(username: str, role: str = "reviewer") -> Any:
    return create_user(username=username, role=role, password=PASSWORD, validate=False)


def client_of(person: Any) -> Client:
    client = Client()
    client.force_login(person)
    return client


def rate(kind: str, percent: float, category: str = "") -> None:
    Rate.objects.update_or_create(kind=kind, category=category, defaults={"percent": percent})


@pytest.fixture(autouse=True)
def _imm_settings(settings):
    settings.IMM_OSS_BUCKET = "review-bucket"
    settings.IMM_SCENES = ["porn", "terrorism"]
    settings.IMM_POLL_AFTER = 60
    settings.IMM_NOTIFICATION = "none"


@pytest.fixture
def imm() -> Iterator[ImmClient]:
    with client_for(FakeImm()) as client:
        yield client


@pytest.fixture
def settled_by_imm(make_image, imm) -> Callable[..., tuple[Image, str]]:
    """An image IMM settled through the real pipeline (pass: approved, block: rejected)."""

    def make(suggestion: str = "pass", categories: tuple[str, ...] = ()) -> tuple[Image, str]:
        image = make_image()
        assert pipeline.submit(image_id=image.pk, client=imm).what == "submitted"
        task_id = image.moderation_tasks.get().task_id
        deliver(task_id, suggestion, categories=categories, end="2025-05-20T08:00:03.000Z")
        image.refresh_from_db()
        return image, task_id

    return make


def decided(make_image, reviewer: Any, verdict: str = "approve", reason: str = "") -> Decision:
    """A waiting image the reviewer claimed and decided through reviews.services."""
    image = make_image(status=WAITING)
    claim = reviews.claim_next(reviewer=reviewer, queryset=Image.objects.filter(pk=image.pk))
    assert claim is not None
    assert claim.image_id == image.pk
    if verdict == "reject" and not reason:
        reason = "gore"
    return reviews.decide(
        image_id=image.pk, reviewer=reviewer, verdict=verdict, reason=reason
    ).decision


# ------------------------------------------------------------------------------ sampling


def tolerance(n: int, p: float) -> float:
    """Five standard deviations of a binomial share: a fair sampler falls outside it about
    once in 1.7 million runs; a sampler off by a fifth of its rate falls well outside it."""
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.django_db
@pytest.mark.parametrize(("suggestion", "percent"), [("pass", 2.0), ("block", 5.0)])
def test_sampling_takes_the_configured_share_of_ten_thousand_auto_settled_images(
    suggestion, percent
):
    """10,000 simulated auto-settled images (the receiver called as the pipeline's signal calls
    it, with image ids from a fixed seed): the sampled share is within the binomial tolerance."""
    rate(suggestion, percent, "porn" if suggestion == "block" else "")
    rate(suggestion, 50.0, "unrelated")
    ids = random.Random(12).sample(range(1, 10_000_000), 10_000)
    chosen = sum(
        sampling.share(suggestion, pk) < sampling.imm_percent(suggestion, ["porn"]) / 100
        for pk in ids
    )
    p = percent / 100
    assert abs(chosen / len(ids) - p) <= tolerance(len(ids), p)


@pytest.mark.django_db
def test_the_highest_named_category_rate_applies_else_the_default():
    rate("block", 5.0, "porn")
    rate("block", 1.0)
    rate("block", 20.0, "bloody")
    assert sampling.imm_percent("block", ["porn"]) == 5.0
    assert sampling.imm_percent("block", ["porn", "bloody"]) == 20.0
    assert sampling.imm_percent("block", ["weapon"]) == 1.0
    assert sampling.imm_percent("pass", []) == 0.0


@pytest.mark.django_db
def test_an_auto_settled_image_is_sampled_through_the_pipeline_and_the_action_stands(
    settled_by_imm,
):
    rate("block", 100.0)
    image, _ = settled_by_imm("block", ("porn",))
    assert image.status == REJECTED  # QA never holds up the automatic action
    check = ImmCheck.objects.get(image=image)
    assert (check.suggestion, check.categories, check.settled_as) == ("block", ["porn"], REJECTED)
    assert check.state == ImmCheck.State.OPEN


@pytest.mark.django_db
def test_nothing_is_sampled_at_a_zero_rate_or_without_a_rate(settled_by_imm):
    settled_by_imm("pass")
    rate("pass", 0.0)
    settled_by_imm("pass")
    assert ImmCheck.objects.count() == 0


@pytest.mark.django_db
def test_a_replayed_result_never_samples_twice(settled_by_imm):
    rate("pass", 100.0)
    image, task_id = settled_by_imm("pass")
    # The same notification again, and the receiver called again directly (a replay that gets
    # past the pipeline's own duplicate check): still one check.
    deliver(task_id, "pass", end="2025-05-20T08:00:03.000Z")
    from django.db import transaction

    with transaction.atomic():
        auto_settled.send(sender=Image, image=image, suggestion="pass", categories=[])
    assert ImmCheck.objects.filter(image=image).count() == 1


@pytest.mark.django_db
def test_the_choice_is_deterministic_per_image():
    assert [sampling.share("pass", n) for n in range(50)] == [
        sampling.share("pass", n) for n in range(50)
    ]
    assert sampling.share("pass", 7) != sampling.share("block", 7)


@pytest.mark.django_db
def test_a_share_of_human_decisions_gets_a_double_review_and_an_undo_withdraws_it(make_image):
    rate("double", 100.0)
    rex = user("rex1")
    decision = decided(make_image, rex, "approve")
    double = DoubleReview.objects.get(decision=decision)
    assert (double.first_reviewer, double.first_verdict) == (rex, "approve")
    reviews.undo(decision_id=decision.pk, reviewer=rex)
    double.refresh_from_db()
    assert double.state == DoubleReview.State.WITHDRAWN


@pytest.mark.django_db
def test_escalations_are_not_double_reviewed(make_image):
    rate("double", 100.0)
    rex = user("rex1")
    decided(make_image, rex, "escalate", reason="look")
    assert DoubleReview.objects.count() == 0


# --------------------------------------------------------------------- QA of IMM verdicts


@pytest.mark.django_db
def test_confirm_keeps_the_status_and_is_audited(settled_by_imm):
    rate("pass", 100.0)
    image, _ = settled_by_imm("pass")
    rex = user("rex1")
    check = services.claim_check(rex)
    assert check is not None
    assert check.image_id == image.pk
    events_before = Event.objects.filter(image=image).count()
    outcome = services.answer_check(check_id=check.pk, person=rex, action="confirm")
    image.refresh_from_db()
    assert outcome.check.state == ImmCheck.State.CONFIRMED
    assert image.status == APPROVED
    assert AuditEntry.objects.filter(image=image, action="qa.imm_confirmed", actor=rex).exists()
    assert Event.objects.filter(image=image).count() == events_before


@pytest.mark.django_db
@pytest.mark.parametrize(("suggestion", "after"), [("pass", REJECTED), ("block", APPROVED)])
def test_overturn_flips_the_status_with_an_audit_entry_and_an_event(
    settled_by_imm, suggestion, after
):
    rate(suggestion, 100.0)
    image, task_id = settled_by_imm(suggestion)
    rex = user("rex1")
    check = services.claim_check(rex)
    assert check is not None
    with pytest.raises(services.Invalid):
        services.answer_check(check_id=check.pk, person=rex, action="overturn", reason="")
    services.answer_check(check_id=check.pk, person=rex, action="overturn", reason="IMM missed it")
    image.refresh_from_db()
    assert image.status == after
    assert image.human_decided_at is not None
    entry = AuditEntry.objects.get(image=image, action="qa.imm_overturned")
    assert (entry.actor, entry.state_after, entry.reason) == (rex, after, "IMM missed it")
    event = Event.objects.filter(image=image).order_by("-sequence").first()
    assert event is not None
    assert event.type == Event.Type.OVERRIDDEN
    assert event.data["verdict"] == after
    # IMM's later word never moves what a person decided.
    deliver(task_id, suggestion, end="2025-05-20T09:00:03.000Z")
    image.refresh_from_db()
    assert image.status == after


@pytest.mark.django_db
def test_a_persons_decision_meanwhile_wins_and_the_check_closes_unchanged(
    settled_by_imm, admin_user
):
    rate("pass", 100.0)
    image, _ = settled_by_imm("pass")
    rex = user("rex1")
    check = services.claim_check(rex)
    assert check is not None
    reviews.override(image_id=image.pk, admin=admin_user, to=REJECTED, reason="seen it")
    outcome = services.answer_check(
        check_id=check.pk, person=rex, action="overturn", reason="should be rejected"
    )
    image.refresh_from_db()
    assert outcome.check.state == ImmCheck.State.CLOSED
    assert "their decision stands" in outcome.message
    assert image.status == REJECTED
    assert not AuditEntry.objects.filter(action="qa.imm_overturned").exists()
    # The pane says so before the reviewer answers, too.
    ImmCheck.objects.filter(pk=check.pk).update(state="open", claimed_by=rex)
    services.claim_check(rex)
    page = client_of(rex).get(reverse("qa_imm_item", args=[check.pk]))
    assert "their decision stands" in page.content.decode()


@pytest.mark.django_db
def test_the_qa_pane_confirms_and_overturns_over_http(settled_by_imm):
    rate("pass", 100.0)
    first, _ = settled_by_imm("pass")
    second, _ = settled_by_imm("pass")
    rex = user("rex1")
    client = client_of(rex)
    response = client.post(reverse("qa_imm_next"))
    check = ImmCheck.objects.get(image=first)
    assert response.status_code == 302
    assert response.url == reverse("qa_imm_item", args=[check.pk])
    page = client.get(response.url).content.decode()
    assert "preview-blurred" in page
    assert "Confirm" in page
    assert "Overturn" in page
    assert client.get(reverse("qa_imm_file", args=[check.pk, "preview-blurred"])).status_code == 200
    assert client.post(response.url, {"action": "bogus"}).status_code == 400
    response = client.post(response.url, {"action": "confirm"})
    following = ImmCheck.objects.get(image=second)
    assert response.url == reverse("qa_imm_item", args=[following.pk])
    response = client.post(response.url, {"action": "overturn", "reason": "not fine"})
    second.refresh_from_db()
    assert second.status == REJECTED


@pytest.mark.django_db
def test_a_qa_item_is_seen_only_by_its_holder_and_admins(settled_by_imm, admin_client):
    rate("pass", 100.0)
    settled_by_imm("pass")
    rex, rio = user("rex1"), user("rio1")
    check = services.claim_check(rex)
    assert check is not None
    url = reverse("qa_imm_item", args=[check.pk])
    assert client_of(rio).get(url).status_code == 404
    assert client_of(rio).post(url, {"action": "confirm"}).status_code == 404
    assert client_of(rio).get(reverse("qa_imm_file", args=[check.pk, "preview"])).status_code == 404
    assert admin_client.get(url).status_code == 200
    assert Client().get(url).status_code == 302  # sign in first


# -------------------------------------------------------------------------- blind review


@pytest.fixture
def blind_setup(make_image) -> dict[str, Any]:
    """A rejection by `first` (with a telling reason), sampled for a double review."""
    rate("double", 100.0)
    first, second = user("firstperson"), user("secondperson")
    decision = decided(make_image, first, "reject", reason="distinctivereasonword")
    Rate.objects.filter(kind="double").delete()  # no more sampling: the other tests' decisions
    return {"first": first, "second": second, "decision": decision, "image": decision.image}


@pytest.mark.django_db
def test_the_first_decider_never_gets_their_own_double_review(blind_setup):
    first = blind_setup["first"]
    assert services.claim_blind(first) is None
    blind = services.claim_blind(blind_setup["second"])
    assert blind is not None
    assert blind.image.pk == blind_setup["image"].pk


@pytest.mark.django_db
def test_an_ordinary_item_the_reviewer_holds_comes_before_a_blind_one(blind_setup, make_image):
    second = blind_setup["second"]
    held = make_image(status=Image.Status.AWAITING_REVIEW)
    claim = reviews.claim_next(reviewer=second)
    assert claim is not None
    assert claim.image_id == held.pk
    assert services.claim_blind(second) is None
    reviews.release(image=held, reviewer=second)
    blind = services.claim_blind(second)
    assert blind is not None
    assert blind.image.pk == blind_setup["image"].pk


def every_response(client: Client, image: Image) -> dict[str, str]:
    """Every page and fragment a reviewer can ask for about the image, by path."""
    paths = {
        "pane": reverse("qa_blind"),
        "review item": reverse("review_item", args=[image.pk]),
        "review next": reverse("review_next"),
        "queue": reverse("review_queue"),
        "image page": reverse("image_detail", args=[image.pk]),
        "image file": reverse("image_file", args=[image.pk, "preview-blurred"]),
        "audit": reverse("audit_log") + f"?image={image.pk}",
        "escalated": reverse("review_escalated"),
        "qa overview": reverse("qa_overview"),
        "adjudication": reverse("qa_adjudication"),
        "gold": reverse("qa_gold"),
        "imm qa": reverse("qa_imm_queue"),
        "api image": f"/api/v1/images/{image.pk}",
    }
    found = {}
    for name, path in paths.items():
        response = client.get(path, follow=True)
        found[name] = (
            response.content.decode(errors="replace")
            if response.get("Content-Type", "").startswith(("text", "application/json"))
            else ""
        )
    htmx = client.get(reverse("qa_blind"), headers={"HX-Request": "true"})
    found["pane fragment"] = htmx.content.decode()
    return found


@pytest.mark.django_db
def test_the_blind_reviewer_never_sees_the_first_decision_anywhere(blind_setup):
    second, image = blind_setup["second"], blind_setup["image"]
    client = client_of(second)
    # Served through the ordinary "Start reviewing", with and without htmx.
    response = client.post(reverse("review_next"), headers={"HX-Request": "true"})
    assert response.status_code == 200
    body = response.content.decode()
    assert f'data-image="{image.pk}"' in body
    responses = every_response(client, image)
    responses["start reviewing"] = body
    assert "Approve" in responses["pane"]
    assert "Reject" in responses["pane"]
    for name, text in responses.items():
        for secret in ("firstperson", "distinctivereasonword"):
            assert secret not in text, f"{name} shows {secret!r}"
    # The verdict itself: the pane, its fragment and what Start reviewing returned never say it
    # (other pages may use the word generally, e.g. "IMM approved or rejected").
    for name in ("pane", "pane fragment", "start reviewing"):
        assert "rejected" not in responses[name].lower(), f"{name} shows the verdict"


@pytest.mark.django_db
def test_agreement_closes_the_item_and_disagreement_goes_to_the_admins(make_image, admin_user):
    rate("double", 100.0)
    first, second = user("firstperson"), user("secondperson")
    agreed = decided(make_image, first, "approve")
    disputed = decided(make_image, first, "approve")
    Rate.objects.filter(kind="double").delete()
    client = client_of(second)
    for answer in ("approve", "reject"):
        blind = services.claim_blind(second)
        assert blind is not None
        response = client.post(
            reverse("qa_blind"),
            {"image": blind.image.pk, "action": answer, "reason": "too much"},
        )
        assert response.status_code == 302
    assert DoubleReview.objects.get(decision=agreed).state == DoubleReview.State.AGREED
    double = DoubleReview.objects.get(decision=disputed)
    assert (double.state, double.second_verdict, double.second_reviewer) == (
        DoubleReview.State.DISPUTED,
        "reject",
        second,
    )
    # Neither answer changed the image.
    assert Image.objects.get(pk=disputed.image_id).status == APPROVED
    assert AuditEntry.objects.filter(action="qa.double_answered", actor=second).count() == 2

    # The admin sees both words on the adjudication list and rules: final, with audit and event.
    admin = client_of(admin_user)
    page = admin.get(reverse("qa_adjudication")).content.decode()
    assert "firstperson" in page
    assert "secondperson" in page
    response = admin.post(reverse("qa_adjudicate", args=[double.pk]), {"ruling": "reject"})
    assert response.status_code == 302
    image = Image.objects.get(pk=disputed.image_id)
    assert image.status == REJECTED
    assert image.human_decided_at is not None
    assert AuditEntry.objects.filter(
        image=image, action="qa.adjudicated", actor=admin_user
    ).exists()
    assert Event.objects.filter(image=image, type=Event.Type.OVERRIDDEN).exists()
    double.refresh_from_db()
    assert (double.state, double.ruling) == (DoubleReview.State.RULED, "reject")
    # A second ruling is refused: the first is final.
    again = admin.post(reverse("qa_adjudicate", args=[double.pk]), {"ruling": "approve"})
    assert again.status_code == 409
    assert Image.objects.get(pk=image.pk).status == REJECTED
    figures = {row.reviewer: row for row in accuracy.per_reviewer()}
    assert (figures["firstperson"].ruled, figures["firstperson"].ruled_right) == (1, 0)
    assert (figures["secondperson"].ruled, figures["secondperson"].ruled_right) == (1, 1)


@pytest.mark.django_db
def test_a_ruling_that_matches_the_outcome_changes_nothing_but_is_audited(blind_setup, admin_user):
    second = blind_setup["second"]
    blind = services.claim_blind(second)
    assert blind is not None
    services.answer_blind(person=second, image_id=blind.image.pk, action="approve")
    double = DoubleReview.objects.get()
    events = Event.objects.filter(image=blind.image).count()
    services.rule(double_id=double.pk, admin=admin_user, ruling="reject")
    assert Image.objects.get(pk=blind.image.pk).status == REJECTED
    assert Event.objects.filter(image=blind.image).count() == events
    assert AuditEntry.objects.filter(action="qa.adjudicated").count() == 1


@pytest.mark.django_db
def test_only_admins_rule_and_bad_rulings_are_400(blind_setup, reviewer_client, admin_client):
    second = blind_setup["second"]
    blind = services.claim_blind(second)
    assert blind is not None
    services.answer_blind(person=second, image_id=blind.image.pk, action="approve")
    double = DoubleReview.objects.get()
    url = reverse("qa_adjudicate", args=[double.pk])
    assert reviewer_client.post(url, {"ruling": "approve"}).status_code == 403
    assert admin_client.post(url, {"ruling": "maybe"}).status_code == 400
    assert (
        admin_client.post(
            reverse("qa_adjudicate", args=[999999]), {"ruling": "approve"}
        ).status_code
        == 404
    )


@pytest.mark.django_db
def test_an_expired_blind_claim_cannot_be_answered(blind_setup):
    second = blind_setup["second"]
    blind = services.claim_blind(second)
    assert blind is not None
    later = timezone.now() + reviews.lease() + timedelta(seconds=1)
    with pytest.raises(reviews.NotYours):
        services.answer_blind(person=second, image_id=blind.image.pk, action="approve", now=later)


# ------------------------------------------------------------------------------ gold items


@pytest.fixture
def gold_image(make_image, admin_user) -> Image:
    image = make_image(status=REJECTED)
    services.mark_gold(image_id=image.pk, admin=admin_user, expected="reject")
    return image


@pytest.mark.django_db
def test_gold_is_served_blind_scored_and_never_changes_the_image(gold_image):
    rate("gold", 100.0)
    rex = user("rex1")
    client = client_of(rex)
    response = client.post(reverse("review_next"), headers={"HX-Request": "true"})
    body = response.content.decode()
    assert f'data-image="{gold_image.pk}"' in body
    assert "gold" not in body.lower()
    before = Image.objects.filter(pk=gold_image.pk).values().get()
    response = client.post(reverse("qa_blind"), {"image": gold_image.pk, "action": "approve"})
    assert response.status_code == 302
    answer = GoldAnswer.objects.get(reviewer=rex)
    assert (answer.verdict, answer.correct) == ("approve", False)
    assert Image.objects.filter(pk=gold_image.pk).values().get() == before
    assert AuditEntry.objects.filter(action="qa.gold_answered", actor=rex).exists()
    # Served once per reviewer.
    assert services.claim_blind(rex) is None
    rio = user("rio1")
    blind = services.claim_blind(rio)
    assert blind is not None
    assert blind.gold is not None
    services.answer_blind(person=rio, image_id=gold_image.pk, action="reject", reason="gore")
    figures = {row.reviewer: row for row in accuracy.per_reviewer()}
    assert (figures["rex1"].gold_answered, figures["rex1"].gold_right) == (1, 0)
    assert (figures["rio1"].gold_answered, figures["rio1"].gold_right) == (1, 1)


@pytest.mark.django_db
def test_gold_is_not_served_at_a_zero_rate(gold_image):
    assert services.claim_blind(user("rex1")) is None


@pytest.mark.django_db
def test_gold_rate_serves_about_its_share(gold_image, make_image, admin_user):
    rate("gold", 10.0)
    chance = random.Random(3)
    served = 0
    rex = user("rex1")
    for _ in range(2000):
        blind = services.claim_blind(rex, chance=chance)
        if blind is not None:
            served += 1
            GoldAnswer.objects.filter(reviewer=rex).delete()
    assert abs(served / 2000 - 0.10) <= tolerance(2000, 0.10)


@pytest.mark.django_db
def test_marking_gold_checks_its_input(make_image, admin_client, reviewer_client):
    waiting = make_image(status=WAITING)
    settled = make_image(status=APPROVED)
    url = reverse("qa_gold")
    assert (
        reviewer_client.post(url, {"image": settled.pk, "expected": "approve"}).status_code == 403
    )
    assert admin_client.post(url, {"image": "x", "expected": "approve"}).status_code == 400
    assert admin_client.post(url, {"image": settled.pk, "expected": "maybe"}).status_code == 400
    assert admin_client.post(url, {"image": 999999, "expected": "approve"}).status_code == 404
    assert admin_client.post(url, {"image": waiting.pk, "expected": "approve"}).status_code == 409
    assert admin_client.post(url, {"image": settled.pk, "expected": "approve"}).status_code == 302
    assert GoldItem.objects.get().image == settled
    assert AuditEntry.objects.filter(action="qa.gold_marked").exists()
    gold = GoldItem.objects.get()
    assert admin_client.post(reverse("qa_gold_retire", args=[gold.pk])).status_code == 302
    assert not GoldItem.objects.get().active


# ------------------------------------------------------------------- rates, pages, access


@pytest.mark.django_db
def test_rates_are_set_by_admins_audited_and_checked(admin_client, reviewer_client, admin_user):
    url = reverse("qa_rates")
    assert reviewer_client.post(url, {"kind": "pass", "percent": "2"}).status_code == 403
    assert admin_client.post(url, {"kind": "pass", "percent": "2"}).status_code == 302
    assert (
        admin_client.post(url, {"kind": "block", "category": "porn", "percent": "5"}).status_code
        == 302
    )
    assert dict(Rate.objects.values_list("kind", "percent")) == {"pass": 2.0, "block": 5.0}
    for bad in (
        {"kind": "pass", "percent": "abc"},
        {"kind": "pass", "percent": "101"},
        {"kind": "pass", "percent": "-1"},
        {"kind": "nope", "percent": "1"},
        {"kind": "double", "category": "porn", "percent": "1"},
        {"kind": "pass", "category": "two words", "percent": "1"},
    ):
        assert admin_client.post(url, bad).status_code == 400, bad
    entry = AuditEntry.objects.filter(action="qa.rate_set").order_by("id").last()
    assert entry is not None
    assert entry.actor == admin_user
    assert entry.state_after == "5%"
    assert admin_client.post(url, {"kind": "pass", "percent": ""}).status_code == 302
    assert not Rate.objects.filter(kind="pass").exists()


@pytest.mark.django_db
def test_admin_pages_are_for_admins_only(admin_client, reviewer_client):
    for name in ("qa_overview", "qa_adjudication", "qa_gold"):
        assert reviewer_client.get(reverse(name)).status_code == 403
        assert admin_client.get(reverse(name)).status_code == 200
        assert Client().get(reverse(name)).status_code == 302
    assert reviewer_client.get(reverse("qa_imm_queue")).status_code == 200


@pytest.mark.django_db
def test_the_overview_shows_queue_sizes_and_accuracy(blind_setup, admin_client, admin_user):
    second = blind_setup["second"]
    blind = services.claim_blind(second)
    assert blind is not None
    services.answer_blind(person=second, image_id=blind.image.pk, action="approve")
    page = admin_client.get(reverse("qa_overview")).content.decode()
    assert "1</strong> disagreements waiting" in page
    assert "No gold answers or rulings yet." in page
    services.rule(double_id=DoubleReview.objects.get().pk, admin=admin_user, ruling="approve")
    page = admin_client.get(reverse("qa_overview")).content.decode()
    assert "0</strong> disagreements waiting" in page
    assert "Reviewer accuracy" in page
    assert "secondperson" in page
    assert "1 of 1 (100%)" in page  # secondperson agreed with the ruling
    assert "0 of 1 (0%)" in page  # firstperson did not


# ------------------------------------------------------------------------------ races


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_reviewers_never_get_the_same_double_review_or_qa_item(make_image):
    """Eight reviewers on their own connections claim double reviews and IMM checks at once:
    each item goes to exactly one of them."""
    first = user("firstperson")
    rate("double", 100.0)
    decisions = [decided(make_image, first) for _ in range(6)]
    Rate.objects.all().delete()
    images = [make_image(status=APPROVED) for _ in range(6)]
    now = timezone.now()
    ImmCheck.objects.bulk_create(
        ImmCheck(image=i, suggestion="pass", settled_as=APPROVED, sampled_at=now) for i in images
    )
    reviewers = [user(f"r{n}") for n in range(8)]
    barrier = threading.Barrier(len(reviewers), timeout=60)
    got: list[tuple[str, int, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def work(person: Any) -> None:
        try:
            barrier.wait()
            blind = services.claim_blind(person)
            check = services.claim_check(person)
            with lock:
                if blind is not None:
                    got.append(("double", blind.image.pk, person.pk))
                if check is not None:
                    got.append(("check", check.pk, person.pk))
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(r,)) for r in reviewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    doubles = [image for kind, image, _ in got if kind == "double"]
    checks = [pk for kind, pk, _ in got if kind == "check"]
    assert sorted(doubles) == sorted(d.image_id for d in decisions)
    assert len(checks) == len(set(checks)) == 6
    held = DoubleReview.objects.exclude(claimed_by=None).values_list("claimed_by", flat=True)
    assert len(list(held)) == len(set(held)) == 6


@pytest.mark.django_db
def test_the_accuracy_partial_renders_for_admins_only(admin_user, reviewer_user, make_image):
    from django.template import engines
    from django.test import RequestFactory

    rate("gold", 100.0)
    image = make_image(status=APPROVED)
    services.mark_gold(image_id=image.pk, admin=admin_user, expected="approve")
    blind = services.claim_blind(reviewer_user)
    assert blind is not None
    services.answer_blind(person=reviewer_user, image_id=image.pk, action="approve")
    page = engines["django"].from_string("{% load qa_tags %}{% qa_accuracy %}")
    request = RequestFactory().get("/dashboard/")
    request.user = admin_user
    shown = page.render({}, request)
    assert "Reviewer accuracy" in shown
    assert "1 of 1 (100%)" in shown
    request.user = reviewer_user
    assert "Reviewer accuracy" not in page.render({}, request)


@pytest.mark.django_db
def test_start_reviewing_with_nothing_blind_due_costs_one_read_and_no_lock(make_image):
    """The hook on the claim path: with no double review waiting and gold not drawn, it reads
    once (an ordinary item held, a double or gold item held, any double waiting, the gold rate,
    together) and takes no lock."""
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    rex = user("rex1")
    with CaptureQueriesContext(db) as queries:
        assert services.claim_blind(rex) is None
    sql = [q["sql"].upper() for q in queries.captured_queries]
    assert len(sql) == 1, sql
    assert not any("FOR UPDATE" in s or "SAVEPOINT" in s or s.startswith("BEGIN") for s in sql)


@pytest.mark.django_db
def test_blind_items_obey_the_reviewers_opt_outs_and_daily_limits(blind_setup, gold_image):
    """A double review or a gold item of a category the reviewer opted out of, or whose daily
    limit they reached, is not handed to them (others still get it)."""
    from reviews.exposure.models import ExposureCap, ExposureCount, OptOut

    for image in (blind_setup["image"], gold_image):
        ImageCategory.objects.create(image=image, category="porn")
    second = blind_setup["second"]
    OptOut.objects.create(reviewer=second, category="porn")
    rate("gold", 100.0)
    assert services.claim_blind(second) is None

    capped = user("cappedperson")
    ExposureCap.objects.create(category="porn", images=1)
    ExposureCount.objects.create(
        reviewer=capped, day=timezone.localdate(), category="porn", previews=1
    )
    assert services.claim_blind(capped) is None

    other = user("otherperson")
    blind = services.claim_blind(other)
    assert blind is not None
    assert blind.double is not None
    assert blind.image.pk == blind_setup["image"].pk
