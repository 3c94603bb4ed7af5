"""The IMM pipeline against a fake IMM at the transport: submission, results, routing, polling."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import time_machine
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks import default_task_backend

from moderation.audit import log as audit
from moderation.imm import pipeline
from moderation.imm.client import ImmClient, ImmConfig, ImmError
from moderation.models import (
    AuditEntry,
    Image,
    ImmStatus,
    ModerationResult,
    ModerationTask,
    RoutingRule,
)

from .audit_log import assert_log_verifies

SECRET = "the-secret-value"
CREATE = "CreateImageModerationTask"
LIST = "ListTasks"
RESULT = "GetImageModerationResult"
T0 = datetime(2025, 5, 20, 8, 0, tzinfo=UTC)

# A fault stands in for IMM's answer to one request. `act` does what IMM would have done and
# returns its answer, so a fault can fail before IMM acts or after (the answer lost on the way).
Act = Callable[[], httpx.Response]
Fault = Callable[[httpx.Request, Act], httpx.Response]


def connect_error(request: httpx.Request, act: Act) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def read_timeout(request: httpx.Request, act: Act) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def acts_then_times_out(request: httpx.Request, act: Act) -> httpx.Response:
    act()
    raise httpx.ReadTimeout("timed out", request=request)


def error_response(
    status: int, code: str, message: str = "", retry_after_ms: int | None = None
) -> httpx.Response:
    headers = {"x-acs-retry-after": str(retry_after_ms)} if retry_after_ms else {}
    body = {
        "RequestId": f"req-{code}",
        "HostId": "imm.cn-hangzhou.aliyuncs.com",
        "Code": code,
        "Message": message,
        "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}",
    }
    return httpx.Response(status, json=body, headers=headers)


def imm_error(
    status: int,
    code: str,
    message: str = "",
    *,
    retry_after_ms: int | None = None,
    acts: bool = False,
) -> Fault:
    """IMM answers with an error; with `acts`, after doing the work anyway (a 5xx may)."""

    def fault(request: httpx.Request, act: Act) -> httpx.Response:
        if acts:
            act()
        return error_response(status, code, message, retry_after_ms)

    return fault


def throttled(retry_after_ms: int | None = None) -> Fault:
    return imm_error(
        400,
        "Throttling.User",
        "Request was denied due to user flow control.",
        retry_after_ms=retry_after_ms,
    )


class FakeImm:
    """IMM as the pipeline sees it: the four operations, tasks kept with their Tags, faults on cue.

    `faults[action]` are used one per request, then `down[action]` (if set) for every request.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, httpx.QueryParams]] = []
        self.requests: list[httpx.Request] = []
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        self.down: dict[str, Fault] = {}
        self.task_ids: deque[str] = deque()
        self.count = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        action = request.headers["x-acs-action"]
        params = httpx.QueryParams(request.url.query.decode())
        self.requests.append(request)
        self.calls.append((action, params))
        fault = self.faults[action].popleft() if self.faults[action] else self.down.get(action)

        def act() -> httpx.Response:
            return self.answer(action, params)

        return fault(request, act) if fault else act()

    def sent(self, action: str) -> list[httpx.QueryParams]:
        return [params for name, params in self.calls if name == action]

    def answer(self, action: str, params: httpx.QueryParams) -> httpx.Response:
        self.count += 1
        if action == CREATE:
            task_id = (
                self.task_ids.popleft() if self.task_ids else f"ImageModeration-{uuid.uuid4()}"
            )
            self.tasks[task_id] = {
                "TaskId": task_id,
                "TaskType": "ImageModeration",
                "Status": "Running",
                "Code": "",
                "Message": "",
                "StartTime": "2025-05-20T08:00:00.000Z",
                "EndTime": "",
                "Tags": json.loads(params.get("Tags", "{}")),
                "UserData": params.get("UserData", ""),
                "SourceURI": params["SourceURI"],
                "EventId": f"evt-{self.count}",
            }
            return httpx.Response(
                200,
                json={
                    "RequestId": f"req-{self.count}",
                    "TaskId": task_id,
                    "EventId": f"evt-{self.count}",
                },
            )
        if action == LIST:
            key, _, value = params.get("TagSelector", "").partition("=")
            found = [t for t in self.tasks.values() if t["Tags"].get(key) == value]
            return httpx.Response(
                200,
                json={
                    "RequestId": f"req-{self.count}",
                    "ProjectName": params["ProjectName"],
                    "NextToken": "",
                    "MaxResults": "100",
                    "Tasks": [
                        {k: v for k, v in t.items() if k != "ModerationResult"} for t in found
                    ],
                },
            )
        if action == RESULT:
            task = self.tasks.get(params["TaskId"])
            if task is None:
                return error_response(
                    400, "ResourceNotFound", "The specified resource TaskId is not found."
                )
            body = {k: v for k, v in task.items() if k not in ("Tags", "SourceURI")}
            return httpx.Response(
                200, json={"RequestId": f"req-{self.count}", "ProjectName": "p", **body}
            )
        return error_response(400, "InvalidAction.NotFound", f"no action {action}")

    def finish(
        self,
        task_id: str,
        suggestion: str,
        categories: tuple[str, ...] = (),
        *,
        end: str = "2025-05-20T08:00:03.000Z",
    ) -> None:
        task = self.tasks[task_id]
        task["Status"] = "Succeeded"
        task["EndTime"] = end
        task["ModerationResult"] = {
            "URI": task["SourceURI"],
            "Suggestion": suggestion,
            "Categories": list(categories),
            "Frames": {"TotalCount": 1, "BlockFrames": []},
        }


def client_for(fake: FakeImm, sleeps: list[float] | None = None) -> ImmClient:
    config = ImmConfig(
        endpoint="http://imm.test",
        region="cn-hangzhou",
        project="p",
        access_key_id="AK",
        access_key_secret=SECRET,
    )
    sleep = sleeps.append if sleeps is not None else (lambda seconds: None)
    return ImmClient(config, transport=httpx.MockTransport(fake), sleep=sleep)


@pytest.fixture(autouse=True)
def _imm_settings(settings):
    settings.IMM_OSS_BUCKET = "review-bucket"
    settings.IMM_SCENES = ["porn", "terrorism"]
    settings.IMM_POLL_AFTER = 60
    settings.IMM_NOTIFICATION = "none"


@pytest.fixture(autouse=True)
def queued() -> Iterator[Callable[[], list[tuple[str, list[Any], datetime | None]]]]:
    """What was enqueued (task name, args, run_after), with the recorded tasks cleared first."""
    default_task_backend.clear()

    def read() -> list[tuple[str, list[Any], datetime | None]]:
        return [(r.task.name, list(r.args), r.task.run_after) for r in default_task_backend.results]

    yield read
    default_task_backend.clear()


@pytest.fixture
def fake() -> FakeImm:
    return FakeImm()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def imm(fake, sleeps) -> Iterator[ImmClient]:
    with client_for(fake, sleeps) as client:
        yield client


def entries(action: str, image: Image | None = None) -> list[AuditEntry]:
    found = AuditEntry.objects.filter(action=action).order_by("id")
    if image is not None:
        found = found.filter(image=image)
    return list(found)


def assert_chain_intact() -> None:
    assert_log_verifies()


def submitted(make_image, imm) -> tuple[Image, ModerationTask]:
    image = make_image()
    assert pipeline.submit(image_id=image.pk, client=imm).what == "submitted"
    image.refresh_from_db()
    return image, image.moderation_tasks.get()


def deliver(
    task_id: str,
    suggestion: str = "pass",
    *,
    categories: tuple[str, ...] = (),
    status: str = "Succeeded",
    end: str = "2025-05-20T08:00:03.000Z",
    tags: dict[str, str] | None = None,
    top_level: bool = False,
    code: str = "",
    text: str = "",
    uri: str = "oss://review-bucket/images/x.png",
    user_data: str = "",
    source: str = ModerationResult.Source.NOTIFICATION,
) -> pipeline.RecordOutcome:
    data: dict[str, Any] = {
        "ProjectName": "p",
        "TaskType": "ImageModeration",
        "TaskId": task_id,
        "Status": status,
        "Code": code,
        "Message": text,
        "StartTime": "2025-05-20T08:00:01.000Z",
        "EndTime": end,
        "UserData": user_data,
    }
    if tags is not None:
        data["Tags"] = tags
    if suggestion:
        verdict = {
            "URI": uri,
            "Suggestion": suggestion,
            "Categories": list(categories),
            "Frames": {"TotalCount": 1, "BlockFrames": []},
        }
        if top_level:
            data.update(verdict)
        else:
            data["ModerationResult"] = verdict
    return pipeline.record_result(message=pipeline.TaskMessage.parse(data), source=source)


def open_savepoints_at(queries: list[dict[str, str]], marker: str) -> list[tuple[str, ...]]:
    """For each query containing `marker`, the savepoints open when it ran (outermost first)."""
    stack: list[str] = []
    found = []
    for query in queries:
        sql = query["sql"]
        if sql.startswith("SAVEPOINT "):
            stack.append(sql.split()[1])
        elif sql.startswith("RELEASE SAVEPOINT "):
            stack = stack[: stack.index(sql.split()[2])]
        elif marker in sql:
            found.append(tuple(stack))
    return found


# --- Submission ------------------------------------------------------------------------------


