"""Issue 9, points 3, 5 and 9, replayed over HTTP as a curious reviewer or a careless user would.

A reviewer sees the images waiting for review and nothing else: every per-image review URL, by
every method it takes, answers 404 for any other image (or none at all), says nothing of its
status or who decided it, and writes no row. Free text has one limit that the form, the service,
the decision and the audit entry share: over it is a 400 that writes nothing, never a silent cut.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from moderation import limits
from moderation.audit import log as audit
from moderation.models import AuditEntry, Image, RoutingRule
from reviews.models import Claim, Decision

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}
WAITING = Image.Status.AWAITING_REVIEW
HIDDEN = [status for status in Image.Status.values if status != WAITING]
MISSING = 987_654


def rows() -> tuple[Any, ...]:
    """Everything a request could write in the review area."""
    return (
        list(Decision.objects.order_by("id").values_list("id", "verdict")),
        list(Claim.objects.order_by("image_id").values_list("image_id", "reviewer_id")),
        AuditEntry.objects.count(),
        list(Image.objects.order_by("id").values_list("id", "status", "status_changed_at")),
    )


@pytest.fixture
def hidden_image(make_image) -> Callable[[str], Image]:
    def make(status: str) -> Image:
        image = make_image(status=status)
        Image.objects.filter(pk=image.pk).update(
            status_changed_at=timezone.now() - timedelta(hours=5),
            imm_suggestion="block",
            imm_categories=["porn"],
        )
        image.refresh_from_db()
        return image

    return make


def per_image_requests(pk: int) -> list[tuple[str, str, dict[str, str]]]:
    """Every per-image review URL with every method it takes (and each decide action)."""
    item = reverse("review_item", args=[pk])
    decide = reverse("review_decide", args=[pk])
    return [
        ("get", item, {}),
        ("head", item, {}),
        ("post", decide, {"action": "approve"}),
        ("post", decide, {"action": "reject", "reject_category": "porn", "reason": "nope"}),
        ("post", decide, {"action": "escalate", "note": "look"}),
        ("post", decide, {"action": "skip"}),
        ("post", decide, {"action": "nonsense"}),
        ("post", reverse("review_renew", args=[pk]), {}),
    ]


@pytest.mark.parametrize("htmx", [False, True], ids=["page", "htmx"])
@pytest.mark.parametrize("status", [*HIDDEN, "missing"])
def test_a_reviewer_gets_404_and_writes_nothing_for_any_image_not_waiting_for_review(
    reviewer_client, reviewer_user, admin_user, hidden_image, make_image, status, htmx
):
    # Something else waits, so a request that went on to "the next item" would claim it.
    make_image(status=WAITING)
    if status == "missing":
        pk, label = MISSING, ""
    else:
        image = hidden_image(status)
        pk, label = image.pk, image.get_status_display().lower()
        # A stale claim of the reviewer's own on it (held before it was settled) opens nothing.
        now = timezone.now()
        Claim.objects.create(
            image=image, reviewer=reviewer_user, claimed_at=now, expires_at=now + timedelta(1)
        )
        Decision.objects.create(
            image=image,
            reviewer=admin_user,
            verdict=Decision.Verdict.APPROVE,
            reason="secret admin reason",
            status_before=WAITING,
            status_after=status,
            created_at=now,
        )
    before = rows()

    for method, url, data in per_image_requests(pk):
        response = getattr(reviewer_client, method)(url, data, headers=HX if htmx else {})

        body = response.content.decode()
        assert response.status_code == 404, (method, url, data, response.status_code)
        if method != "head":
            assert f"Image {pk} is no longer waiting for review." in body
        if label:
            assert label not in body.lower(), (method, url, data)
        assert "secret admin reason" not in body
        assert "ada" not in re.findall(r"\w+", body)
        assert rows() == before, (method, url, data)


@pytest.mark.parametrize("status", HIDDEN)
def test_an_admin_deciding_an_image_that_is_not_waiting_is_told_why(
    admin_client, hidden_image, status
):
    image = hidden_image(status)
    before = rows()

    response = admin_client.post(
        reverse("review_decide", args=[image.pk]),
        {"action": "reject", "reason": "no"},
        headers=HX,
    )

    if status in (Image.Status.APPROVED, Image.Status.REJECTED):
        assert response.status_code == 409
        assert f"it is {image.get_status_display().lower()}" in response.content.decode()
    elif status == Image.Status.ESCALATED:
        assert response.status_code == 200  # admins decide escalated images
    else:
        # Never reached review: the admin's review pane has no such item either.
        assert response.status_code == 404
    if status != Image.Status.ESCALATED:
        assert rows() == before


def test_a_reviewer_undoes_their_own_approve_although_the_image_no_longer_waits(
    reviewer_client, reviewer_user, make_image
):
    image = make_image(status=WAITING)
    reviewer_client.post(reverse("review_next"))
    reviewer_client.post(reverse("review_decide", args=[image.pk]), {"action": "approve"})
    decision = Decision.objects.get(image=image)

    response = reviewer_client.post(reverse("review_undo", args=[decision.pk]), headers=HX)

    assert response.status_code == 200
    image.refresh_from_db()
    assert image.status == WAITING
    assert Claim.objects.get(image=image).reviewer == reviewer_user


def test_a_reviewer_cannot_undo_anyone_elses_decision_or_learn_of_it(
    reviewer_client, admin_client, make_image
):
    image = make_image(status=WAITING)
    admin_client.post(
        reverse("review_decide", args=[image.pk]), {"action": "reject", "reason": "x"}
    )
    decision = Decision.objects.get(image=image)
    before = rows()

    for pk in (decision.pk, MISSING):
        response = reviewer_client.post(reverse("review_undo", args=[pk]), headers=HX)

        assert response.status_code == 404
        assert "There is no decision of yours to undo." in response.content.decode()
        assert "rejected" not in response.content.decode().lower()
    assert rows() == before


# ------------------------------------------------------------------------ the uploader filter


@pytest.fixture
def two_uploaders(make_image, admin_user, db) -> tuple[Image, Image]:
    from moderation.accounts import create_user

    ulla = create_user(username="ulla", role="admin", password="x" * 12, validate=False)
    oldest = make_image(status=WAITING)
    ullas = make_image(status=WAITING)
    Image.objects.filter(pk=oldest.pk).update(status_changed_at=timezone.now() - timedelta(days=2))
    Image.objects.filter(pk=ullas.pk).update(
        uploaded_by=ulla, status_changed_at=timezone.now() - timedelta(days=1)
    )
    return oldest, Image.objects.get(pk=ullas.pk)


def test_a_reviewers_uploader_filter_is_ignored_on_the_queue_next_and_after_a_decision(
    reviewer_client, reviewer_user, two_uploaders, make_image
):
    oldest, ullas = two_uploaders
    uploader = {"uploader": str(ullas.uploaded_by_id)}
    third = make_image(status=WAITING)

    html = reviewer_client.get(reverse("review_queue"), uploader).content.decode()
    started = reviewer_client.post(reverse("review_next"), uploader)
    after = reviewer_client.post(
        reverse("review_decide", args=[oldest.pk]), {"action": "approve", **uploader}
    )

    listed = [int(pk) for pk in re.findall(r'href="/reviews/(\d+)/"', html)]
    assert oldest.pk in listed
    assert third.pk in listed
    assert "Clear filters" not in html
    assert started["Location"] == reverse("review_item", args=[oldest.pk])
    # The next item is the oldest waiting (ulla's), then the rest: no uploader narrows it.
    assert after["Location"] == reverse("review_item", args=[ullas.pk])
    assert Claim.objects.get(reviewer=reviewer_user).image_id == ullas.pk


def test_an_admins_uploader_filter_still_narrows_next(admin_client, admin_user, two_uploaders):
    _, ullas = two_uploaders

    started = admin_client.post(reverse("review_next"), {"uploader": ullas.uploaded_by_id})

    assert started["Location"] == reverse("review_item", args=[ullas.pk])


# ---------------------------------------------------------------------------- long free text


def test_a_501_character_reject_reason_is_a_400_that_writes_nothing(reviewer_client, make_image):
    image = make_image(status=WAITING)
    reviewer_client.post(reverse("review_next"))
    before = rows()

    response = reviewer_client.post(
        reverse("review_decide", args=[image.pk]),
        {"action": "reject", "reject_category": "porn", "reason": "x" * (limits.WORDS_MAX + 1)},
        headers=HX,
    )

    assert response.status_code == 400
    assert (
        f"The reason is 501 characters long; it can be at most {limits.WORDS_MAX}."
        in response.content.decode()
    )
    assert rows() == before


def test_a_501_character_escalation_note_is_a_400_that_writes_nothing(reviewer_client, make_image):
    image = make_image(status=WAITING)
    reviewer_client.post(reverse("review_next"))
    before = rows()

    response = reviewer_client.post(
        reverse("review_decide", args=[image.pk]),
        {"action": "escalate", "note": "n" * 501},
    )

    assert response.status_code == 400
    assert "The note is 501 characters long; it can be at most 500." in response.content.decode()
    assert rows() == before


def test_an_overlong_reject_category_is_a_400_that_writes_nothing(reviewer_client, make_image):
    image = make_image(status=WAITING)
    reviewer_client.post(reverse("review_next"))
    before = rows()

    response = reviewer_client.post(
        reverse("review_decide", args=[image.pk]),
        {"action": "reject", "reject_category": "c" * (limits.CATEGORY_MAX + 1)},
        headers=HX,
    )

    assert response.status_code == 400
    assert (
        f"The category is {limits.CATEGORY_MAX + 1} characters long; it can be at most "
        f"{limits.CATEGORY_MAX}." in response.content.decode()
    )
    assert rows() == before


def test_a_501_character_bulk_reason_is_a_400_that_decides_nothing(admin_client, make_image):
    chosen = [make_image(status=WAITING), make_image(status=WAITING)]
    before = rows()

    response = admin_client.post(
        reverse("review_bulk"),
        {"action": "reject", "reason": "b" * 501, "images": [i.pk for i in chosen]},
    )

    html = response.content.decode()
    assert response.status_code == 400
    assert "The reason is 501 characters long; it can be at most 500." in html
    assert 'value="' + "b" * 501 + '"' in html  # the words are kept in the form to shorten
    assert rows() == before


def test_an_overlong_routing_note_or_category_is_refused_and_stores_nothing(admin_client):
    before = AuditEntry.objects.count()

    long_note = admin_client.post(
        reverse("routing_rules"), {"category": "sexy", "note": "n" * 201}, follow=True
    )
    long_category = admin_client.post(
        reverse("routing_rules"), {"category": "c" * 65, "note": ""}, follow=True
    )

    assert "The note is 201 characters long; it can be at most 200." in long_note.content.decode()
    assert "at most 64 characters" in long_category.content.decode()
    assert not RoutingRule.objects.exists()
    assert AuditEntry.objects.count() == before


def test_a_routing_note_of_exactly_the_limit_is_stored_whole(admin_client):
    note = "w" * limits.RULE_NOTE_MAX

    admin_client.post(reverse("routing_rules"), {"category": "sexy", "note": note})

    assert RoutingRule.objects.get().note == note
    assert AuditEntry.objects.get(action="routing.rule_added").reason == note


def test_the_audit_log_holds_every_reason_to_the_limit_clipping_system_text_visibly(db):
    from django.db import transaction

    with transaction.atomic():
        entry = audit.record(action="test.clipped", actor=None, reason="e" * 5000)
        whole = audit.record(action="test.whole", actor=None, reason="w" * limits.REASON_MAX)

    assert len(entry.reason) == limits.REASON_MAX
    assert entry.reason.endswith(limits.ELLIPSIS)
    assert whole.reason == "w" * limits.REASON_MAX
    assert limits.clip("short") == "short"


def test_a_long_imm_error_message_is_clipped_into_the_audit_log_not_refused(db):
    from moderation.imm import pipeline
    from moderation.imm.client import ImmError
    from moderation.models import ImmStatus

    # IMM's text is not a person's words: it reaches the log cut to the limit, marked as cut,
    # and the pause it explains still happens.
    pipeline.pause_submissions(ImmError("InvalidAccessKeyId.NotFound", "m" * 5000, http_status=403))

    entry = AuditEntry.objects.get(action="imm.paused")
    assert ImmStatus.objects.get(pk=1).paused
    assert len(entry.reason) == limits.REASON_MAX
    assert entry.reason.startswith("InvalidAccessKeyId.NotFound: mmm")
    assert entry.reason.endswith(limits.ELLIPSIS)
