"""The notification inbox: the endpoint only stores, the applier routes each message once."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_tasks import default_task_backend

from moderation.accounts import create_user
from moderation.imm import inbox
from moderation.models import (
    AuditEntry,
    Image,
    ImmStatus,
    ModerationResult,
    ModerationTask,
    NotificationInboxMessage,
)
from reviews import services as reviews

from .conftest import PASSWORD, apply_inbox, postgres_only
from .test_notifications import (
    TOKEN,
    envelope,
    mns,  # noqa: F401 - the fixture
    mns_body,
    mns_headers,
    post,
    post_mns,
    task_message,
)

TABLE = '"moderation_notificationinboxmessage"'


@pytest.fixture(autouse=True)
def _token(settings):
    settings.IMM_NOTIFY_TOKEN = TOKEN
    default_task_backend.clear()


def running_tasks(n: int) -> list[ModerationTask]:
    """n submitted images, each with its task running at IMM: plain rows, fast to make."""
    Image.objects.bulk_create(
        Image(
            file=f"images/{i:02x}/{i:064x}.png",
            sha256=f"{i:064x}",
            format=Image.Format.PNG,
            width=320,
            height=240,
            byte_size=1000 + i,
            original_filename=f"submitted-{i}.png",
            status=Image.Status.SUBMITTED,
        )
        for i in range(1, n + 1)
    )
    ModerationTask.objects.bulk_create(
        ModerationTask(
            image=image,
            submission_key=uuid.uuid4().hex,
            task_id=f"ImageModeration-{image.pk:08d}-{uuid.uuid4()}",
            state=ModerationTask.State.RUNNING,
        )
        for image in Image.objects.order_by("id")
    )
    return list(ModerationTask.objects.select_related("image").order_by("id"))


@pytest.fixture
def task(db) -> ModerationTask:
    return running_tasks(1)[0]


def status_of(task: ModerationTask) -> str:
    return Image.objects.values_list("status", flat=True).get(pk=task.image_id)


def waiting() -> list[tuple[str, int, str]]:
    """The messages not applied: task, failed attempts, last error."""
    return list(
        NotificationInboxMessage.objects.waiting()
        .order_by("id")
        .values_list("task_id", "attempts", "last_error")
    )


@contextmanager
def database_fault(
    when: Callable[[str, Any], bool], error: Callable[[], BaseException]
) -> Iterator[list[str]]:
    """Make every statement for which `when(sql, params)` holds raise `error()` instead of
    running, as a lost connection, a deadlock or a killed process would; yields the SQL hit."""
    hit: list[str] = []

    def wrapper(execute, sql, params, many, context):
        if when(sql, params):
            hit.append(sql)
            raise error()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield hit


def marking_applied(sql: str, params: Any) -> bool:
    return sql.startswith(f"UPDATE {TABLE}") and "applied_at" in sql


def about(task_id: str) -> Callable[[str, Any], bool]:
    return lambda sql, params: task_id in (params or ())


# --- The endpoint ----------------------------------------------------------------------------


def test_the_endpoint_does_one_insert_and_nothing_else(task):
    body = json.dumps(envelope(task_message(task.task_id)))
    with CaptureQueriesContext(connection) as queries:
        response = post(body)
    assert response.status_code == 200
    assert [query["sql"].split()[:3] for query in queries] == [["INSERT", "INTO", TABLE]]
    assert NotificationInboxMessage.objects.get().task_id == task.task_id
    assert default_task_backend.results == []


def test_a_signed_mns_push_is_one_insert_too(task, mns):  # noqa: F811 - the fixture
    body = mns_body(envelope(task_message(task.task_id)))
    with CaptureQueriesContext(connection) as queries:
        response = post_mns(body, mns_headers(body))
    assert response.status_code == 201
    assert [query["sql"].split()[:3] for query in queries] == [["INSERT", "INTO", TABLE]]


def test_a_refused_delivery_touches_the_database_not_at_all(task):
    with CaptureQueriesContext(connection) as queries:
        response = post(envelope(task_message(task.task_id)), token="wrong")
    assert response.status_code == 403
    assert len(queries) == 0


# --- Crashes ---------------------------------------------------------------------------------


def test_a_crash_between_store_and_apply_loses_nothing_and_a_later_applier_applies_it_once(task):
    # The web process answered and the poller was down: the message waits, untouched.
    assert post(envelope(task_message(task.task_id))).status_code == 200
    assert status_of(task) == Image.Status.SUBMITTED
    assert waiting() == [(task.task_id, 0, "")]

    # The poller comes back.
    assert apply_inbox() == ["recorded"]
    assert status_of(task) == Image.Status.REJECTED
    assert apply_inbox() == []
    assert ModerationResult.objects.count() == 1
    assert AuditEntry.objects.filter(action="imm.routed").count() == 1


def test_a_crash_mid_apply_rolls_the_change_back_and_leaves_the_message_waiting(task):
    assert post(envelope(task_message(task.task_id))).status_code == 200

    # The process dies after the image was routed and audited, before the message is marked
    # applied and the transaction commits.
    with (
        database_fault(marking_applied, KeyboardInterrupt) as hit,
        pytest.raises(KeyboardInterrupt),
    ):
        inbox.apply_waiting()
    assert len(hit) == 1

    assert status_of(task) == Image.Status.SUBMITTED
    assert not ModerationResult.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="imm.").exists()
    assert waiting() == [(task.task_id, 0, "")]  # not even counted as a failure

    assert apply_inbox() == ["recorded"]
    assert status_of(task) == Image.Status.REJECTED
    assert ModerationResult.objects.get().applied
    assert AuditEntry.objects.filter(action="imm.routed").count() == 1


# --- Duplicates, reordering, a person's decision ---------------------------------------------


def test_duplicate_and_reordered_deliveries_are_applied_by_record_result_s_rules(task):
    first = task_message(task.task_id, suggestion="review", EndTime="2026-11-25T08:30:03.000Z")
    later = task_message(task.task_id, suggestion="block", EndTime="2026-11-25T09:00:00.000Z")
    for message in (later, later, first, later):  # IMM's later word arrives first, and again
        assert post(envelope(message)).status_code == 200

    assert apply_inbox() == ["recorded", "duplicate", "recorded", "duplicate"]

    assert status_of(task) == Image.Status.REJECTED
    block, review = ModerationResult.objects.order_by("-end_time")
    assert (block.suggestion, block.applied) == ("block", True)
    assert (review.suggestion, review.applied) == ("review", False)
    assert (
        review.outcome
        == f"kept: older than result {block.pk}, which stands (delivered out of order)"
    )
    assert AuditEntry.objects.filter(action="imm.result_received").count() == 2
    routed = AuditEntry.objects.filter(action="imm.routed")
    assert list(routed.values_list("state_before", "state_after")) == [("submitted", "rejected")]


def test_a_person_who_decides_after_the_delivery_but_before_it_is_applied_wins(task):
    first = task_message(task.task_id, suggestion="review", EndTime="2026-11-25T08:30:03.000Z")
    assert post(envelope(first)).status_code == 200
    assert apply_inbox() == ["recorded"]
    assert status_of(task) == Image.Status.AWAITING_REVIEW

    # IMM's manual review says pass; its notification waits in the inbox while a person rejects.
    manual = task_message(task.task_id, suggestion="pass", EndTime="2026-11-25T10:00:00.000Z")
    assert post(envelope(manual)).status_code == 200
    reviewer = create_user(username="rex", role="reviewer", password=PASSWORD, validate=False)
    claim = reviews.claim_next(reviewer=reviewer)
    assert claim is not None
    reviews.decide(image_id=claim.image_id, reviewer=reviewer, verdict="reject", reason="no")

    assert apply_inbox() == ["recorded"]
    assert status_of(task) == Image.Status.REJECTED
    kept = ModerationResult.objects.get(suggestion="pass")
    assert kept.applied is False
    assert kept.outcome.startswith("kept: a person has decided this image")


def test_a_message_without_its_verdict_queues_the_fetch_when_it_is_applied(task):
    assert post(envelope(task_message(task.task_id, suggestion=None))).status_code == 200
    assert default_task_backend.results == []
    assert apply_inbox() == ["needs_verdict"]
    assert [r.args for r in default_task_backend.results] == [[task.task_id]]
    assert apply_inbox() == []  # applied: never fetched twice


# --- Failures --------------------------------------------------------------------------------


def test_a_failing_message_is_kept_with_its_error_and_retried_without_blocking_the_others(db):
    stuck, other = running_tasks(2)
    for t in (stuck, other):
        assert post(envelope(task_message(t.task_id))).status_code == 200

    with database_fault(about(stuck.task_id), lambda: OperationalError("deadlock detected")):
        report = inbox.apply_waiting()
        assert (report.applied, report.failed) == (1, 1)
        # Its retry is not due yet: the next pass leaves it alone.
        assert inbox.apply_waiting().handled == 0

    assert status_of(other) == Image.Status.REJECTED
    assert status_of(stuck) == Image.Status.SUBMITTED
    assert waiting() == [(stuck.task_id, 1, "OperationalError: deadlock detected")]
    row = NotificationInboxMessage.objects.get(task_id=stuck.task_id)
    assert row.next_attempt_at is not None
    assert row.next_attempt_at - timezone.now() <= inbox.RETRY_BASE
    assert inbox.backlog().failing == 1

    # Its time comes (as the clock would move it) and the fault is gone: applied, once.
    NotificationInboxMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    assert apply_inbox() == ["recorded"]
    assert status_of(stuck) == Image.Status.REJECTED
    assert AuditEntry.objects.filter(action="imm.routed").count() == 2
    row.refresh_from_db()
    assert (row.attempts, row.outcome) == (1, "recorded")


def test_retries_back_off_exponentially_up_to_a_cap():
    delays = [inbox.retry_delay(attempts) for attempts in (1, 2, 3, 4, 10, 10_000)]
    assert delays == [
        timedelta(seconds=1),
        timedelta(seconds=2),
        timedelta(seconds=4),
        timedelta(seconds=8),
        inbox.RETRY_CAP,
        inbox.RETRY_CAP,
    ]


# The loop starts each pass as a new request would (close_old_connections), which ends a test's
# enclosing transaction: these run outside one.
@pytest.mark.django_db(transaction=True)
def test_the_applier_loop_survives_a_database_failure_and_goes_on(caplog, monkeypatch):
    stop = threading.Event()
    calls = Counter[str]()

    def failing_once(sql: str, params: Any) -> bool:
        if "FOR UPDATE" in sql or f"FROM {TABLE}" in sql:
            calls["claim"] += 1
            if calls["claim"] == 1:
                return True
            stop.set()  # one pass after the failure is enough
        return False

    monkeypatch.setattr(inbox, "ERROR_WAIT", 0.01)
    with database_fault(failing_once, lambda: OperationalError("server closed the connection")):
        inbox.run(stop=stop, idle=0)
    assert calls["claim"] >= 2
    assert "the inbox applier failed" in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("flags", "applies", "polls"),
    [([], True, True), (["--inbox-only"], True, False), (["--no-inbox"], False, True)],
)
def test_the_poller_command_applies_the_inbox_unless_told_not_to(flags, applies, polls):
    [task] = running_tasks(1)
    assert post(envelope(task_message(task.task_id))).status_code == 200
    out = io.StringIO()
    call_command("imm_poller", "--once", *flags, stdout=out)
    assert (not waiting()) is applies
    assert status_of(task) == (Image.Status.REJECTED if applies else Image.Status.SUBMITTED)
    assert ("inbox: applied 1, failed 0, pruned 0" in out.getvalue()) is applies
    assert ImmStatus.objects.filter(poller_seen_at__isnull=False).exists() is polls


# --- Pruning and the backlog -----------------------------------------------------------------


def test_applied_messages_are_pruned_after_the_retention_in_bounded_batches(task, monkeypatch):
    now = timezone.now()
    old = now - inbox.APPLIED_KEPT_FOR - timedelta(minutes=1)
    NotificationInboxMessage.objects.bulk_create(
        [
            *(
                NotificationInboxMessage(
                    source="notification", task_id="old", message={}, applied_at=old
                )
                for _ in range(5)
            ),
            NotificationInboxMessage(
                source="notification", task_id="recent", message={}, applied_at=now
            ),
            # Waiting, however old, is never pruned.
            NotificationInboxMessage(
                source="notification", task_id="waiting", message={}, received_at=old
            ),
        ]
    )
    monkeypatch.setattr(inbox, "PRUNE_BATCH", 3)
    assert inbox.prune_applied(now=now) == 3
    assert inbox.prune_applied(now=now) == 2
    assert inbox.prune_applied(now=now) == 0
    assert sorted(NotificationInboxMessage.objects.values_list("task_id", flat=True)) == [
        "recent",
        "waiting",
    ]


def test_the_backlog_counts_what_waits_and_how_long_the_oldest_has(task):
    assert inbox.backlog() == inbox.Backlog(waiting=0, failing=0, oldest_seconds=0.0)
    now = timezone.now()
    NotificationInboxMessage.objects.bulk_create(
        [
            NotificationInboxMessage(
                source="notification",
                task_id="a",
                message={},
                received_at=now - timedelta(seconds=s),
            )
            for s in (90, 30)
        ]
        + [
            NotificationInboxMessage(
                source="notification", task_id="b", message={}, received_at=now, applied_at=now
            )
        ]
    )
    assert inbox.backlog(now=now) == inbox.Backlog(waiting=2, failing=0, oldest_seconds=90.0)


def test_arrival_to_routed_times_come_from_the_rows_of_recorded_messages(db):
    now = timezone.now()
    NotificationInboxMessage.objects.bulk_create(
        NotificationInboxMessage(
            source="notification",
            task_id=f"t{n}",
            message={},
            received_at=now - timedelta(seconds=10),
            applied_at=now - timedelta(seconds=10) + timedelta(milliseconds=ms),
            outcome=outcome,
        )
        for n, (ms, outcome) in enumerate(
            [(300, "recorded"), (40, "recorded"), (5, "duplicate"), (120, "recorded")]
        )
    )
    NotificationInboxMessage.objects.create(source="notification", task_id="w", message={})
    assert inbox.arrival_to_routed(since=now - timedelta(minutes=1)) == [0.04, 0.12, 0.3]
    assert inbox.arrival_to_routed(since=now) == []


def test_healthz_shows_the_inbox_and_is_not_ok_when_a_message_waits_over_a_minute(task):
    ImmStatus.objects.create(pk=1, poller_seen_at=timezone.now())
    assert post(envelope(task_message(task.task_id))).status_code == 200
    body = Client().get(reverse("healthz")).json()
    assert (body["status"], body["inbox_waiting"], body["inbox_failing"]) == ("ok", 1, 0)
    assert body["inbox_oldest_seconds"] < 60

    NotificationInboxMessage.objects.update(received_at=timezone.now() - timedelta(seconds=61))
    body = Client().get(reverse("healthz")).json()
    assert body["status"] == "degraded"
    assert body["inbox_oldest_seconds"] >= 61
    assert body["problems"] == ["IMM notifications wait in the inbox: is imm_poller applying them?"]

    apply_inbox()
    body = Client().get(reverse("healthz")).json()
    assert (body["status"], body["inbox_waiting"], body["inbox_oldest_seconds"]) == ("ok", 0, 0)


# --- Several appliers at once, on PostgreSQL -------------------------------------------------

TASKS = 120
DUPLICATED = 80  # tasks whose one verdict is delivered three times
APPLIERS = 4
POSTERS = 2


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_several_appliers_apply_every_message_exactly_once_while_deliveries_arrive(monkeypatch):
    tasks = running_tasks(TASKS)
    deliveries: list[dict[str, Any]] = []
    for t in tasks[:DUPLICATED]:
        deliveries += [task_message(t.task_id, suggestion="block")] * 3
    for t in tasks[DUPLICATED:]:  # a review, then IMM's manual review: delivered in any order
        deliveries.append(
            task_message(t.task_id, suggestion="review", EndTime="2026-11-25T08:30:03.000Z")
        )
        deliveries.append(
            task_message(t.task_id, suggestion="pass", EndTime="2026-11-25T10:00:00.000Z")
        )
    order = sorted(range(len(deliveries)), key=lambda n: uuid.uuid4().hex)
    deliveries = [deliveries[n] for n in order]

    applied = Counter[int]()  # inbox row -> times it was applied (record_result ran to its end)
    count_lock = threading.Lock()
    apply_one = inbox._apply

    def count(row: NotificationInboxMessage) -> str:
        outcome = apply_one(row)
        with count_lock:
            applied[row.pk] += 1
        return outcome

    errors: list[str] = []
    stop = threading.Event()

    def poster(share: list[dict[str, Any]]) -> None:
        try:
            client = Client()
            for message in share:
                response = client.post(
                    "/imm/notifications/",
                    data=json.dumps(envelope(message)),
                    content_type="application/json",
                    headers={"X-IMM-Notify-Token": TOKEN},
                )
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.content!r}")
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    def applier() -> None:
        try:
            inbox.run(stop=stop, idle=0.01)
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    monkeypatch.setattr(inbox, "_apply", count)
    try:
        appliers = [threading.Thread(target=applier) for _ in range(APPLIERS)]
        posters = [
            threading.Thread(target=poster, args=(deliveries[n::POSTERS],)) for n in range(POSTERS)
        ]
        for thread in appliers + posters:
            thread.start()
        for thread in posters:
            thread.join(timeout=120)
        deadline = time.monotonic() + 120
        while NotificationInboxMessage.objects.waiting().exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for thread in appliers:
            thread.join(timeout=60)
    finally:
        monkeypatch.undo()
    assert not any(thread.is_alive() for thread in appliers + posters)
    assert errors == []

    # Every message stored once, applied exactly once, none failed on the way.
    rows = list(NotificationInboxMessage.objects.all())
    assert len(rows) == len(deliveries)
    assert applied == Counter({row.pk: 1 for row in rows})
    assert all(row.applied_at and row.attempts == 0 and not row.last_error for row in rows)
    # Each distinct message recorded once (the rest are duplicates), and each image routed as
    # IMM's newest word says, once per word that moved it.
    recorded = Counter(row.task_id for row in rows if row.outcome == "recorded")
    assert recorded == Counter({t.task_id: 1 if n < DUPLICATED else 2 for n, t in enumerate(tasks)})
    assert Counter(row.outcome for row in rows) == {
        "recorded": DUPLICATED + 2 * (TASKS - DUPLICATED),
        "duplicate": 2 * DUPLICATED,
    }
    assert ModerationResult.objects.count() == DUPLICATED + 2 * (TASKS - DUPLICATED)
    statuses = dict(Image.objects.values_list("id", "status"))
    routed = Counter(AuditEntry.objects.filter(action="imm.routed").values_list("image", flat=True))
    received = Counter(
        AuditEntry.objects.filter(action="imm.result_received").values_list("image", flat=True)
    )
    for n, t in enumerate(tasks):
        if n < DUPLICATED:
            assert statuses[t.image_id] == Image.Status.REJECTED
            assert (routed[t.image_id], received[t.image_id]) == (1, 1)
        else:
            # The pass stands whichever came first; the review moved the image only if it did.
            assert statuses[t.image_id] == Image.Status.APPROVED
            assert routed[t.image_id] in (1, 2)
            assert received[t.image_id] == 2
            assert ModerationResult.objects.get(imm_task_id=t.task_id, suggestion="pass").applied