def test_a_received_image_is_submitted_with_its_key_in_tags_and_user_data(make_image, fake, imm):
    image = make_image()

    outcome = pipeline.submit(image_id=image.pk, client=imm)

    image.refresh_from_db()
    task = image.moderation_tasks.get()
    assert image.status == Image.Status.SUBMITTED
    assert outcome == pipeline.SubmitOutcome("submitted", task.task_id)
    assert task.state == ModerationTask.State.RUNNING
    assert task.task_id in fake.tasks
    assert (task.request_id, task.event_id) == ("req-1", "evt-1")
    assert task.attempts == 1
    assert task.next_poll_at == task.submitted_at + timedelta(seconds=60)
    [create] = fake.sent(CREATE)
    assert create["ProjectName"] == "p"
    assert create["SourceURI"] == f"oss://review-bucket/{image.file.name}"
    assert create["SourceURI"].startswith("oss://review-bucket/images/")
    assert json.loads(create["Scenes"]) == ["porn", "terrorism"]
    assert json.loads(create["Tags"]) == {"image": str(image.pk), "submission": task.submission_key}
    assert json.loads(create["UserData"]) == {
        "image_id": image.pk,
        "submission": task.submission_key,
    }
    [entry] = entries("imm.submitted")
    assert entry.image == image
    assert entry.actor is None
    assert entry.actor_label == AuditEntry.SYSTEM
    assert (entry.state_before, entry.state_after) == ("received", "submitted")
    assert entry.detail["task_id"] == task.task_id
    assert entry.detail["request_id"] == "req-1"
    assert entry.detail["adopted"] is False


def test_the_submitted_audit_entry_is_written_in_the_transaction_that_changes_the_status(
    make_image, imm
):
    image = make_image()

    with CaptureQueriesContext(connection) as captured:
        pipeline.submit(image_id=image.pk, client=imm)

    [status_change] = open_savepoints_at(captured.captured_queries, 'UPDATE "moderation_image"')
    [audit_insert] = open_savepoints_at(captured.captured_queries, 'INSERT INTO "moderation_audit')
    assert status_change, "the status change ran in no atomic block"
    assert status_change[-1] in audit_insert


def test_submitting_twice_sends_one_create(make_image, fake, imm):
    image = make_image()

    first = pipeline.submit(image_id=image.pk, client=imm)
    second = pipeline.submit(image_id=image.pk, client=imm)

    assert first.what == "submitted"
    assert second == pipeline.SubmitOutcome("skipped", "nothing to submit")
    assert len(fake.sent(CREATE)) == 1
    assert image.moderation_tasks.count() == 1
    assert len(entries("imm.submitted")) == 1


def test_a_second_worker_leaves_an_attempt_in_flight_alone(make_image, fake, imm):
    image = make_image()
    meanwhile = []

    def second_worker(request: httpx.Request, act: Act) -> httpx.Response:
        with client_for(fake) as other:
            meanwhile.append(pipeline.submit(image_id=image.pk, client=other))
        return act()

    fake.faults[CREATE].append(second_worker)

    assert pipeline.submit(image_id=image.pk, client=imm).what == "submitted"
    assert meanwhile == [pipeline.SubmitOutcome("skipped", "another attempt holds this image")]
    assert len(fake.sent(CREATE)) == 1


def test_imm_unreachable_leaves_the_image_waiting_with_a_retry_queued(
    make_image, fake, imm, queued, django_capture_on_commit_callbacks
):
    image = make_image()
    fake.down[CREATE] = connect_error

    with time_machine.travel(T0, tick=False), django_capture_on_commit_callbacks(execute=True):
        outcome = pipeline.submit(image_id=image.pk, client=imm)

    assert outcome == pipeline.SubmitOutcome("retrying", "Transport")
    assert len(fake.sent(CREATE)) == 4  # the client's own attempts: nothing was ever sent
    image.refresh_from_db()
    task = image.moderation_tasks.get()
    assert image.status == Image.Status.RECEIVED
    assert task.state == ModerationTask.State.SENDING
    assert task.ambiguous is False
    assert task.last_error_code == "Transport"
    assert T0 < task.next_attempt_at <= T0 + timedelta(seconds=30)
    [(name, args, run_after)] = queued()
    assert (name, args) == ("submit_image", [image.pk])
    assert run_after == task.next_attempt_at
    assert entries("imm.submitted") == []


def test_the_retry_goes_out_once_imm_answers_again(make_image, fake, imm):
    image = make_image()
    fake.down[CREATE] = connect_error
    with time_machine.travel(T0, tick=False) as traveller:
        pipeline.submit(image_id=image.pk, client=imm)
        task = image.moderation_tasks.get()
        del fake.down[CREATE]

        early = pipeline.submit(image_id=image.pk, client=imm)
        traveller.move_to(task.next_attempt_at)
        later = pipeline.submit(image_id=image.pk, client=imm)

    assert early == pipeline.SubmitOutcome("skipped", "another attempt holds this image")
    assert later.what == "submitted"
    assert fake.sent(LIST) == []  # a refused connection is not ambiguous: no lookup needed
    image.refresh_from_db()
    task.refresh_from_db()
    assert image.status == Image.Status.SUBMITTED
    assert task.state == ModerationTask.State.RUNNING
    assert task.attempts == 2
    assert task.next_attempt_at is None
    assert task.last_error_code == ""
    [entry] = entries("imm.submitted", image)
    assert entry.detail["attempts"] == 2


@pytest.mark.parametrize("attempts", [1, 2, 5, 10, 100, 5000])
def test_the_submit_backoff_is_capped_at_30_seconds_even_after_many_failures(attempts):
    delays = [pipeline.submit_backoff(attempts) for _ in range(50)]

    assert all(0 < delay <= 30 for delay in delays)
    if attempts >= 10:
        assert min(delays) >= 15  # half the cap at least, after the jitter


def test_many_failed_attempts_still_schedule_a_retry_within_30_seconds(make_image, fake, imm):
    image = make_image()
    fake.down[CREATE] = connect_error
    with time_machine.travel(T0, tick=False):
        pipeline.submit(image_id=image.pk, client=imm)
        ModerationTask.objects.filter(image=image).update(attempts=2000, next_attempt_at=None)

        outcome = pipeline.submit(image_id=image.pk, client=imm)

    task = image.moderation_tasks.get()
    assert outcome.what == "retrying"
    assert task.attempts == 2001
    assert T0 + timedelta(seconds=15) <= task.next_attempt_at <= T0 + timedelta(seconds=30)


AMBIGUOUS = {
    "timeout": acts_then_times_out,
    "5xx": imm_error(503, "ServiceUnavailable", "The service is unavailable.", acts=True),
}
NEVER_MADE = {
    "timeout": read_timeout,
    "5xx": imm_error(500, "InternalError", "The request processing has failed."),
}


@pytest.mark.parametrize("failure", list(AMBIGUOUS))
def test_an_ambiguous_create_that_imm_made_is_found_and_adopted(failure, make_image, fake, imm):
    image = make_image()
    fake.faults[CREATE].append(AMBIGUOUS[failure])

    first = pipeline.submit(image_id=image.pk, client=imm)
    task = image.moderation_tasks.get()
    assert first.what == "retrying"
    assert task.ambiguous is True
    assert len(fake.sent(CREATE)) == 1  # the client does not repeat a create that may have landed
    [made] = fake.tasks
    ModerationTask.objects.filter(pk=task.pk).update(next_attempt_at=None)

    second = pipeline.submit(image_id=image.pk, client=imm)

    assert second == pipeline.SubmitOutcome("adopted", made)
    [lookup] = fake.sent(LIST)
    assert lookup["TagSelector"] == f"submission={task.submission_key}"
    assert json.loads(lookup["TaskTypes"]) == ["ImageModeration"]
    assert len(fake.sent(CREATE)) == 1
    assert [name for name, _ in fake.calls] == [CREATE, LIST]
    task.refresh_from_db()
    image.refresh_from_db()
    assert task.task_id == made
    assert task.state == ModerationTask.State.RUNNING
    assert image.status == Image.Status.SUBMITTED
    [entry] = entries("imm.submitted", image)
    assert entry.detail["adopted"] is True
    assert entry.detail["task_id"] == made


@pytest.mark.parametrize("imm_acted", [True, False])
def test_an_attempt_whose_answer_was_never_saved_is_looked_up_before_sending_again(
    imm_acted, make_image, fake, imm
):
    image = make_image()

    def worker_dies(request: httpx.Request, act: Act) -> httpx.Response:
        if imm_acted:
            act()
        raise RuntimeError("worker killed before the answer was saved")

    fake.faults[CREATE].append(worker_dies)
    with time_machine.travel(T0, tick=False) as traveller:
        with pytest.raises(RuntimeError):
            pipeline.submit(image_id=image.pk, client=imm)
        assert image.moderation_tasks.get().ambiguous is True
        traveller.shift(pipeline.SEND_LEASE)

        outcome = pipeline.submit(image_id=image.pk, client=imm)

    [made] = fake.tasks
    if imm_acted:
        assert outcome == pipeline.SubmitOutcome("adopted", made)
        assert [name for name, _ in fake.calls] == [CREATE, LIST]
    else:
        assert outcome == pipeline.SubmitOutcome("submitted", made)
        assert [name for name, _ in fake.calls] == [CREATE, LIST, CREATE]
    task = image.moderation_tasks.get()
    assert task.task_id == made
    assert task.ambiguous is False
    assert task.attempts == 2


