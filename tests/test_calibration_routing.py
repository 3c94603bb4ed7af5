"""Routing rules with rate thresholds: route(), the pipeline applying them, and saving them."""

from __future__ import annotations

import importlib
import threading
import uuid
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.db import IntegrityError, connection, transaction

from moderation import routing
from moderation.audit import log as audit
from moderation.events.models import Event
from moderation.imm import pipeline
from moderation.models import (
    AuditEntry,
    Image,
    ImageCategory,
    ModerationResult,
    ModerationTask,
    RoutingRule,
)

from .conftest import postgres_only

APPROVED, REJECTED, PEOPLE = (
    Image.Status.APPROVED,
    Image.Status.REJECTED,
    Image.Status.AWAITING_REVIEW,
)


def rule(category: str, approve_below: float | None = None, reject_from: float | None = None):
    return RoutingRule.objects.create(
        category=category, approve_below=approve_below, reject_from=reject_from
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("rate", "status", "reason"),
    [
        (0.0, APPROVED, "rate 0 < 40 for porn: auto-approve"),
        (39.99, APPROVED, "rate 39.99 < 40 for porn: auto-approve"),
        (40.0, PEOPLE, "rate 40 for porn is from 40 to below 95: a person decides"),
        (94.99, PEOPLE, "rate 94.99 for porn is from 40 to below 95: a person decides"),
        (95.0, REJECTED, "rate 95 >= 95 for porn: auto-reject"),
        (100.0, REJECTED, "rate 100 >= 95 for porn: auto-reject"),
    ],
)
def test_thresholds_split_a_category_s_rates_at_their_boundaries(rate, status, reason):
    rule("porn", 40, 95)

    routed = pipeline.route("block", ["porn"], rates={"porn": rate})

    assert routed == pipeline.Route(status, reason, ("porn",))


@pytest.mark.django_db
def test_a_reject_threshold_met_wins_over_an_approve_threshold_met():
    rule("porn", 40, 95)
    rule("sexy", 60, 99)

    routed = pipeline.route("block", ["porn", "sexy"], rates={"porn": 97.5, "sexy": 10})

    assert routed.status == REJECTED
    assert routed.reason == "rate 97.5 >= 95 for porn: auto-reject"
    assert routed.rules == ("porn",)


@pytest.mark.django_db
def test_any_category_in_the_people_band_sends_the_image_to_people():
    rule("porn", 40, 95)
    rule("sexy", 60, 99)

    routed = pipeline.route("block", ["porn", "sexy"], rates={"porn": 10, "sexy": 70})

    assert routed.status == PEOPLE
    assert routed.reason == "rate 70 for sexy is from 60 to below 99: a person decides"


@pytest.mark.django_db
def test_a_rule_without_thresholds_still_holds_for_people_beside_an_approving_one():
    rule("porn", 40, 95)
    rule("sexy")

    routed = pipeline.route("block", ["porn", "sexy"], rates={"porn": 10, "sexy": 10})

    assert routed == pipeline.Route(PEOPLE, "IMM said block; routing rule for sexy", ("sexy",))


@pytest.mark.django_db
def test_an_approve_threshold_leaves_imm_s_word_for_a_category_without_a_rule():
    rule("porn", 40, 95)

    routed = pipeline.route("block", ["porn", "bloody"], rates={"porn": 10, "bloody": 88})

    assert routed == pipeline.Route(REJECTED, "IMM said block")


@pytest.mark.django_db
def test_a_category_without_a_rate_goes_to_people_under_a_threshold_rule():
    rule("porn", 40, 95)

    routed = pipeline.route("block", ["porn"], rates={})

    assert routed.status == PEOPLE
    assert routed.reason == "no rate for porn in the result: a person decides"


@pytest.mark.django_db
def test_one_sided_rules_send_the_other_side_to_people():
    rule("porn", reject_from=90)
    rule("sexy", approve_below=30)

    assert pipeline.route("review", ["porn"], rates={"porn": 10}).status == PEOPLE
    assert pipeline.route("review", ["porn"], rates={"porn": 90}).status == REJECTED
    assert pipeline.route("review", ["sexy"], rates={"sexy": 29}).status == APPROVED
    assert pipeline.route("review", ["sexy"], rates={"sexy": 30}).status == PEOPLE


