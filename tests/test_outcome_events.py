"""Outcome events at every change: IMM's routing, a person's decision, undo. Each event is
written in the change's transaction with the payload the feed and webhooks send; a change that
rolls back leaves none, and an event that cannot be written takes the change back with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from moderation.events import outbox
from moderation.events.models import Event
from moderation.imm import pipeline
from moderation.imm.client import ImmClient
from moderation.models import Image, RoutingRule
from reviews import services
from reviews.models import Decision

from .test_pipeline import FakeImm, client_for, deliver

pytestmark = pytest.mark.django_db

PAYLOAD_KEYS = {
    "id",
    "type",
    "image_id",
    "sequence",
    "status",
    "decided_by",
    "verdict",
    "reason",
    "occurred_at",
}
WAITING, ESCALATED = Image.Status.AWAITING_REVIEW, Image.Status.ESCALATED
APPROVED, REJECTED = Image.Status.APPROVED, Image.Status.REJECTED


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


def sent(make_image, imm) -> tuple[Image, str]:
    """An image submitted to (fake) IMM, and its TaskId."""
    image = make_image()
    assert pipeline.submit(image_id=image.pk, client=imm).what == "submitted"
    return image, image.moderation_tasks.get().task_id


def events_of(image: Image) -> list[Event]:
    return list(Event.objects.filter(image=image).order_by("sequence"))


def assert_payload(event: Event, **expected: Any) -> None:
    """The event's payload: exactly the contract's keys, consistent with the row, as expected."""
    data = event.data
    keys = PAYLOAD_KEYS | ({"previous_status"} if "previous_status" in expected else set())
    assert set(data) == keys
    assert (data["id"], data["type"], data["image_id"], data["sequence"]) == (
        event.public_id,
        event.type,
        event.image_id,
        event.sequence,
    )
    occurred = datetime.fromisoformat(data["occurred_at"])
    assert data["occurred_at"].endswith("Z")
    assert occurred == event.created_at
    for key, value in expected.items():
        assert data[key] == value, key


# ------------------------------------------------------------------------------------ IMM


@pytest.mark.parametrize(
    ("suggestion", "categories", "type", "status", "reason"),
    [
        ("pass", (), Event.Type.APPROVED, APPROVED, "IMM said pass"),
        ("block", ("porn", "sexy"), Event.Type.REJECTED, REJECTED, "IMM said block: porn, sexy"),
    ],
)
def test_imm_settling_an_image_writes_its_outcome_event(
    suggestion, categories, type, status, reason, make_image, imm
):
    image, task_id = sent(make_image, imm)

    deliver(task_id, suggestion, categories=categories)

    image.refresh_from_db()
    [event] = events_of(image)
    assert (event.type, event.sequence) == (type, 1)
    assert_payload(
        event,
        status=status,
        decided_by={"kind": "imm", "name": "IMM"},
        verdict=status,
        reason=reason,
    )
    assert event.created_at == image.status_changed_at


def test_imm_sending_an_image_to_review_or_failing_it_is_no_outcome(make_image, imm):
    to_review, review_task = sent(make_image, imm)
    failing, failing_task = sent(make_image, imm)

    deliver(review_task, "review", categories=("sexy",))
    deliver(failing_task, "", status="Failed", code="InvalidArgument", text="cannot read")

    assert Image.objects.get(pk=to_review.pk).status == WAITING
    assert Image.objects.get(pk=failing.pk).status == Image.Status.FAILED
    assert not Event.objects.exists()


def test_imm_s_manual_review_settling_a_waiting_image_is_its_first_outcome(make_image, imm):
    image, task_id = sent(make_image, imm)
    deliver(task_id, "review", categories=("sexy",), end="2025-05-20T08:00:03.000Z")

    deliver(task_id, "block", categories=("sexy",), end="2025-05-20T10:00:00.000Z")

    [event] = events_of(image)
    assert_payload(event, type="image.rejected", status=REJECTED, sequence=1)


def test_imm_s_newer_word_changing_its_outcome_carries_the_status_before(make_image, imm):
    image, task_id = sent(make_image, imm)
    deliver(task_id, "pass", end="2025-05-20T08:00:03.000Z")

    deliver(task_id, "block", categories=("porn",), end="2025-05-20T10:00:00.000Z")

    first, second = events_of(image)
    assert_payload(first, type="image.approved", sequence=1)
    assert_payload(
        second,
        type="image.rejected",
        sequence=2,
        status=REJECTED,
        verdict=REJECTED,
        previous_status=APPROVED,
        decided_by={"kind": "imm", "name": "IMM"},
    )


def test_imm_sending_a_settled_image_back_to_review_reopens_it(make_image, imm):
    image, task_id = sent(make_image, imm)
    deliver(task_id, "pass", end="2025-05-20T08:00:03.000Z")

    deliver(task_id, "review", end="2025-05-20T10:00:00.000Z")

    _, reopened = events_of(image)
    assert_payload(
        reopened,
        type="image.reopened",
        status=WAITING,
        verdict="reopened",
        previous_status=APPROVED,
        decided_by={"kind": "imm", "name": "IMM"},
        reason="IMM said review",
    )


def test_a_routing_rule_holding_a_settled_image_for_people_reopens_it_in_the_rule_s_name(
    make_image, imm
):
    image, task_id = sent(make_image, imm)
    deliver(task_id, "pass", categories=("sexy",), end="2025-05-20T08:00:03.000Z")
    RoutingRule.objects.create(category="sexy")

    # IMM's manual review passes it again; the rule now holds what the first verdict flagged.
    deliver(task_id, "pass", end="2025-05-20T10:00:00.000Z")

    image.refresh_from_db()
    assert image.status == WAITING
    _, reopened = events_of(image)
    assert_payload(
        reopened,
        type="image.reopened",
        status=WAITING,
        previous_status=APPROVED,
        decided_by={"kind": "rule", "name": "routing rule for sexy"},
        reason="IMM said pass; routing rule for sexy",
    )


def test_a_word_that_leaves_the_image_where_it_is_writes_no_event(make_image, imm):
    image, task_id = sent(make_image, imm)
    deliver(task_id, "pass", end="2025-05-20T08:00:03.000Z")

    deliver(task_id, "pass", categories=("x",), end="2025-05-20T10:00:00.000Z")

    assert len(events_of(image)) == 1


def test_an_imm_change_that_rolls_back_leaves_no_event(make_image, imm):
    image, task_id = sent(make_image, imm)

    def route_then_fail() -> None:
        with transaction.atomic():
            deliver(task_id, "pass")
            assert len(events_of(image)) == 1  # written, inside the transaction
            raise RuntimeError("a failure after the routing")

    with pytest.raises(RuntimeError, match="after the routing"):
        route_then_fail()

    image.refresh_from_db()
    assert image.status == Image.Status.SUBMITTED
    assert not Event.objects.exists()


# ------------------------------------------------------------------------------- people


@pytest.fixture
def waiting_image(make_image) -> Image:
    return make_image(status=WAITING)


def claimed_by(reviewer, image: Image) -> None:
    claim = services.claim_next(reviewer=reviewer)
    assert claim is not None
    assert claim.image_id == image.pk


@pytest.mark.parametrize(
    ("verdict", "words", "type", "status", "reason"),
    [
        (Decision.Verdict.APPROVE, "", Event.Type.APPROVED, APPROVED, ""),
        (Decision.Verdict.REJECT, "a face", Event.Type.REJECTED, REJECTED, "porn — a face"),
        (
            Decision.Verdict.ESCALATE,
            "not sure",
            Event.Type.ESCALATED,
            ESCALATED,
            "sent to an admin for a decision",
        ),
    ],
)
def test_a_reviewer_s_decision_writes_its_event(
    verdict, words, type, status, reason, waiting_image, reviewer_user
):
    claimed_by(reviewer_user, waiting_image)
    at = timezone.now()

    services.decide(
        image_id=waiting_image.pk,
        reviewer=reviewer_user,
        verdict=verdict,
        reason=words,
        category="porn" if verdict == Decision.Verdict.REJECT else "",
        now=at,
    )

    [event] = events_of(waiting_image)
    assert event.created_at == at
    assert_payload(
        event,
        type=type,
        sequence=1,
        status=status,
        verdict=status,
        decided_by={"kind": "person", "name": "rex"},
        reason=reason,
    )


def test_an_admin_deciding_an_escalated_image_carries_the_status_before(
    waiting_image, reviewer_user, admin_user
):
    claimed_by(reviewer_user, waiting_image)
    services.decide(
        image_id=waiting_image.pk, reviewer=reviewer_user, verdict="escalate", reason="unsure"
    )

    services.decide(
        image_id=waiting_image.pk, reviewer=admin_user, verdict="reject", category="weapon"
    )

    escalated, rejected = events_of(waiting_image)
    # The reviewer's note ("unsure") is for the admins and the audit log, not for platforms.
    assert_payload(
        escalated,
        type="image.escalated",
        status=ESCALATED,
        reason="sent to an admin for a decision",
    )
    assert "unsure" not in json.dumps(escalated.data)
    assert_payload(
        rejected,
        type="image.rejected",
        sequence=2,
        status=REJECTED,
        previous_status=ESCALATED,
        decided_by={"kind": "person", "name": "ada"},
        reason="weapon",
    )


def test_undo_writes_an_undone_event_with_the_status_it_returns_to(waiting_image, reviewer_user):
    claimed_by(reviewer_user, waiting_image)
    decided = services.decide(image_id=waiting_image.pk, reviewer=reviewer_user, verdict="approve")

    services.undo(decision_id=decided.decision.pk, reviewer=reviewer_user)

    approved, undone = events_of(waiting_image)
    assert approved.type == "image.approved"
    assert_payload(
        undone,
        type="image.undone",
        sequence=2,
        status=WAITING,
        verdict="undone",
        previous_status=APPROVED,
        decided_by={"kind": "person", "name": "rex"},
        reason="undid approved",
    )


def test_a_decision_that_rolls_back_leaves_no_event(waiting_image, admin_user):
    def decide_then_fail() -> None:
        with transaction.atomic():
            services.decide(image_id=waiting_image.pk, reviewer=admin_user, verdict="approve")
            assert Event.objects.filter(image=waiting_image).exists()
            raise RuntimeError("a failure after the decision")

    with pytest.raises(RuntimeError, match="after the decision"):
        decide_then_fail()

    waiting_image.refresh_from_db()
    assert waiting_image.status == WAITING
    assert not Decision.objects.exists()
    assert not Event.objects.exists()


def test_an_event_that_cannot_be_written_takes_the_decision_back(
    waiting_image, admin_user, make_image, monkeypatch
):
    other = make_image(status=WAITING)
    services.decide(image_id=other.pk, reviewer=admin_user, verdict="approve")
    taken = Event.objects.get().public_id
    # The next event gets an id that is already used: its INSERT fails.
    monkeypatch.setattr(outbox, "new_public_id", lambda: taken)

    with pytest.raises(IntegrityError):
        services.decide(image_id=waiting_image.pk, reviewer=admin_user, verdict="approve")

    waiting_image.refresh_from_db()
    assert (waiting_image.status, waiting_image.human_decided_at) == (WAITING, None)
    assert not Decision.objects.filter(image=waiting_image).exists()
    assert not Event.objects.filter(image=waiting_image).exists()


def test_the_event_s_time_is_utc_whatever_the_time_zone(waiting_image, admin_user):
    at = datetime(2026, 3, 1, 9, 30, 15, tzinfo=ZoneInfo("Asia/Shanghai"))

    services.decide(image_id=waiting_image.pk, reviewer=admin_user, verdict="approve", now=at)

    [event] = events_of(waiting_image)
    assert event.data["occurred_at"] == "2026-03-01T01:30:15Z"