@pytest.mark.parametrize("failure", list(NEVER_MADE))
def test_an_ambiguous_create_that_imm_never_made_is_sent_again(failure, make_image, fake, imm):
    image = make_image()
    fake.faults[CREATE].append(NEVER_MADE[failure])
    assert pipeline.submit(image_id=image.pk, client=imm).what == "retrying"
    ModerationTask.objects.filter(image=image).update(next_attempt_at=None)

    outcome = pipeline.submit(image_id=image.pk, client=imm)

    assert outcome.what == "submitted"
    assert [name for name, _ in fake.calls] == [CREATE, LIST, CREATE]
    key = image.moderation_tasks.get().submission_key
    assert [json.loads(p["Tags"])["submission"] for p in fake.sent(CREATE)] == [key, key]
    assert len(fake.tasks) == 1
    [entry] = entries("imm.submitted", image)
    assert entry.detail["adopted"] is False


def test_throttling_is_retried_by_the_client_honouring_the_hint(make_image, fake, imm, sleeps):
    image = make_image()
    fake.faults[CREATE].extend([throttled(retry_after_ms=1500), throttled(retry_after_ms=1500)])

    outcome = pipeline.submit(image_id=image.pk, client=imm)

    assert outcome.what == "submitted"
    assert len(fake.sent(CREATE)) == 3
    assert sleeps == [1.5, 1.5]
    assert len(fake.tasks) == 1


@pytest.mark.parametrize(("hint_ms", "at_least"), [(None, 0.0), (8000, 8.0), (45_000, 30.0)])
def test_persistent_throttling_reschedules_no_sooner_than_the_hint_and_within_30_seconds(
    hint_ms, at_least, make_image, fake, imm, queued, django_capture_on_commit_callbacks
):
    image = make_image()
    fake.down[CREATE] = throttled(retry_after_ms=hint_ms)

    with time_machine.travel(T0, tick=False), django_capture_on_commit_callbacks(execute=True):
        outcome = pipeline.submit(image_id=image.pk, client=imm)

    assert outcome == pipeline.SubmitOutcome("retrying", "Throttling.User")
    assert len(fake.sent(CREATE)) == 4
    task = image.moderation_tasks.get()
    assert task.ambiguous is False
    delay = (task.next_attempt_at - T0).total_seconds()
    assert at_least <= delay <= 30
    [(_, _, run_after)] = queued()
    assert run_after == task.next_attempt_at


ACCESS_ERRORS = [
    pytest.param(400, "SignatureDoesNotMatch", id="signature"),
    pytest.param(404, "InvalidAccessKeyId.NotFound", id="access-key"),
]


def refuse_access(fake: FakeImm, status: int, code: str) -> None:
    # A server that echoes the secret back must not get it stored or logged either.
    fake.down[CREATE] = imm_error(status, code, f"Specified access key is not valid ({SECRET}).")


@pytest.mark.parametrize(("status", "code"), ACCESS_ERRORS)
def test_bad_credentials_pause_submissions_with_one_audit_entry(
    status, code, make_image, fake, imm, queued, django_capture_on_commit_callbacks
):
    first, second, third = make_image(), make_image(), make_image()
    refuse_access(fake, status, code)
    meanwhile = []

    def second_worker(request: httpx.Request, act: Act) -> httpx.Response:
        # Another worker's create fails while this one's is in flight: both see the error.
        with client_for(fake) as other:
            meanwhile.append(pipeline.submit(image_id=second.pk, client=other))
        return fake.down[CREATE](request, act)

    fake.faults[CREATE].append(second_worker)

    with django_capture_on_commit_callbacks(execute=True):
        outcome = pipeline.submit(image_id=first.pk, client=imm)
        later = pipeline.submit(image_id=third.pk, client=imm)

    assert outcome == meanwhile[0] == pipeline.SubmitOutcome("paused", code)
    assert later == pipeline.SubmitOutcome("paused")
    assert len(fake.sent(CREATE)) == 2  # no retries, and nothing at all once paused
    status_row = ImmStatus.current()
    assert status_row.paused is True
    assert status_row.reason_code == code
    assert "Specified access key is not valid" in status_row.reason_message
    [entry] = entries("imm.paused")
    assert entry.actor is None
    assert entry.reason.startswith(f"{code}: ")
    assert entry.detail == {"code": code, "request_id": f"req-{code}", "http": status}
    for image in (first, second, third):
        image.refresh_from_db()
        assert image.status == Image.Status.RECEIVED
    assert queued() == []
    assert entries("imm.submit_failed") == []
    assert pipeline.resend_stuck(now=timezone.now() + timedelta(days=1)) == 0


@pytest.mark.parametrize(("status", "code"), ACCESS_ERRORS)
def test_the_access_key_secret_is_never_stored_or_logged(
    status, code, make_image, fake, imm, caplog
):
    caplog.set_level(logging.DEBUG)
    refuse_access(fake, status, code)

    def refused_naming_the_secret(request: httpx.Request, act: Act) -> httpx.Response:
        raise httpx.ConnectError(f"refused, key {SECRET}", request=request)

    fake.faults[CREATE].append(refused_naming_the_secret)

    pipeline.submit(image_id=make_image().pk, client=imm)

    assert ImmStatus.current().paused
    assert fake.sent(CREATE)
    for model in apps.get_models():
        for row in model.objects.values():
            assert SECRET not in repr(row), f"{model.__name__} row holds the secret"
    assert caplog.records
    for record in caplog.records:
        assert SECRET not in record.getMessage()
    assert SECRET not in caplog.text
    for request in fake.requests:
        assert SECRET not in str(request.url)
        assert all(SECRET not in value for value in request.headers.values())


def test_admins_see_the_pause_and_resuming_queues_the_waiting_images(
    admin_user, admin_client, make_image, fake, imm, queued, django_capture_on_commit_callbacks
):
    first, second = make_image(), make_image()
    approved = make_image(status=Image.Status.APPROVED)
    refuse_access(fake, 400, "SignatureDoesNotMatch")
    pipeline.submit(image_id=first.pk, client=imm)
    pipeline.submit(image_id=second.pk, client=imm)

    page = admin_client.get("/images/")
    assert page.status_code == 200
    assert "IMM submissions are paused" in page.content.decode()
    assert "SignatureDoesNotMatch" in page.content.decode()
    assert SECRET not in page.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/imm/resume/", {"next": "/images/"})

    assert response.status_code == 302
    assert response["Location"] == "/images/"
    assert ImmStatus.current().paused is False
    [entry] = entries("imm.resumed")
    assert entry.actor == admin_user
    assert entry.reason.startswith("SignatureDoesNotMatch: ")
    assert entry.detail == {"queued": 2}
    assert sorted(args for name, args, _ in queued() if name == "submit_image") == [
        [first.pk],
        [second.pk],
    ]
    assert [approved.pk] not in [args for _, args, _ in queued()]
    assert "IMM submissions are paused" not in admin_client.get("/images/").content.decode()

    del fake.down[CREATE]
    assert pipeline.submit(image_id=first.pk, client=imm).what == "submitted"
    assert pipeline.submit(image_id=second.pk, client=imm).what == "submitted"
    assert first.moderation_tasks.get().attempts == 2  # the task that was paused goes out
    assert_chain_intact()


def test_resuming_keeps_a_retry_that_was_already_scheduled(
    make_image, fake, imm, queued, django_capture_on_commit_callbacks
):
    waiting, scheduled = make_image(), make_image()
    refuse_access(fake, 400, "SignatureDoesNotMatch")
    pipeline.submit(image_id=waiting.pk, client=imm)
    # Another image's retry was scheduled for a minute from now when the pause came.
    later = timezone.now() + timedelta(minutes=1)
    ModerationTask.objects.create(
        image=scheduled, submission_key="s" * 32, next_attempt_at=later, attempts=1
    )
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.resume_submissions(actor=None)
    runs = {args[0]: run_after for name, args, run_after in queued() if name == "submit_image"}
    assert runs[waiting.pk] is None
    assert runs[scheduled.pk] is not None
    assert runs[scheduled.pk] >= later


def test_an_invalid_argument_fails_the_image_and_audits_the_code(make_image, fake, imm):
    image = make_image()
    fake.faults[CREATE].append(
        imm_error(400, "InvalidArgument", "The parameter SourceURI is not valid.")
    )

    outcome = pipeline.submit(image_id=image.pk, client=imm)

    assert outcome == pipeline.SubmitOutcome("failed", "InvalidArgument")
    assert len(fake.sent(CREATE)) == 1
    image.refresh_from_db()
    task = image.moderation_tasks.get()
    assert image.status == Image.Status.FAILED
    assert task.state == ModerationTask.State.FAILED
    assert task.finished_at is not None
    assert task.last_error_code == "InvalidArgument"
    [entry] = entries("imm.submit_failed", image)
    assert (entry.state_before, entry.state_after) == ("received", "failed")
    assert entry.reason == "InvalidArgument: The parameter SourceURI is not valid."
    assert entry.detail == {
        "code": "InvalidArgument",
        "request_id": "req-InvalidArgument",
        "http": 400,
    }
    assert ImmStatus.current().paused is False


