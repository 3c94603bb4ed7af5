"""An admin's later changes to a settled image: reopen (back to the review queue) and override
(approved <-> rejected). Services, the image page's forms (full page and htmx fragment), races,
and IMM's later word, which never overwrites them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from moderation.accounts import create_user
from moderation.events.models import Event
from moderation.imm import pipeline
from moderation.imm.client import ImmClient
from moderation.models import AuditEntry, Image
from reviews import services
from reviews.models import Claim, Decision

from .conftest import PASSWORD
from .test_pipeline import FakeImm, client_for, deliver

pytestmark = pytest.mark.django_db

WAITING, APPROVED, REJECTED = (
    Image.Status.AWAITING_REVIEW,
    Image.Status.APPROVED,
    Image.Status.REJECTED,
)


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
def imm_approved(make_image, imm) -> tuple[Image, str]:
    """An image IMM approved (an image.approved event), and its TaskId for IMM's later words."""
    image = make_image()
    assert pipeline.submit(image_id=image.pk, client=imm).what == "submitted"
    task_id = image.moderation_tasks.get().task_id
    deliver(task_id, "pass", end="2025-05-20T08:00:03.000Z")
    image.refresh_from_db()
    assert image.status == APPROVED
    return image, task_id


def state_of(image: Image) -> dict[str, Any]:
    return {
        "image": Image.objects.filter(pk=image.pk)
        .values("status", "status_changed_at", "human_decided_at")
        .get(),
        "decisions": Decision.objects.filter(image=image).count(),
        "events": Event.objects.filter(image=image).count(),
        "audit": AuditEntry.objects.filter(image=image).count(),
    }


# ------------------------------------------------------------------------------- reopen


def test_reopening_sends_a_settled_image_back_to_the_queue_with_decision_audit_and_event(
    imm_approved, admin_user, reviewer_user
):
    image, _ = imm_approved
    # A lease left from before IMM settled it must not come back to life with the status.
    Claim.objects.create(
        image=image,
        reviewer=reviewer_user,
        claimed_at=image.status_changed_at,
        expires_at=image.status_changed_at.replace(year=2099),
    )

    outcome = services.reopen(
        image_id=image.pk, admin=admin_user, reason="the face is a minor's", expected=APPROVED
    )

    image.refresh_from_db()
    assert image.status == WAITING
    assert image.human_decided_at == image.status_changed_at == outcome.decision.created_at
    assert not Claim.objects.filter(image=image).exists()
    decision = outcome.decision
    assert (decision.verdict, decision.reviewer, decision.reason) == (
        Decision.Verdict.REOPEN,
        admin_user,
        "the face is a minor's",
    )
    assert (decision.status_before, decision.status_after) == (APPROVED, WAITING)
    [entry] = AuditEntry.objects.filter(image=image, action="review.reopened")
    assert (entry.actor, entry.state_before, entry.state_after, entry.reason) == (
        admin_user,
        APPROVED,
        WAITING,
        "the face is a minor's",
    )
    event = Event.objects.filter(image=image).order_by("sequence").last()
    assert event.type == "image.reopened"
    assert event.sequence == 2
    assert {k: v for k, v in event.data.items() if k not in ("id", "occurred_at")} == {
        "type": "image.reopened",
        "image_id": image.pk,
        "sequence": 2,
        "status": WAITING,
        "previous_status": APPROVED,
        "decided_by": {"kind": "person", "name": "ada"},
        "verdict": "reopened",
        "reason": "the face is a minor's",
    }
    # It waits in the queue like any other image.
    assert services.waiting().filter(pk=image.pk).exists()


def test_a_reopened_image_is_decided_by_a_reviewer_as_any_other(imm_approved, reviewer_user):
    image, _ = imm_approved
    admin = create_user(username="ann", role="admin", password=PASSWORD, validate=False)
    services.reopen(image_id=image.pk, admin=admin, reason="look again")
    claim = services.claim_next(reviewer=reviewer_user)
    assert claim is not None
    assert claim.image_id == image.pk

    services.decide(image_id=image.pk, reviewer=reviewer_user, verdict="reject", category="porn")

    last = Event.objects.filter(image=image).order_by("sequence").last()
    assert (last.type, last.sequence) == ("image.rejected", 3)
    assert last.data["previous_status"] == WAITING


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
def test_a_reopen_without_a_reason_or_with_one_too_long_is_refused_whole(
    reason, imm_approved, admin_user
):
    image, _ = imm_approved
    before = state_of(image)

    with pytest.raises(services.Invalid) as refused:
        services.reopen(image_id=image.pk, admin=admin_user, reason=reason)

    assert refused.value.status == 400
    assert state_of(image) == before