HOLD = "routing rule for sexy"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("suggestion", "categories", "expected"),
    [
        ("block", ["sexy"], pipeline.Route(PEOPLE, f"IMM said block; {HOLD}", ("sexy",))),
        ("pass", ["sexy"], pipeline.Route(PEOPLE, f"IMM said pass; {HOLD}", ("sexy",))),
        ("review", ["sexy"], pipeline.Route(PEOPLE, "IMM said review")),
        ("block", ["porn"], pipeline.Route(REJECTED, "IMM said block")),
        ("pass", [], pipeline.Route(APPROVED, "IMM said pass")),
    ],
)  # fmt: skip
def test_rules_without_thresholds_route_as_before_whatever_the_rates(
    suggestion, categories, expected
):
    rule("sexy")

    assert pipeline.route(suggestion, categories, rates={"sexy": 99.9, "porn": 1}) == expected


def category_rate_frames(rates: dict[str, float]) -> list[dict[str, Any]]:
    return [{"Label": c, "Offset": n, "Rate": r} for n, (c, r) in enumerate(rates.items())]


def test_category_rates_take_each_label_s_highest_frame():
    frames = [
        {"Label": "porn", "Offset": 0, "Rate": 60.0},
        {"Label": "sexy", "Offset": 1, "Rate": 70.0},
        {"Label": "porn", "Offset": 2, "Rate": 91.5},
        {"Label": "porn", "Offset": 3, "Rate": "not a number"},
    ]

    assert pipeline.category_rates(frames) == {"porn": 91.5, "sexy": 70.0}


# --- The pipeline applying thresholds to results as they arrive --------------------------------


def running_image(make_image, status: str = Image.Status.SUBMITTED) -> tuple[Image, ModerationTask]:
    image = make_image(status=status)
    task = ModerationTask.objects.create(
        image=image,
        submission_key=uuid.uuid4().hex,
        task_id=f"task-{uuid.uuid4().hex}",
        state=ModerationTask.State.RUNNING,
    )
    return image, task


def deliver(
    task: ModerationTask,
    suggestion: str,
    rates: dict[str, float],
    *,
    end: str = "2026-11-20T08:00:03.000Z",
    categories: list[str] | None = None,
) -> pipeline.RecordOutcome:
    message = {
        "TaskType": "ImageModeration",
        "TaskId": task.task_id,
        "Status": "Succeeded",
        "StartTime": "2026-11-20T08:00:01.000Z",
        "EndTime": end,
        "ModerationResult": {
            "URI": "oss://bucket/x.png",
            "Suggestion": suggestion,
            "Categories": list(rates) if categories is None else categories,
            "Frames": {"TotalCount": len(rates), "BlockFrames": category_rate_frames(rates)},
        },
    }
    return pipeline.record_result(
        message=pipeline.TaskMessage.parse(message),
        source=ModerationResult.Source.NOTIFICATION,
    )


def test_a_result_over_the_reject_threshold_is_rejected_naming_the_rule(make_image):
    rule("porn", 40, 95)
    image, task = running_image(make_image)

    deliver(task, "review", {"porn": 97})

    image.refresh_from_db()
    assert image.status == REJECTED
    routed = AuditEntry.objects.get(action="imm.routed", image=image)
    assert routed.reason == "rate 97 >= 95 for porn: auto-reject"
    event = Event.objects.get(image=image)
    assert event.type == Event.Type.REJECTED
    assert event.data["decided_by"] == {"kind": "rule", "name": "routing rule for porn"}
    rows = ImageCategory.objects.filter(image=image).values_list("category", "rate", "suggestion")
    assert list(rows) == [("porn", 97.0, "review")]


def test_a_result_under_the_approve_threshold_is_approved(make_image):
    rule("sexy", 50, 90)
    image, task = running_image(make_image)

    deliver(task, "review", {"sexy": 42.5})

    image.refresh_from_db()
    assert image.status == APPROVED
    assert Event.objects.get(image=image).type == Event.Type.APPROVED


def test_imm_s_manual_review_does_not_release_an_image_a_threshold_sent_to_people(make_image):
    rule("sexy", 50, 90)
    image, task = running_image(make_image)
    deliver(task, "review", {"sexy": 70})
    image.refresh_from_db()
    assert image.status == PEOPLE

    # IMM's manual review passes it with no categories: the first verdict's rate still counts.
    outcome = deliver(task, "pass", {}, end="2026-11-20T10:00:00.000Z")

    image.refresh_from_db()
    assert image.status == PEOPLE
    assert outcome.result is not None
    assert "rate 70 for sexy" in outcome.result.outcome


def test_thresholds_never_move_an_image_a_person_decided(make_image, admin_user):
    rule("porn", 40, 95)
    image, task = running_image(make_image, status=Image.Status.APPROVED)
    Image.objects.filter(pk=image.pk).update(human_decided_at=image.uploaded_at)

    outcome = deliver(task, "block", {"porn": 99.9})

    image.refresh_from_db()
    assert image.status == APPROVED
    assert outcome.result is not None
    assert outcome.result.applied is False
    assert "a person has decided this image" in outcome.result.outcome