def test_a_project_misconfiguration_pauses_instead_of_failing_the_image(make_image, fake, imm):
    image = make_image()
    fake.down[CREATE] = imm_error(
        400, "InvalidArgument", "The parameter ProjectName is required but not provided."
    )

    outcome = pipeline.submit(image_id=image.pk, client=imm)

    assert outcome == pipeline.SubmitOutcome("paused", "InvalidArgument")
    assert ImmStatus.current().paused is True
    image.refresh_from_db()
    assert image.status == Image.Status.RECEIVED
    assert image.moderation_tasks.get().state == ModerationTask.State.SENDING
    assert entries("imm.submit_failed") == []
    assert len(entries("imm.paused")) == 1


def test_an_admin_retry_puts_a_failed_image_back_in_the_queue(
    admin_user, admin_client, make_image, fake, imm, queued, django_capture_on_commit_callbacks
):
    image = make_image()
    fake.faults[CREATE].append(imm_error(400, "InvalidArgument", "bad"))
    pipeline.submit(image_id=image.pk, client=imm)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/images/{image.pk}/retry", follow=True)

    assert response.redirect_chain == [(f"/images/{image.pk}/", 302)]
    assert f"Image {image.pk} is queued for IMM again." in response.content.decode()
    image.refresh_from_db()
    assert image.status == Image.Status.RECEIVED
    [entry] = entries("image.retry_requested", image)
    assert entry.actor == admin_user
    assert (entry.state_before, entry.state_after) == ("failed", "received")
    assert queued() == [("submit_image", [image.pk], None)]

    assert pipeline.submit(image_id=image.pk, client=imm).what == "submitted"
    image.refresh_from_db()
    assert image.status == Image.Status.SUBMITTED
    assert image.moderation_tasks.count() == 2
    assert len(entries("imm.resubmitted", image)) == 1


def test_retrying_an_image_that_has_not_failed_is_refused(
    admin_client, make_image, queued, django_capture_on_commit_callbacks
):
    image = make_image(status=Image.Status.APPROVED)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/images/{image.pk}/retry", follow=True)

    assert "only failed or expired images can be retried" in response.content.decode()
    image.refresh_from_db()
    assert image.status == Image.Status.APPROVED
    assert entries("image.retry_requested") == []
    assert queued() == []


# --- Results ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suggestion", "status"),
    [
        ("pass", Image.Status.APPROVED),
        ("block", Image.Status.REJECTED),
        ("review", Image.Status.AWAITING_REVIEW),
    ],
)
def test_each_suggestion_routes_the_image(suggestion, status, make_image, imm):
    image, task = submitted(make_image, imm)

    outcome = deliver(
        task.task_id, suggestion, categories=("porn",) if suggestion == "block" else ()
    )

    assert outcome.what == "recorded"
    image.refresh_from_db()
    task.refresh_from_db()
    assert image.status == status
    assert task.state == ModerationTask.State.SUCCEEDED
    [result] = ModerationResult.objects.all()
    assert (result.task, result.image, result.applied) == (task, image, True)
    assert result.suggestion == suggestion
    assert result.source == "notification"
    assert result.outcome == f"routed: IMM said {suggestion}"
    [received] = entries("imm.result_received", image)
    assert received.detail["suggestion"] == suggestion
    [routed] = entries("imm.routed", image)
    assert (routed.state_before, routed.state_after) == ("submitted", status)
    assert routed.reason == f"IMM said {suggestion}"
    assert routed.actor is None


def test_a_routing_rule_sends_a_blocked_category_to_review(make_image, imm):
    RoutingRule.objects.create(category="sexy")
    image, task = submitted(make_image, imm)

    deliver(task.task_id, "block", categories=("sexy",))

    image.refresh_from_db()
    assert image.status == Image.Status.AWAITING_REVIEW
    [routed] = entries("imm.routed", image)
    assert routed.reason == "IMM said block; routing rule for sexy"
    assert routed.detail["categories"] == ["sexy"]


def test_a_routing_rule_for_another_category_changes_nothing(make_image, imm):
    RoutingRule.objects.create(category="sexy")
    image, task = submitted(make_image, imm)

    deliver(task.task_id, "block", categories=("porn",))

    image.refresh_from_db()
    assert image.status == Image.Status.REJECTED


def test_the_same_message_twice_changes_nothing(make_image, imm):
    _image, task = submitted(make_image, imm)
    deliver(task.task_id, "pass")
    audit_count = AuditEntry.objects.count()

    again = deliver(task.task_id, "pass", source=ModerationResult.Source.POLL)

    assert again == pipeline.RecordOutcome("duplicate")
    assert ModerationResult.objects.count() == 1
    assert AuditEntry.objects.count() == audit_count


def test_a_verdict_at_the_top_level_is_read_too(make_image, imm):
    image, task = submitted(make_image, imm)

    outcome = deliver(task.task_id, "block", categories=("porn",), top_level=True)

    assert outcome.what == "recorded"
    image.refresh_from_db()
    assert image.status == Image.Status.REJECTED
    assert outcome.result.categories == ["porn"]
    # The same verdict wrapped in ModerationResult is the same message.
    assert deliver(task.task_id, "block", categories=("porn",)).what == "duplicate"


def test_a_succeeded_message_without_its_verdict_is_not_stored(make_image, imm):
    image, task = submitted(make_image, imm)
    audit_count = AuditEntry.objects.count()

    outcome = deliver(task.task_id, suggestion="")

    assert outcome == pipeline.RecordOutcome("needs_verdict")
    assert not ModerationResult.objects.exists()
    assert AuditEntry.objects.count() == audit_count
    image.refresh_from_db()
    assert image.status == Image.Status.SUBMITTED


def test_a_failed_task_fails_the_image(make_image, imm):
    image, task = submitted(make_image, imm)

    outcome = deliver(
        task.task_id, suggestion="", status="Failed", code="InvalidArgument", text="cannot read"
    )

    assert outcome.what == "recorded"
    image.refresh_from_db()
    task.refresh_from_db()
    assert image.status == Image.Status.FAILED
    assert task.state == ModerationTask.State.FAILED
    assert task.last_error_code == "InvalidArgument"
    assert outcome.result.outcome == "task failed"
    [failed] = entries("imm.failed", image)
    assert (failed.state_before, failed.state_after) == ("submitted", "failed")
    assert failed.reason == "IMM could not check the image: InvalidArgument: cannot read"
    assert entries("imm.routed", image) == []


def test_an_older_verdict_delivered_late_is_stored_but_not_applied(make_image, imm):
    image, task = submitted(make_image, imm)
    newer = deliver(task.task_id, "pass", end="2025-05-20T09:00:00.000Z")

    older = deliver(task.task_id, "review", end="2025-05-20T08:00:03.000Z")

    assert older.what == "recorded"
    assert older.result.applied is False
    assert older.result.outcome == (
        f"kept: older than result {newer.result.pk}, which stands (delivered out of order)"
    )
    image.refresh_from_db()
    assert image.status == Image.Status.APPROVED
    assert ModerationResult.objects.count() == 2
    assert len(entries("imm.routed", image)) == 1
    assert entries("imm.result_received", image)[-1].reason == older.result.outcome
    assert_chain_intact()


def test_a_word_without_an_end_time_never_overrides_one_with_it(make_image, imm):
    image, task = submitted(make_image, imm)
    standing = deliver(task.task_id, "block", categories=("porn",), end="2035-01-01T00:00:00.000Z")

    undated = deliver(task.task_id, "pass", end="")

    assert undated.what == "recorded"
    assert undated.result.applied is False
    assert undated.result.outcome == (
        f"kept: it has no EndTime, so it cannot be newer than result {standing.result.pk}, "
        "which stands"
    )
    image.refresh_from_db()
    assert image.status == Image.Status.REJECTED
    assert entries("imm.result_received", image)[-1].reason == undated.result.outcome


def test_between_words_without_an_end_time_the_later_arrival_stands(make_image, imm):
    image, task = submitted(make_image, imm)
    deliver(task.task_id, "review", categories=("sexy",), end="")

    later = deliver(task.task_id, "pass", end="")

    assert later.result.applied is True
    image.refresh_from_db()
    assert image.status == Image.Status.APPROVED


def test_imm_s_manual_review_after_review_reroutes_the_image(make_image, imm):
    image, task = submitted(make_image, imm)
    deliver(task.task_id, "review", categories=("sexy",), end="2025-05-20T08:00:03.000Z")
    image.refresh_from_db()
    assert image.status == Image.Status.AWAITING_REVIEW

    outcome = deliver(task.task_id, "pass", end="2025-05-20T10:00:00.000Z")

    assert outcome.what == "recorded"
    assert outcome.result.applied is True
    image.refresh_from_db()
    assert image.status == Image.Status.APPROVED
    second_route = entries("imm.routed", image)[-1]
    assert (second_route.state_before, second_route.state_after) == ("awaiting_review", "approved")


def test_imm_never_overrides_a_person_s_decision(make_image, imm):
    image, task = submitted(make_image, imm)
    deliver(task.task_id, "review", end="2025-05-20T08:00:03.000Z")
    # A reviewer rejects it (the reviews app sets human_decided_at with the status).
    Image.objects.filter(pk=image.pk).update(
        status=Image.Status.REJECTED, human_decided_at=T0 + timedelta(hours=1)
    )

    outcome = deliver(task.task_id, "pass", end="2025-05-20T10:00:00.000Z")

    assert outcome.what == "recorded"
    assert outcome.result.applied is False
    assert outcome.result.outcome.startswith("kept: a person has decided this image")
    image.refresh_from_db()
    assert image.status == Image.Status.REJECTED
    assert len(entries("imm.routed", image)) == 1
    assert ModerationResult.objects.count() == 2