@pytest.mark.parametrize(
    "status", [WAITING, Image.Status.ESCALATED, Image.Status.FAILED, Image.Status.SUBMITTED]
)
def test_only_a_settled_image_can_be_reopened(status, make_image, admin_user):
    image = make_image(status=status)
    before = state_of(image)

    with pytest.raises(services.AlreadyDecided, match="only an approved or rejected image"):
        services.reopen(image_id=image.pk, admin=admin_user, reason="why not")

    assert state_of(image) == before


def test_a_reopen_of_an_image_that_changed_since_the_page_was_shown_is_a_409(
    imm_approved, admin_user
):
    image, _ = imm_approved
    services.override(image_id=image.pk, admin=admin_user, to=REJECTED, reason="a knife")
    before = state_of(image)

    with pytest.raises(services.AlreadyDecided, match="changed meanwhile: it is rejected now"):
        services.reopen(image_id=image.pk, admin=admin_user, reason="again", expected=APPROVED)

    assert state_of(image) == before


def test_a_reviewer_may_not_reopen_or_override(imm_approved, reviewer_user):
    image, _ = imm_approved
    before = state_of(image)

    with pytest.raises(services.NotYours):
        services.reopen(image_id=image.pk, admin=reviewer_user, reason="x")
    with pytest.raises(services.NotYours):
        services.override(image_id=image.pk, admin=reviewer_user, to=REJECTED, reason="x")

    assert state_of(image) == before


# ----------------------------------------------------------------------------- override


def test_overriding_changes_the_outcome_with_decision_audit_and_event(imm_approved, admin_user):
    image, _ = imm_approved

    outcome = services.override(
        image_id=image.pk, admin=admin_user, to=REJECTED, reason="a weapon", expected=APPROVED
    )

    image.refresh_from_db()
    assert (image.status, image.human_decided_at) == (REJECTED, outcome.decision.created_at)
    assert (outcome.decision.verdict, outcome.decision.status_before) == ("override", APPROVED)
    [entry] = AuditEntry.objects.filter(image=image, action="review.overridden")
    assert (entry.state_before, entry.state_after, entry.reason) == (APPROVED, REJECTED, "a weapon")
    event = Event.objects.filter(image=image).order_by("sequence").last()
    assert event.type == "image.overridden"
    assert (event.data["status"], event.data["verdict"], event.data["previous_status"]) == (
        REJECTED,
        REJECTED,
        APPROVED,
    )
    assert event.data["decided_by"] == {"kind": "person", "name": "ada"}

    services.override(image_id=image.pk, admin=admin_user, to=APPROVED, reason="a toy after all")

    image.refresh_from_db()
    assert image.status == APPROVED
    assert Event.objects.filter(image=image, type="image.overridden").count() == 2


def test_overriding_to_the_outcome_it_has_is_a_409_not_a_flip(imm_approved, admin_user):
    image, _ = imm_approved
    before = state_of(image)

    with pytest.raises(services.AlreadyDecided, match="already approved"):
        services.override(image_id=image.pk, admin=admin_user, to=APPROVED, reason="x")

    assert state_of(image) == before


@pytest.mark.parametrize("to", ["", "escalated", "awaiting_review", "approve"])
def test_an_override_to_anything_but_approved_or_rejected_is_a_400(to, imm_approved, admin_user):
    image, _ = imm_approved
    before = state_of(image)

    with pytest.raises(services.Invalid):
        services.override(image_id=image.pk, admin=admin_user, to=to, reason="x")

    assert state_of(image) == before


def test_a_reviewer_cannot_undo_a_decision_an_admin_has_overridden_since(
    make_image, reviewer_user, admin_user
):
    image = make_image(status=WAITING)
    services.claim_next(reviewer=reviewer_user)
    decided = services.decide(image_id=image.pk, reviewer=reviewer_user, verdict="approve")
    services.override(image_id=image.pk, admin=admin_user, to=REJECTED, reason="no")
    services.override(image_id=image.pk, admin=admin_user, to=APPROVED, reason="yes after all")
    before = state_of(image)

    with pytest.raises(services.UndoRefused, match="has changed since your decision"):
        services.undo(decision_id=decided.decision.pk, reviewer=reviewer_user)

    assert state_of(image) == before