def test_thresholds_set_later_do_not_touch_images_already_routed(make_image):
    image, task = running_image(make_image)
    deliver(task, "block", {"porn": 60})
    rule("porn", 70, 95)

    image.refresh_from_db()
    assert image.status == REJECTED  # rules apply to results recorded from now on


def test_the_migration_fills_suggestions_and_single_category_rates_of_older_rows(make_image):
    one, two = make_image(), make_image()
    Image.objects.filter(pk=one.pk).update(imm_suggestion="block", imm_rate=91.5)
    Image.objects.filter(pk=two.pk).update(imm_suggestion="review", imm_rate=80.0)
    ImageCategory.objects.create(image=one, category="porn")
    ImageCategory.objects.create(image=two, category="sexy")
    ImageCategory.objects.create(image=two, category="bloody")

    backfill = importlib.import_module("moderation.migrations.0017_category_rates_backfill")
    backfill.backfill(django_apps, None)

    rows = ImageCategory.objects.order_by("image_id", "category")
    assert list(rows.values_list("category", "suggestion", "rate")) == [
        ("porn", "block", 91.5),
        ("bloody", "review", None),  # two categories: the image's rate may be either's
        ("sexy", "review", None),
    ]


# --- Saving thresholds ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("category", "approve", "reject", "message"),
    [
        ("porn", "90", "50", "the approve threshold must not be higher than the reject threshold"),
        ("porn", "150", "", "The auto-approve threshold must be a number from 0 to 100"),
        ("porn", "", "-1", "The auto-reject threshold must be a number from 0 to 100"),
        ("porn", "", "0.95x", "The auto-reject threshold must be a number from 0 to 100"),
        ("porn", "nan", "", "The auto-approve threshold must be a number from 0 to 100"),
        ("porn", "1e400", "", "The auto-approve threshold must be a number from 0 to 100"),
        ("porn", " ", "", "Enter an auto-approve threshold, an auto-reject threshold or both"),
        ("nudity", "10", "90", "“nudity” is not one of IMM's categories"),
        ("", "10", "90", "“” is not one of IMM's categories"),
    ],
)
def test_bad_thresholds_are_refused_with_the_reason(category, approve, reject, message):
    with pytest.raises(ValueError, match=message):
        routing.parse_thresholds(category=category, approve_below=approve, reject_from=reject)


@pytest.mark.django_db
def test_the_database_refuses_an_approve_threshold_above_the_reject_threshold():
    with pytest.raises(IntegrityError), transaction.atomic():
        rule("porn", 96, 95)
    with pytest.raises(IntegrityError), transaction.atomic():
        rule("porn", None, 100.5)


def test_saving_thresholds_is_audited_with_before_and_after(admin_user):
    context = audit.AuditContext(ip_address="10.0.0.7", user_agent="test")
    first = routing.parse_thresholds(category="porn", approve_below="40", reject_from="95")
    routing.set_thresholds(category="porn", thresholds=first, actor=admin_user, context=context)
    second = routing.parse_thresholds(category="porn", approve_below="", reject_from="97.5")
    saved = routing.set_thresholds(
        category="porn", thresholds=second, actor=admin_user, context=context
    )

    assert (saved.approve_below, saved.reject_from) == (None, 97.5)
    assert RoutingRule.objects.get().pk == saved.pk
    made, changed = AuditEntry.objects.filter(action="routing.thresholds_set").order_by("id")
    assert made.actor == admin_user
    assert made.ip_address == "10.0.0.7"
    assert made.detail == {
        "category": "porn",
        "approve_below": 40.0,
        "reject_from": 95.0,
        "before": {"approve_below": None, "reject_from": None},
    }
    assert changed.detail["before"] == {"approve_below": 40.0, "reject_from": 95.0}
    assert changed.reason == "porn: people decide rates from 0 to below 97.5"


@pytest.mark.django_db(transaction=True)
@postgres_only
def test_two_admins_saving_thresholds_for_a_new_category_at_once_make_one_rule(admin_user):
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def save(reject: str) -> None:
        try:
            barrier.wait(timeout=10)
            routing.set_thresholds(
                category="sexy",
                thresholds=routing.parse_thresholds(
                    category="sexy", approve_below="10", reject_from=reject
                ),
                actor=admin_user,
                context=audit.SYSTEM_CONTEXT,
            )
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=save, args=(r,)) for r in ("80", "90")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    saved = RoutingRule.objects.get(category="sexy")
    assert saved.reject_from in (80.0, 90.0)
    assert AuditEntry.objects.filter(action="routing.thresholds_set").count() == 2