def test_a_result_for_an_unknown_task_is_kept_and_claimed_when_the_task_appears(
    make_image, fake, imm
):
    task_id = "ImageModeration-00000000-1111-2222-3333-444444444444"

    outcome = deliver(task_id, "block", categories=("porn",))

    assert outcome.what == "unmatched"
    [kept] = ModerationResult.objects.all()
    assert (kept.task, kept.image, kept.applied) == (None, None, False)
    assert kept.outcome.startswith("kept: no task with this TaskId yet")
    assert not AuditEntry.objects.filter(action__startswith="imm.").exists()

    fake.task_ids.append(task_id)
    image, task = submitted(make_image, imm)

    kept.refresh_from_db()
    assert (kept.task, kept.image, kept.applied) == (task, image, True)
    assert image.status == Image.Status.REJECTED
    assert task.state == ModerationTask.State.SUCCEEDED
    assert [e.action for e in AuditEntry.objects.filter(image=image).order_by("id")] == [
        "image.uploaded",
        "imm.submitted",
        "imm.result_received",
        "imm.routed",
    ]


@pytest.mark.parametrize("carrier", ["Tags", "UserData"])
def test_a_notification_that_beats_the_create_response_adopts_the_task(
    carrier, make_image, fake, imm
):
    image = make_image()
    early = []

    def notify_first(request: httpx.Request, act: Act) -> httpx.Response:
        response = act()
        task_id = response.json()["TaskId"]
        made = fake.tasks[task_id]
        # IMM's message carries our key; the task has no TaskId on our side yet.
        if carrier == "Tags":
            early.append(deliver(task_id, "pass", tags=made["Tags"]))
        else:
            early.append(deliver(task_id, "pass", user_data=made["UserData"]))
        return response

    fake.faults[CREATE].append(notify_first)

    outcome = pipeline.submit(image_id=image.pk, client=imm)

    assert outcome.what == "submitted"
    assert early[0].what == "recorded"
    image.refresh_from_db()
    task = image.moderation_tasks.get()
    assert image.status == Image.Status.APPROVED
    assert task.task_id == outcome.detail
    assert task.state == ModerationTask.State.SUCCEEDED
    assert task.submitted_at is not None
    [result] = ModerationResult.objects.all()
    assert (result.task, result.image, result.applied) == (task, image, True)
    assert len(entries("imm.routed", image)) == 1
    assert len(entries("imm.result_received", image)) == 1
    # The submission is still on the record, after the result it raced, with IMM's answer.
    [submitted_entry] = entries("imm.submitted", image)
    assert submitted_entry.detail["notified_first"] is True
    assert submitted_entry.detail["task_id"] == task.task_id
    assert task.request_id
    assert_chain_intact()


def test_a_late_poll_of_a_notified_result_is_a_duplicate(make_image, fake, imm):
    image, task = submitted(make_image, imm)
    fake.finish(task.task_id, "pass")
    deliver(task.task_id, "pass", uri=image.source_uri)
    ModerationTask.objects.filter(pk=task.pk).update(
        state=ModerationTask.State.RUNNING, next_poll_at=T0
    )

    report = pipeline.poll_once(client=imm, now=T0)

    assert report.asked == 1
    assert report.recorded == 0
    assert ModerationResult.objects.count() == 1


# --- Polling ---------------------------------------------------------------------------------


def test_the_poller_does_not_ask_about_a_task_that_is_not_due(make_image, fake, imm):
    with time_machine.travel(T0, tick=False):
        _, task = submitted(make_image, imm)

    report = pipeline.poll_once(client=imm, now=T0 + timedelta(seconds=59))

    assert report.asked == 0
    assert fake.sent(RESULT) == []
    task.refresh_from_db()
    assert task.poll_count == 0


def test_a_task_still_running_is_asked_again_later_and_later_up_to_30_minutes(
    make_image, fake, imm
):
    with time_machine.travel(T0, tick=False):
        _, task = submitted(make_image, imm)
    gaps = []

    for _ in range(7):
        now = task.next_poll_at
        report = pipeline.poll_once(client=imm, now=now)
        assert report.asked == 1
        task.refresh_from_db()
        gaps.append(int((task.next_poll_at - now).total_seconds()))

    assert gaps == [120, 240, 480, 960, 1800, 1800, 1800]
    assert task.poll_count == 7
    assert task.state == ModerationTask.State.RUNNING
    assert len(fake.sent(RESULT)) == 7
    assert fake.sent(RESULT)[0]["TaskId"] == task.task_id


def test_a_task_polled_for_a_day_is_still_asked_every_30_minutes(make_image, fake, imm):
    with time_machine.travel(T0, tick=False):
        _, task = submitted(make_image, imm)
    now = T0 + timedelta(days=1)
    ModerationTask.objects.filter(pk=task.pk).update(poll_count=48, next_poll_at=now)

    report = pipeline.poll_once(client=imm, now=now)

    assert report.asked == 1
    task.refresh_from_db()
    assert task.next_poll_at == now + timedelta(minutes=30)
    assert task.poll_count == 49


def test_a_finished_task_found_by_polling_is_recorded_and_routed(make_image, fake, imm):
    with time_machine.travel(T0, tick=False):
        image, task = submitted(make_image, imm)
    fake.finish(task.task_id, "block", ("porn",))

    report = pipeline.poll_once(client=imm, now=T0 + timedelta(minutes=1))

    assert (report.asked, report.recorded) == (1, 1)
    image.refresh_from_db()
    task.refresh_from_db()
    assert image.status == Image.Status.REJECTED
    assert task.state == ModerationTask.State.SUCCEEDED
    assert task.next_poll_at is None
    [result] = ModerationResult.objects.all()
    assert result.source == "poll"
    assert result.applied is True
    [routed] = entries("imm.routed", image)
    assert routed.detail["source"] == "poll"

    pipeline.poll_once(client=imm, now=T0 + timedelta(hours=1))
    assert len(fake.sent(RESULT)) == 1  # a finished task is not polled again


def test_a_task_imm_no_longer_knows_is_expired(make_image, fake, imm):
    with time_machine.travel(T0, tick=False):
        image, task = submitted(make_image, imm)
    del fake.tasks[task.task_id]

    report = pipeline.poll_once(client=imm, now=T0 + timedelta(minutes=1))

    assert (report.asked, report.expired) == (1, 1)
    image.refresh_from_db()
    task.refresh_from_db()
    assert image.status == Image.Status.EXPIRED
    assert task.state == ModerationTask.State.EXPIRED
    [entry] = entries("imm.expired", image)
    assert (entry.state_before, entry.state_after) == ("submitted", "expired")
    assert entry.reason.startswith(f"IMM no longer knows task {task.task_id}")


def test_a_task_past_imm_s_7_day_retention_is_expired_without_asking(make_image, fake, imm):
    with time_machine.travel(T0, tick=False) as traveller:
        image, _task = submitted(make_image, imm)
        traveller.shift(timedelta(days=7, minutes=1))

        report = pipeline.poll_once(client=imm, now=T0 + timedelta(days=7, minutes=1))

    assert (report.asked, report.expired) == (0, 1)
    assert fake.sent(RESULT) == []
    image.refresh_from_db()
    assert image.status == Image.Status.EXPIRED
    [entry] = entries("imm.expired", image)
    assert "7 days" in entry.reason


def test_a_failed_poll_is_counted_and_tried_again_later(make_image, fake, imm):
    with time_machine.travel(T0, tick=False):
        _image, task = submitted(make_image, imm)
    fake.down[RESULT] = imm_error(503, "ServiceUnavailable", "busy")

    report = pipeline.poll_once(client=imm, now=T0 + timedelta(minutes=1))

    assert (report.asked, report.failed) == (1, 1)
    task.refresh_from_db()
    assert task.state == ModerationTask.State.RUNNING
    assert task.next_poll_at > T0 + timedelta(minutes=1)


def test_two_pollers_ask_imm_once_per_task(make_image, fake, imm):
    with time_machine.travel(T0, tick=False):
        _, first = submitted(make_image, imm)
        _, second = submitted(make_image, imm)
    now = T0 + timedelta(minutes=5)
    reports = []

    def other_poller(request: httpx.Request, act: Act) -> httpx.Response:
        # A second poller runs while the first waits on IMM for its first task.
        with client_for(fake) as other:
            reports.append(pipeline.poll_once(client=other, now=now))
        return act()

    fake.faults[RESULT].append(other_poller)

    report = pipeline.poll_once(client=imm, now=now)
    again = pipeline.poll_once(client=imm, now=now)

    assert report.asked + reports[0].asked == 2
    assert again.asked == 0
    asked = [params["TaskId"] for params in fake.sent(RESULT)]
    assert sorted(asked) == sorted([first.task_id, second.task_id])