def test_reopens_and_overrides_cannot_be_undone(imm_approved, admin_user):
    image, _ = imm_approved
    reopened = services.reopen(image_id=image.pk, admin=admin_user, reason="look again")

    with pytest.raises(services.NotFound):
        services.undo(decision_id=reopened.decision.pk, reviewer=admin_user)


# ----------------------------------------------------------------- IMM's word afterwards


def test_imm_s_later_word_does_not_settle_a_reopened_image(imm_approved, admin_user):
    image, task_id = imm_approved
    services.reopen(image_id=image.pk, admin=admin_user, reason="look again")
    events = Event.objects.filter(image=image).count()

    outcome = deliver(task_id, "block", categories=("porn",), end="2025-05-20T10:00:00.000Z")

    assert outcome.result.applied is False
    assert outcome.result.outcome.startswith("kept: a person has decided this image")
    image.refresh_from_db()
    assert image.status == WAITING
    assert Event.objects.filter(image=image).count() == events


def test_imm_s_later_word_does_not_undo_an_override(imm_approved, admin_user):
    image, task_id = imm_approved
    services.override(image_id=image.pk, admin=admin_user, to=REJECTED, reason="a weapon")

    outcome = deliver(task_id, "pass", end="2025-05-20T10:00:00.000Z")

    assert outcome.result.applied is False
    image.refresh_from_db()
    assert image.status == REJECTED


def test_a_reopen_still_holds_against_imm_after_a_reviewer_s_decision_on_it_is_undone(
    imm_approved, admin_user, reviewer_user
):
    image, task_id = imm_approved
    services.reopen(image_id=image.pk, admin=admin_user, reason="look again")
    services.claim_next(reviewer=reviewer_user)
    decided = services.decide(image_id=image.pk, reviewer=reviewer_user, verdict="approve")
    services.undo(decision_id=decided.decision.pk, reviewer=reviewer_user)
    image.refresh_from_db()
    assert image.status == WAITING
    assert image.human_decided_at is not None  # the reopen's, put back

    outcome = deliver(task_id, "block", categories=("porn",), end="2025-05-20T10:00:00.000Z")

    assert outcome.result.applied is False
    image.refresh_from_db()
    assert image.status == WAITING