def test_resend_stuck_queues_an_image_left_waiting_and_not_a_fresh_one(
    make_image, fake, imm, queued, django_capture_on_commit_callbacks
):
    def crash(request: httpx.Request, act: Act) -> httpx.Response:
        raise RuntimeError("worker killed mid-request")

    with time_machine.travel(T0, tick=False) as traveller:
        forgotten = make_image()  # its submit task was lost
        crashed = make_image()
        fake.faults[CREATE].append(crash)
        with pytest.raises(RuntimeError):
            pipeline.submit(image_id=crashed.pk, client=imm)
        in_flight = make_image()
        fake.down[CREATE] = connect_error
        traveller.shift(timedelta(minutes=3))
        pipeline.submit(image_id=in_flight.pk, client=imm)  # retry queued, lease held
        fresh = make_image()
        sent = make_image()
        del fake.down[CREATE]
        pipeline.submit(image_id=sent.pk, client=imm)
        queued_before = len(queued())

        with django_capture_on_commit_callbacks(execute=True):
            early = pipeline.resend_stuck(now=T0 + timedelta(minutes=3))
        traveller.shift(timedelta(minutes=2))
        with django_capture_on_commit_callbacks(execute=True):
            late = pipeline.resend_stuck(now=T0 + timedelta(minutes=5))

    assert queued_before == 0
    assert early == 1
    assert late == 2
    resent = [args[0] for name, args, _ in queued() if name == "submit_image"]
    assert resent[0] == forgotten.pk
    assert sorted(resent[1:]) == sorted([forgotten.pk, crashed.pk])
    assert fresh.pk not in resent
    assert in_flight.pk not in resent
    assert sent.pk not in resent


def test_resend_stuck_sends_nothing_while_paused(
    make_image, queued, django_capture_on_commit_callbacks
):
    with time_machine.travel(T0, tick=False):
        make_image()
    pipeline.pause_submissions(ImmError("SignatureDoesNotMatch", "bad signature", http_status=400))

    with django_capture_on_commit_callbacks(execute=True):
        count = pipeline.resend_stuck(now=T0 + timedelta(hours=1))

    assert count == 0
    assert queued() == []


def test_a_poller_round_also_resends_lost_submissions(
    make_image, fake, imm, queued, django_capture_on_commit_callbacks
):
    with time_machine.travel(T0, tick=False):
        waiting = make_image()

    with django_capture_on_commit_callbacks(execute=True):
        report = pipeline.poll_once(client=imm, now=T0 + timedelta(minutes=10))

    assert report.resent == 1
    assert queued() == [("submit_image", [waiting.pk], None)]


# --- The background tasks, against a fake IMM on a loopback port -------------------------------


class _Relay(BaseHTTPRequestHandler):
    fake: FakeImm

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = httpx.Request(
            "POST",
            f"http://{self.headers['host']}{self.path}",
            headers=dict(self.headers.items()),
            content=self.rfile.read(length),
        )
        response = self.fake(request)
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(response.content)))
        self.end_headers()
        self.wfile.write(response.content)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def imm_server(fake, settings) -> Iterator[FakeImm]:
    """The fake served over HTTP on 127.0.0.1, with IMM_ENDPOINT pointing at it."""
    relay = type("Relay", (_Relay,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), relay)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    settings.IMM_ENDPOINT = f"http://127.0.0.1:{server.server_address[1]}"
    settings.IMM_PROJECT = "p"
    settings.IMM_ACCESS_KEY_ID = "AK"
    settings.IMM_ACCESS_KEY_SECRET = SECRET
    settings.IMM_SECURITY_TOKEN = None
    settings.IMM_TIMEOUT = 5.0
    settings.IMM_MAX_ATTEMPTS = 1
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_submit_image_task_sends_the_image_to_imm(make_image, imm_server):
    image = make_image()

    assert pipeline.submit_image.call(image.pk) == "submitted"
    assert pipeline.submit_image.call(image.pk) == "skipped"

    image.refresh_from_db()
    assert image.status == Image.Status.SUBMITTED
    [create] = imm_server.sent(CREATE)
    assert create["ProjectName"] == "p"
    assert create["SourceURI"] == image.source_uri
    assert image.moderation_tasks.get().task_id in imm_server.tasks


def test_the_fetch_result_task_records_the_verdict_a_notification_lacked(make_image, imm_server):
    image = make_image()
    pipeline.submit_image.call(image.pk)
    task = image.moderation_tasks.get()
    assert deliver(task.task_id, suggestion="").what == "needs_verdict"

    assert pipeline.fetch_result.call(task.task_id) == "running"
    imm_server.finish(task.task_id, "review", ("sexy",))
    assert pipeline.fetch_result.call(task.task_id) == "recorded"
    assert pipeline.fetch_result.call(task.task_id) == "duplicate"

    image.refresh_from_db()
    assert image.status == Image.Status.AWAITING_REVIEW
    [result] = ModerationResult.objects.all()
    assert (result.source, result.suggestion, result.categories) == ("poll", "review", ["sexy"])
    assert len(entries("imm.routed", image)) == 1


def test_the_fetch_result_task_gives_up_quietly_when_imm_fails(db, imm_server, caplog):
    with caplog.at_level(logging.WARNING, logger="moderation.imm.pipeline"):
        outcome = pipeline.fetch_result.call("ImageModeration-unknown")

    assert outcome == "failed"
    assert "ResourceNotFound" in caplog.text
    assert not ModerationResult.objects.exists()


def test_each_poller_round_leaves_a_heartbeat_for_healthz(db, imm):
    assert ImmStatus.objects.filter(poller_seen_at__isnull=False).count() == 0
    pipeline.poll_once(client=imm)
    assert ImmStatus.current().poller_seen_at is not None


def test_a_worker_process_reuses_one_client_per_imm_configuration(settings):
    first = pipeline.make_client()
    assert pipeline.make_client() is first
    settings.IMM_ENDPOINT = "http://127.0.0.1:9"
    other = pipeline.make_client()
    assert other is not first
    assert other.config.endpoint == "http://127.0.0.1:9"


def test_a_routing_rule_holds_the_image_when_imm_s_manual_review_passes_it(make_image, imm):
    RoutingRule.objects.create(category="sexy")
    image, task = submitted(make_image, imm)
    deliver(task.task_id, "review", categories=("sexy",), end="2025-05-20T08:00:03.000Z")
    image.refresh_from_db()
    assert image.status == Image.Status.AWAITING_REVIEW
    in_queue_since = image.status_changed_at

    outcome = deliver(task.task_id, "pass", end="2025-05-20T10:00:00.000Z")

    assert outcome.result.applied is True
    assert outcome.result.outcome == (
        "routed: IMM said pass; routing rule for sexy; it was already awaiting review"
    )
    image.refresh_from_db()
    assert image.status == Image.Status.AWAITING_REVIEW
    assert image.status_changed_at == in_queue_since  # keeps its place in the queue
    assert image.imm_suggestion == "pass"  # IMM's latest word is what the pane shows
    assert len(entries("imm.routed", image)) == 1
    assert len(entries("imm.result_received", image)) == 2
    assert_chain_intact()


def test_manual_review_s_block_on_a_ruled_category_leaves_the_image_in_place(make_image, imm):
    RoutingRule.objects.create(category="sexy")
    image, task = submitted(make_image, imm)
    deliver(task.task_id, "review", categories=("sexy",), end="2025-05-20T08:00:03.000Z")
    image.refresh_from_db()
    in_queue_since = image.status_changed_at

    deliver(task.task_id, "block", categories=("sexy",), end="2025-05-20T10:00:00.000Z")

    image.refresh_from_db()
    assert (image.status, image.status_changed_at) == (
        Image.Status.AWAITING_REVIEW,
        in_queue_since,
    )
    assert len(entries("imm.routed", image)) == 1


def test_the_poller_deletes_kept_results_no_task_can_claim_any_more(make_image, imm, caplog):
    stale, fresh = (
        deliver(f"ImageModeration-{n}-for-another-application", "block", categories=("porn",))
        for n in (1, 2)
    )
    _, task = submitted(make_image, imm)
    matched = deliver(task.task_id, "pass")
    now = timezone.now()
    # Received 15 days ago (auto_now_add): past IMM's retention and the week kept after it.
    ModerationResult.objects.filter(pk__in=[stale.result.pk, matched.result.pk]).update(
        received_at=now - timedelta(days=15)
    )
    caplog.set_level(logging.INFO, logger="moderation.pipeline")

    report = pipeline.poll_once(client=imm, now=now)

    assert report.pruned == 1
    assert set(ModerationResult.objects.values_list("pk", flat=True)) == {
        fresh.result.pk,
        matched.result.pk,  # a result of ours is never pruned, however old
    }
    assert "deleted 1 IMM result(s) that matched no task of ours" in caplog.text
    assert pipeline.prune_unmatched_results(now=now) == 0


def test_a_kept_result_is_pruned_only_after_two_weeks(make_image, imm):
    assert timedelta(days=14) == pipeline.UNMATCHED_KEPT_FOR  # what the README says
    kept = deliver("ImageModeration-for-another-application", "pass").result
    received = ModerationResult.objects.get(pk=kept.pk).received_at

    assert pipeline.prune_unmatched_results(now=received + pipeline.UNMATCHED_KEPT_FOR) == 0
    assert (
        pipeline.prune_unmatched_results(
            now=received + pipeline.UNMATCHED_KEPT_FOR + timedelta(seconds=1)
        )
        == 1
    )


# --- Who may move an image: every state x every later IMM message ----------------------------

LATER = "2025-05-20T10:00:00.000Z"  # after every message that built the state
WAITING = Image.Status.AWAITING_REVIEW


def _person(make_image, imm, reviewer_user, verdict: str, *, undo: bool = False) -> Image:
    from reviews import services as reviews
    from reviews.models import Decision

    image, task = submitted(make_image, imm)
    deliver(task.task_id, "review", categories=("sexy",))
    claim = reviews.claim_next(reviewer=reviewer_user)
    assert claim is not None
    assert claim.image_id == image.pk
    reason = {Decision.Verdict.APPROVE: ""}.get(verdict, "a person looked at it")
    outcome = reviews.decide(
        image_id=image.pk, reviewer=reviewer_user, verdict=verdict, reason=reason
    )
    if undo:
        reviews.undo(decision_id=outcome.decision.pk, reviewer=reviewer_user)
    return image


def _state(name: str, make_image, imm, reviewer_user, admin_user) -> tuple[Image, dict[str, Any]]:
    """An image brought to the named state the way it gets there, and how IMM then names its task.

    The keyword arguments are for `deliver`: the TaskId (and the submission tag, when IMM's word
    arrives before the create response gave us the TaskId).
    """
    from reviews import services as reviews
    from reviews.models import Decision

    if name == "received, submission in flight":
        image = make_image()
        task = ModerationTask.objects.create(
            image=image, submission_key=uuid.uuid4().hex, attempts=1, ambiguous=True
        )
        return image, {
            "task_id": f"ImageModeration-{uuid.uuid4()}",
            "tags": {"submission": task.submission_key},
        }
    image, task = submitted(make_image, imm)
    if name == "received after an admin's retry":
        deliver(task.task_id, suggestion="", status="Failed", code="InvalidArgument")
        image.refresh_from_db()
        assert pipeline.retry_image(image=image, actor=admin_user, context=audit.SYSTEM_CONTEXT)
    elif name == "submitted":
        pass
    elif name == "awaiting review":
        deliver(task.task_id, "review", categories=("sexy",))
    elif name == "awaiting review, held by a reviewer":
        deliver(task.task_id, "review", categories=("sexy",))
        assert reviews.claim_next(reviewer=reviewer_user) is not None
    elif name == "approved by IMM":
        deliver(task.task_id, "pass")
    elif name == "rejected by IMM":
        deliver(task.task_id, "block", categories=("porn",))
    elif name == "failed (IMM said Failed)":
        deliver(task.task_id, suggestion="", status="Failed", code="InvalidArgument")
    elif name == "expired":
        pipeline.expire(task, reason="IMM no longer knows it")
    elif name == "approved by a person":
        image = _person(make_image, imm, reviewer_user, Decision.Verdict.APPROVE)
    elif name == "rejected by a person":
        image = _person(make_image, imm, reviewer_user, Decision.Verdict.REJECT)
    elif name == "escalated by a reviewer":
        image = _person(make_image, imm, reviewer_user, Decision.Verdict.ESCALATE)
    elif name == "awaiting review after a person's undo":
        image = _person(make_image, imm, reviewer_user, Decision.Verdict.APPROVE, undo=True)
    else:
        raise AssertionError(name)
    image.refresh_from_db()
    return image, {"task_id": image.moderation_tasks.get().task_id}


A_VERDICT = "it has a verdict, which IMM's later failure does not take away"
A_PERSON = "a person has decided this image; IMM's later word does not override it"
ESCALATED_KEPT = "a reviewer escalated this image; only an admin decides it"
RETRIED = "an admin asked for a new check; the new submission decides"
# state: (state it is in, then where IMM's later pass / review / block / Failed leaves it; a
# string is the reason the word is kept instead, and the image stays where it was).
IMM_MOVES: dict[str, tuple[str, tuple[str, str, str, str]]] = {
    "received, submission in flight": (
        Image.Status.RECEIVED,
        (Image.Status.APPROVED, WAITING, Image.Status.REJECTED, Image.Status.FAILED),
    ),
    "received after an admin's retry": (Image.Status.RECEIVED, (RETRIED,) * 4),
    "submitted": (
        Image.Status.SUBMITTED,
        (Image.Status.APPROVED, WAITING, Image.Status.REJECTED, Image.Status.FAILED),
    ),
    "awaiting review": (
        WAITING,
        (Image.Status.APPROVED, WAITING, Image.Status.REJECTED, A_VERDICT),
    ),
    "awaiting review, held by a reviewer": (
        WAITING,
        (Image.Status.APPROVED, WAITING, Image.Status.REJECTED, A_VERDICT),
    ),
    "approved by IMM": (
        Image.Status.APPROVED,
        (Image.Status.APPROVED, WAITING, Image.Status.REJECTED, A_VERDICT),
    ),
    "rejected by IMM": (
        Image.Status.REJECTED,
        (Image.Status.APPROVED, WAITING, Image.Status.REJECTED, A_VERDICT),
    ),
    "approved by a person": (Image.Status.APPROVED, (A_PERSON,) * 4),
    "rejected by a person": (Image.Status.REJECTED, (A_PERSON,) * 4),
    "failed (IMM said Failed)": (
        Image.Status.FAILED,
        (Image.Status.APPROVED, WAITING, Image.Status.REJECTED, "it has failed already"),
    ),
    "expired": (
        Image.Status.EXPIRED,
        (Image.Status.APPROVED, WAITING, Image.Status.REJECTED, Image.Status.FAILED),
    ),
    "escalated by a reviewer": (Image.Status.ESCALATED, (ESCALATED_KEPT,) * 4),
    "awaiting review after a person's undo": (
        WAITING,
        (Image.Status.APPROVED, WAITING, Image.Status.REJECTED, A_VERDICT),
    ),
}
LATER_WORDS = {
    "pass": {"suggestion": "pass"},
    "review": {"suggestion": "review", "categories": ("sexy",)},
    "block": {"suggestion": "block", "categories": ("porn",)},
    "Failed": {"suggestion": "", "status": "Failed", "code": "InternalError", "text": "later"},
}


def test_the_table_covers_every_image_state():
    assert set(pipeline.IMM_MAY_MOVE) == set(Image.Status.values)
    assert {state for state, _ in IMM_MOVES.values()} == set(Image.Status.values)


@pytest.mark.parametrize("word", list(LATER_WORDS))
@pytest.mark.parametrize("state", list(IMM_MOVES))
def test_imm_s_later_word_moves_an_image_only_out_of_the_states_the_table_allows(
    state, word, make_image, imm, reviewer_user, admin_user
):
    image, naming = _state(state, make_image, imm, reviewer_user, admin_user)
    before, outcomes = IMM_MOVES[state]
    expected = outcomes[list(LATER_WORDS).index(word)]
    assert image.status == before
    human_decided_at = image.human_decided_at
    last = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first()

    outcome = deliver(end=LATER, **naming, **LATER_WORDS[word])

    assert outcome.what == "recorded"
    result = outcome.result
    image.refresh_from_db()
    assert image.human_decided_at == human_decided_at
    written = list(AuditEntry.objects.filter(id__gt=last).order_by("id"))
    [received] = [e for e in written if e.action == "imm.result_received"]
    assert received.image == image
    assert (received.state_before, received.state_after) == (before, before)
    assert received.detail["result_id"] == result.pk
    moves = [e for e in written if e.action in ("imm.routed", "imm.failed")]
    if expected in Image.Status.values:
        assert result.applied is True
        assert image.status == expected
        assert received.reason == ""
        if word == "Failed":
            assert result.outcome == "task failed"
        else:
            assert result.outcome.startswith(f"routed: IMM said {word}")
        if expected == before:  # already where this word sends it: no move
            assert moves == []
        else:
            [move] = moves
            assert (move.state_before, move.state_after) == (before, expected)
    else:
        assert image.status == before
        assert result.applied is False
        assert result.outcome == f"kept: {expected}"
        assert received.reason == result.outcome
        assert moves == []
    assert_chain_intact()


def test_an_escalated_image_keeps_imm_s_manual_review_for_the_admin_to_see(
    make_image, imm, reviewer_user, admin_client
):
    from reviews.models import Decision

    image = _person(make_image, imm, reviewer_user, Decision.Verdict.ESCALATE)
    task = image.moderation_tasks.get()

    outcome = deliver(task.task_id, "pass", end=LATER)

    image.refresh_from_db()
    assert image.status == Image.Status.ESCALATED
    assert outcome.result.applied is False
    assert outcome.result.outcome == f"kept: {ESCALATED_KEPT}"
    html = admin_client.get(f"/reviews/{image.pk}/").content.decode()
    assert (
        f'IMM result received <span class="muted">by system</span> — kept: {ESCALATED_KEPT}' in html
    )
    detail = admin_client.get(image.get_absolute_url()).content.decode()
    assert "kept: a reviewer escalated this image" in detail


def test_an_expiry_does_not_move_an_image_the_table_keeps(make_image, imm, admin_user):
    # A task IMM forgot while the image was escalated (a resubmitted task cannot be: only a
    # received image is submitted); the table is consulted there as well.
    image, task = submitted(make_image, imm)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.ESCALATED)

    pipeline.expire(task, reason="IMM no longer knows it")

    image.refresh_from_db()
    task.refresh_from_db()
    assert image.status == Image.Status.ESCALATED
    assert task.state == ModerationTask.State.EXPIRED
    [entry] = entries("imm.expired", image)
    assert (entry.state_before, entry.state_after) == ("escalated", "escalated")
    assert entry.reason == f"IMM no longer knows it ({ESCALATED_KEPT})"


# --- One lock order: the image, then the task ------------------------------------------------