# ------------------------------------------------------------------------------- races


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("second", ["override", "reopen"])
def test_two_admins_changing_the_same_image_at_once_one_wins_the_other_gets_a_409(
    second, make_image
):
    image = make_image(status=APPROVED)
    admins = [
        create_user(username=name, role="admin", password=PASSWORD, validate=False)
        for name in ("ana", "bea")
    ]
    barrier = threading.Barrier(2)
    results: list[str] = []

    def act(admin: Any, what: str) -> None:
        try:
            barrier.wait()
            if what == "override":
                services.override(
                    image_id=image.pk, admin=admin, to=REJECTED, reason="r", expected=APPROVED
                )
            else:
                services.reopen(image_id=image.pk, admin=admin, reason="r", expected=APPROVED)
            results.append("done")
        except services.AlreadyDecided:
            results.append("409")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=act, args=(admins[0], "override")),
        threading.Thread(target=act, args=(admins[1], second)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == ["409", "done"]
    changes = Event.objects.filter(image=image)
    assert changes.count() == 1
    assert Decision.objects.filter(image=image).count() == 1
    image.refresh_from_db()
    assert image.status == changes.get().data["status"]


# -------------------------------------------------------------------------------- pages


def page_of(client: Client, image: Image) -> str:
    return client.get(reverse("image_detail", args=[image.pk])).content.decode()


def test_the_image_page_offers_an_admin_reopen_and_override_as_real_forms(
    admin_client, imm_approved
):
    image, _ = imm_approved

    html = page_of(admin_client, image)

    assert 'id="outcome"' in html
    assert "approved by IMM" in html
    reopen, override = (
        reverse("review_reopen", args=[image.pk]),
        reverse("review_override", args=[image.pk]),
    )
    assert f'<form method="post" action="{reopen}" hx-post="{reopen}"' in html
    assert f'<form method="post" action="{override}" hx-post="{override}"' in html
    assert html.count('name="csrfmiddlewaretoken"') >= 3  # both forms (and sign-out)
    assert '<input type="hidden" name="to" value="rejected">' in html
    assert "Change to rejected" in html
    assert '<input type="hidden" name="expected" value="approved">' in html


def test_an_image_not_settled_offers_no_admin_change(admin_client, make_image):
    image = make_image(status=WAITING)

    html = page_of(admin_client, image)

    assert "No final outcome yet" in html
    assert reverse("review_reopen", args=[image.pk]) not in html


def test_reopening_from_the_page_without_htmx_redirects_to_it_with_the_note(
    admin_client, imm_approved
):
    image, _ = imm_approved

    response = admin_client.post(
        reverse("review_reopen", args=[image.pk]),
        {"reason": "look again", "expected": APPROVED},
        follow=True,
    )

    assert response.redirect_chain == [(reverse("image_detail", args=[image.pk]), 302)]
    html = response.content.decode()
    assert f"Image {image.pk} is back in the review queue." in html
    assert "sent back to review by ada" in html
    image.refresh_from_db()
    assert image.status == WAITING
    entry = AuditEntry.objects.get(image=image, action="review.reopened")
    assert entry.ip_address == "127.0.0.1"


def test_overriding_with_htmx_swaps_the_outcome_card_status_and_history(admin_client, imm_approved):
    image, _ = imm_approved

    response = admin_client.post(
        reverse("review_override", args=[image.pk]),
        {"reason": "a weapon", "expected": APPROVED, "to": REJECTED},
        headers={"HX-Request": "true"},
    )

    assert response.status_code == 200
    assert "HX-Request" in response["Vary"]
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card outcome" id="outcome"')
    assert "<html" not in html
    assert f"Image {image.pk} is now rejected." in html
    assert "outcome overridden by ada" in html
    assert '<span id="image-status" class="status status-rejected" hx-swap-oob="true">' in html
    assert '<section class="card" id="history" hx-swap-oob="true">' in html
    assert "Outcome overridden by an admin" in html
    # Rejected now: the form offers the way back.
    assert "Change to approved" in html
    image.refresh_from_db()
    assert image.status == REJECTED


def test_a_stale_form_gets_a_409_with_the_reason_on_the_page_and_in_the_fragment(
    admin_client, imm_approved, admin_user
):
    image, _ = imm_approved
    services.override(image_id=image.pk, admin=admin_user, to=REJECTED, reason="a weapon")
    url = reverse("review_override", args=[image.pk])
    form = {"reason": "no", "expected": APPROVED, "to": REJECTED}
    before = state_of(image)

    full = admin_client.post(url, form)
    fragment = admin_client.post(url, form, headers={"HX-Request": "true"})

    assert (full.status_code, fragment.status_code) == (409, 409)
    message = f"Image {image.pk} changed meanwhile: it is rejected now. Nothing was changed."
    assert message in full.content.decode()
    assert "<html" in full.content.decode()
    assert message in fragment.content.decode()
    assert "<html" not in fragment.content.decode()
    assert state_of(image) == before


def test_a_reopen_without_a_reason_from_the_page_is_a_400(admin_client, imm_approved):
    image, _ = imm_approved
    before = state_of(image)

    response = admin_client.post(
        reverse("review_reopen", args=[image.pk]), {"reason": " ", "expected": APPROVED}
    )

    assert response.status_code == 400
    assert "Say why it goes back to review." in response.content.decode()
    assert state_of(image) == before


def test_reviewers_are_refused_the_admin_actions_with_a_403(reviewer_client, imm_approved):
    image, _ = imm_approved
    before = state_of(image)

    for name, form in [
        ("review_reopen", {"reason": "x"}),
        ("review_override", {"reason": "x", "to": REJECTED}),
    ]:
        response = reviewer_client.post(reverse(name, args=[image.pk]), form)
        assert response.status_code == 403

    assert state_of(image) == before


def test_the_admin_actions_take_only_post_and_a_csrf_token(admin_user, imm_approved):
    image, _ = imm_approved
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    url = reverse("review_reopen", args=[image.pk])

    assert client.get(url).status_code == 405
    assert client.post(url, {"reason": "x"}).status_code == 403
    assert Image.objects.get(pk=image.pk).status == APPROVED


def test_an_unknown_image_is_a_404(admin_client):
    response = admin_client.post(reverse("review_reopen", args=[999999]), {"reason": "x"})

    assert response.status_code == 404