@pytest.fixture
def row_locks(monkeypatch) -> Iterator[Callable[[], list[list[str]]]]:
    """The tables each SELECT ... FOR UPDATE locked, in order, one list per transaction.

    SQLite has no row locks and Django leaves FOR UPDATE out there: the test makes Django write
    it (so the order is recorded on both databases) and takes it off before SQLite runs it.
    """
    if not connection.features.has_select_for_update:
        monkeypatch.setattr(connection.features, "has_select_for_update", True)
        monkeypatch.setattr(connection.features, "has_select_for_update_skip_locked", True)

        def without_for_update(execute, sql, params, many, context):
            return execute(re.sub(r" FOR UPDATE( SKIP LOCKED)?$", "", sql), params, many, context)

        wrapper = connection.execute_wrapper(without_for_update)
    else:
        wrapper = contextlib.nullcontext()
    with wrapper, CaptureQueriesContext(connection) as captured:

        def read() -> list[list[str]]:
            groups: dict[str, list[str]] = {}
            stack: list[str] = []
            for query in captured.captured_queries:
                sql = query["sql"]
                if sql.startswith("SAVEPOINT "):
                    stack.append(sql.split()[1])
                    if len(stack) == 1:
                        groups[stack[0]] = []
                elif sql.startswith(("RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")):
                    stack = stack[: stack.index(sql.split()[-1])]
                elif "FOR UPDATE" in sql:
                    table = re.search(r'FROM "(\w+)"', sql)
                    assert table is not None, sql
                    assert stack, f"a row lock outside any transaction block: {sql}"
                    groups[stack[0]].append(table.group(1))
            return [locked for locked in groups.values() if locked]

        yield read


IMAGE_TABLE = Image._meta.db_table
TASK_TABLE = ModerationTask._meta.db_table


def assert_image_before_task(transactions: list[list[str]]) -> None:
    for locked in transactions:
        both = [t for t in locked if t in (IMAGE_TABLE, TASK_TABLE)]
        if TASK_TABLE in both:
            assert both[0] == IMAGE_TABLE, f"the task was locked before its image: {locked}"


def _path_submit(make_image, fake, imm) -> Callable[[], object]:
    image = make_image()
    return lambda: pipeline.submit(image_id=image.pk, client=imm)


def _path_adopt_after_a_lost_answer(make_image, fake, imm) -> Callable[[], object]:
    image = make_image()
    fake.faults[CREATE].append(acts_then_times_out)
    assert pipeline.submit(image_id=image.pk, client=imm).what == "retrying"
    ModerationTask.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    return lambda: pipeline.submit(image_id=image.pk, client=imm)


def _path_refused_submission(make_image, fake, imm) -> Callable[[], object]:
    image = make_image()
    fake.faults[CREATE].append(imm_error(400, "InvalidArgument", "bad"))
    return lambda: pipeline.submit(image_id=image.pk, client=imm)


def _path_throttled_submission(make_image, fake, imm) -> Callable[[], object]:
    image = make_image()
    fake.down[CREATE] = throttled()
    return lambda: pipeline.submit(image_id=image.pk, client=imm)


def _path_result(make_image, fake, imm) -> Callable[[], object]:
    _image, task = submitted(make_image, imm)
    return lambda: deliver(task.task_id, "review", categories=("sexy",))


def _path_result_before_the_create_response(make_image, fake, imm) -> Callable[[], object]:
    image = make_image()
    task = ModerationTask.objects.create(image=image, submission_key="s" * 32, attempts=1)
    return lambda: deliver(
        "ImageModeration-early", "pass", tags={"submission": task.submission_key}
    )


def _path_kept_result_claimed(make_image, fake, imm) -> Callable[[], object]:
    _image, task = submitted(make_image, imm)
    deliver("ImageModeration-kept", "block", categories=("porn",))
    ModerationTask.objects.filter(pk=task.pk).update(task_id="ImageModeration-kept")
    return pipeline.claim_unmatched_results


def _path_expiry(make_image, fake, imm) -> Callable[[], object]:
    _image, task = submitted(make_image, imm)
    return lambda: pipeline.expire(task, reason="IMM no longer knows it")


def _path_poll_round(make_image, fake, imm) -> Callable[[], object]:
    _done, finished = submitted(make_image, imm)
    fake.finish(finished.task_id, "pass")
    _gone, forgotten = submitted(make_image, imm)
    del fake.tasks[forgotten.task_id]
    later = timezone.now() + timedelta(hours=1)
    return lambda: pipeline.poll_once(client=imm, now=later)


LOCKING_PATHS = {
    "submission": _path_submit,
    "adopting a task after a lost answer": _path_adopt_after_a_lost_answer,
    "a refused submission": _path_refused_submission,
    "a throttled submission": _path_throttled_submission,
    "a result": _path_result,
    "a result before the create response": _path_result_before_the_create_response,
    "a kept result claimed": _path_kept_result_claimed,
    "an expiry": _path_expiry,
    "a poll round": _path_poll_round,
}


@pytest.mark.parametrize("path", list(LOCKING_PATHS))
def test_every_path_locks_the_image_before_the_task(path, make_image, fake, imm, row_locks):
    run = LOCKING_PATHS[path](make_image, fake, imm)
    before = len(row_locks())

    run()

    transactions = row_locks()[before:]
    assert any(TASK_TABLE in locked for locked in transactions), transactions
    assert_image_before_task(transactions)


# --- Frame numbers ---------------------------------------------------------------------------


def test_checked_frames_with_interval_3_on_a_30_frame_gif_are_every_third_frame():
    frames = pipeline.checked_frames(
        frames_total=10,
        frame_count=30,
        interval=3,
        max_frames=10,
        block_frames=[{"Label": "porn", "Offset": 6, "Rate": 99.5}],
    )

    assert [number for number, _ in frames] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert [number for number, hit in frames if hit] == [6]
    assert frames[2][1] == {"Label": "porn", "Offset": 6, "Rate": 99.5}


@pytest.mark.parametrize(
    ("frame_count", "interval", "max_frames", "total", "numbers"),
    [
        (1, 1, 1, 1, [0]),  # a still image
        (30, 1, 10, 10, list(range(10))),  # every frame, capped by MaxFrames
        (20, 3, 10, 7, [0, 3, 6, 9, 12, 15, 18]),  # the GIF ends before MaxFrames
        (30, 3, 10, 4, [0, 3, 6, 9]),  # IMM counted fewer: its count wins
        (12, 3, 10, 6, [0, 3, 6, 9, 12, 15]),  # IMM read more frames than we did
        (30, 3, 10, 2_000_000_000, [3 * n for n in range(10)]),  # never beyond MaxFrames
        (30, 3, 10, 0, []),  # IMM said nothing about frames
    ],
)
def test_checked_frames_follow_the_grid_and_imm_s_count(
    frame_count, interval, max_frames, total, numbers
):
    frames = pipeline.checked_frames(
        frames_total=total,
        frame_count=frame_count,
        interval=interval,
        max_frames=max_frames,
        block_frames=[],
    )

    assert [number for number, _ in frames] == numbers


def test_an_offending_frame_off_the_grid_is_shown_in_its_place_never_dropped():
    hits = [
        {"Label": "porn", "Offset": 7, "Rate": 90.0},
        {"Label": "sexy", "Offset": 40, "Rate": 80.0},
        {"Label": "bad", "Offset": -1, "Rate": 1.0},
        {"Label": "bad", "Offset": "3", "Rate": 1.0},
    ]

    frames = pipeline.checked_frames(
        frames_total=4, frame_count=12, interval=3, max_frames=10, block_frames=hits
    )

    assert [(number, hit["Label"] if hit else "") for number, hit in frames] == [
        (0, ""),
        (3, ""),
        (6, ""),
        (7, "porn"),
        (9, ""),
        (40, "sexy"),
    ]


def test_an_answer_imm_gives_the_poller_that_cannot_be_stored_is_skipped_not_a_crash(
    make_image, fake, imm
):
    with time_machine.travel(T0, tick=False):
        image, task = submitted(make_image, imm)
    fake.finish(task.task_id, "block", ("porn",))
    fake.tasks[task.task_id]["Code"] = {"not": "text"}
    other_image, other_task = submitted(make_image, imm)
    fake.finish(other_task.task_id, "pass")
    ModerationTask.objects.filter(pk__in=[task.pk, other_task.pk]).update(next_poll_at=T0)

    report = pipeline.poll_once(client=imm, now=T0)

    assert (report.asked, report.failed, report.recorded) == (2, 1, 1)
    image.refresh_from_db()
    task.refresh_from_db()
    assert image.status == Image.Status.SUBMITTED
    assert task.state == ModerationTask.State.RUNNING
    assert task.next_poll_at > T0  # asked again later
    assert not ModerationResult.objects.filter(task=task).exists()
    other_image.refresh_from_db()
    assert other_image.status == Image.Status.APPROVED


def test_a_fetched_verdict_that_cannot_be_stored_ends_the_task_run_quietly(make_image, imm_server):
    image = make_image()
    pipeline.submit_image.call(image.pk)
    task = image.moderation_tasks.get()
    imm_server.finish(task.task_id, "block", ("porn",))
    imm_server.tasks[task.task_id]["EndTime"] = {"when": "later"}

    assert pipeline.fetch_result.call(task.task_id) == "unreadable"

    assert not ModerationResult.objects.filter(task=task).exists()
    image.refresh_from_db()
    assert image.status == Image.Status.SUBMITTED
