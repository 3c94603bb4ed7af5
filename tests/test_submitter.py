"""Concurrent submission (manage.py imm_submitter) and IMM's budget shared by every process.

The budget is tested on its own (one statement an ask, the database's clock), then through the
client (a throttled answer), then with real concurrent connections: submitters in threads and in
processes, on PostgreSQL, against a fake IMM that counts what reaches it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tasks import task as background_task
from django_tasks_db.models import DBTaskResult

from moderation.imm import pipeline
from moderation.imm.client import ImmClient, ImmConfig
from moderation.imm.ratelimit import (
    CLOCK_MARGIN,
    DEFAULT_PAUSE,
    LATE_IN_SECOND,
    PAUSE_CAP,
    SharedRateLimit,
)
from moderation.imm.submitter import Submitter
from moderation.models import AuditEntry, Image, ImmRateLimit, ImmStatus, ModerationTask

from .conftest import postgres_only
from .test_pipeline import (
    CREATE,
    LIST,
    SECRET,
    Act,
    FakeImm,
    _Relay,
    acts_then_times_out,
    client_for,
    throttled,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _imm_settings(settings):
    settings.IMM_OSS_BUCKET = "review-bucket"
    settings.IMM_SCENES = ["porn", "terrorism"]
    settings.IMM_NOTIFICATION = "none"
    settings.IMM_MAX_QPS = 0


@pytest.fixture
def task_queue(settings) -> None:
    """The real task backend (tests record tasks by default): the submitter reads its rows."""
    settings.TASKS = {
        "default": {
            "BACKEND": "django_tasks_db.DatabaseBackend",
            "QUEUES": ["default", pipeline.SUBMIT_QUEUE],
        }
    }


def seed(count: int) -> list[int]:
    """Received images, rows only (the fake IMM reads no file), each with its task queued."""
    stamp = time.time_ns()
    images = Image.objects.bulk_create(
        Image(
            file=f"images/{n:02x}/{stamp:x}-{n}.png",
            sha256=f"{stamp:032x}{n:032x}"[-64:],
            format="PNG",
            width=512,
            height=512,
            byte_size=1000,
            original_filename=f"seeded-{n}.png",
        )
        for n in range(count)
    )
    for image in images:
        pipeline.submit_image.enqueue(image.pk)
    return [image.pk for image in images]


class Counted:
    """A fake IMM behind a lock (the submitter calls it from many threads) that notes when each
    request arrived, with its action and the image it names."""

    def __init__(self, fake: FakeImm) -> None:
        self.fake = fake
        self.lock = threading.Lock()
        self.arrivals: list[tuple[float, str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            params = httpx.QueryParams(request.url.query.decode())
            tags = json.loads(params.get("Tags", "{}"))
            self.arrivals.append(
                (time.time(), request.headers["x-acs-action"], tags.get("image", ""))
            )
            return self.fake(request)

    def per_second(self, action: str = CREATE) -> Counter[int]:
        return Counter(int(at) for at, name, _ in self.arrivals if name == action)


def tasks_at_imm(fake: FakeImm) -> Counter[str]:
    """IMM's tasks per image (by the image tag every create carries)."""
    return Counter(task["Tags"]["image"] for task in fake.tasks.values())


# --- The budget --------------------------------------------------------------------------------


def early_in_a_second() -> None:
    """Wait for the start of the next second (the database's clock is this machine's), so an
    ask is not refused for coming in the last LATE_IN_SECOND of its second."""
    time.sleep(1 - time.time() % 1 + 0.01)


@pytest.mark.django_db
def test_one_ask_lets_at_most_qps_requests_through_in_its_second():
    budget = SharedRateLimit(qps=5)
    early_in_a_second()

    turn = budget.ask(8)

    assert turn.granted == 5
    assert 0 < turn.wait <= 1 + CLOCK_MARGIN
    assert not turn.paused
    assert ImmRateLimit.objects.get().asked == 8  # the refused three count too


@pytest.mark.django_db
def test_no_turn_is_granted_in_the_last_part_of_a_second():
    budget = SharedRateLimit(qps=5)
    early_in_a_second()
    time.sleep(1 - LATE_IN_SECOND / 2)  # late in this second

    late = budget.ask()

    assert late.granted == 0
    assert 0 < late.wait <= LATE_IN_SECOND / 2 + CLOCK_MARGIN + 0.1
    assert not late.paused


@pytest.mark.django_db
def test_no_limit_lets_everything_through():
    assert SharedRateLimit(qps=0).ask(1000).granted == 1000


@pytest.mark.django_db
def test_nothing_goes_through_during_imm_s_pause_but_the_throttled_caller_s_retry():
    budget = SharedRateLimit(qps=0)

    held = budget.throttled(2.0)
    during = budget.ask()
    retry = budget.ask(mind_pause=False)

    assert held == pytest.approx(2.0)
    assert (during.granted, during.paused) == (0, True)
    assert 0 < during.wait <= 2.0
    assert retry.granted == 1


@pytest.mark.django_db
def test_a_pause_is_imm_s_hint_without_it_a_second_and_never_longer_than_the_cap():
    budget = SharedRateLimit(qps=10)

    assert budget.throttled(None) == pytest.approx(DEFAULT_PAUSE, abs=0.05)
    assert budget.throttled(3600) == pytest.approx(PAUSE_CAP, abs=0.05)


@pytest.mark.django_db
def test_a_shorter_pause_never_shortens_a_longer_one():
    budget = SharedRateLimit(qps=10)

    budget.throttled(5.0)
    later = budget.throttled(0.5)

    assert 4.5 < later <= 5.0


@pytest.mark.django_db
def test_turns_for_more_than_a_second_allows_come_a_second_at_a_time():
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    early_in_a_second()
    granted = list(SharedRateLimit(qps=3, sleep=sleep).turns(5))

    # Three now, to be sent now, and the other two in the next second: a turn held over into
    # the next second would add to that second's three.
    assert granted == [3, 2]
    assert len(waits) == 1
    assert 0 < waits[0] <= 1 + CLOCK_MARGIN


class RecordingPacer:
    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.calls: list[tuple[str, object]] = []

    def take(self, *, after_throttle: bool = False) -> None:
        self.calls.append(("take", after_throttle))

    def throttled(self, retry_after: float | None) -> float:
        self.calls.append(("throttled", retry_after))
        return self.pause


def test_the_client_asks_the_budget_before_each_attempt_and_waits_out_the_shared_pause():
    fake = FakeImm()
    fake.faults[CREATE].append(throttled(retry_after_ms=1500))
    sleeps: list[float] = []
    pacer = RecordingPacer(pause=7.0)  # another process's longer pause is in force

    with client_for(fake, sleeps) as client:
        client.create_image_moderation_task(source_uri="oss://b/k.png", pace=pacer)

    assert pacer.calls == [("take", False), ("throttled", 1.5), ("take", True)]
    assert sleeps == [7.0]
    assert len(fake.sent(CREATE)) == 2


# --- Submitting a batch -------------------------------------------------------------------------


def _outside_the_audit_log(queries: list[dict[str, str]]) -> int:
    return sum(1 for query in queries if "audit" not in query["sql"])


@pytest.mark.django_db
def test_a_batch_costs_the_same_statements_whatever_its_size_beyond_the_audit_entries(
    make_image,
):
    fake = FakeImm()
    first = make_image().pk
    small = [make_image().pk for _ in range(2)]
    large = [make_image().pk for _ in range(12)]

    with client_for(fake) as client:
        pipeline.submit(image_id=first, client=client)  # makes the one-row tables' rows
        with CaptureQueriesContext(connection) as few:
            pipeline.submit_many(image_ids=small, client=client)
        with CaptureQueriesContext(connection) as many:
            pipeline.submit_many(image_ids=large, client=client)

    assert _outside_the_audit_log(many.captured_queries) == _outside_the_audit_log(
        few.captured_queries
    )
    assert len(fake.sent(CREATE)) == 15
    assert Image.objects.filter(status=Image.Status.SUBMITTED).count() == 15
    assert AuditEntry.objects.filter(action="imm.submitted").count() == 15


@pytest.mark.django_db
def test_a_batch_sends_only_what_waits_and_says_why_for_the_rest(make_image):
    fake = FakeImm()
    waiting, done, held = make_image(), make_image(), make_image()
    with client_for(fake) as client:
        pipeline.submit(image_id=done.pk, client=client)
        ModerationTask.objects.create(
            image=held,
            submission_key="h" * 32,
            attempts=1,
            next_attempt_at=pipeline.timezone.now() + pipeline.SEND_LEASE,
        )

        outcomes = pipeline.submit_many(
            image_ids=[waiting.pk, done.pk, held.pk, waiting.pk, 999_999], client=client
        )

    assert outcomes[waiting.pk].what == "submitted"
    assert outcomes[done.pk] == pipeline.SubmitOutcome("skipped", "nothing to submit")
    assert outcomes[held.pk] == pipeline.SubmitOutcome(
        "skipped", "another attempt holds this image"
    )
    assert outcomes[999_999] == pipeline.SubmitOutcome("skipped", "nothing to submit")
    assert len(fake.sent(CREATE)) == 2  # `done` earlier, `waiting` once though named twice


@pytest.mark.django_db
def test_one_image_that_crashes_leaves_the_others_of_its_batch_submitted(make_image):
    fake = FakeImm()
    images = [make_image() for _ in range(3)]
    doomed = images[1]

    def crash_for_one(request: httpx.Request, act: Act) -> httpx.Response:
        tags = json.loads(httpx.QueryParams(request.url.query.decode())["Tags"])
        if tags["image"] == str(doomed.pk):
            raise RuntimeError("the worker broke while sending")
        return act()

    fake.down[CREATE] = crash_for_one
    with client_for(fake) as client:
        outcomes = pipeline.submit_many(image_ids=[i.pk for i in images], client=client)

    assert [outcomes[i.pk].what for i in images] == ["submitted", "error", "submitted"]
    assert isinstance(outcomes[doomed.pk].error, RuntimeError)
    task = doomed.moderation_tasks.get()
    # As if its worker had died: the next attempt, after the lease, looks the task up first.
    assert task.state == ModerationTask.State.SENDING
    assert task.ambiguous is True
    assert task.next_attempt_at is not None


@pytest.mark.django_db
def test_a_batch_that_cannot_be_recorded_together_is_recorded_one_by_one(make_image):
    fake = FakeImm()
    fake.task_ids.extend(["ImageModeration-same", "ImageModeration-same", "ImageModeration-x"])
    first, second, third = make_image(), make_image(), make_image()

    with client_for(fake) as client:
        outcomes = pipeline.submit_many(image_ids=[first.pk, second.pk, third.pk], client=client)

    # IMM answered the same TaskId twice: the batch's transaction fails on it, and one by one
    # only the second image is refused, left ambiguous for its next attempt to look up.
    assert outcomes[first.pk] == pipeline.SubmitOutcome("submitted", "ImageModeration-same")
    assert outcomes[second.pk].what == "error"
    assert outcomes[third.pk] == pipeline.SubmitOutcome("submitted", "ImageModeration-x")
    assert second.moderation_tasks.get().ambiguous is True


# --- The submitter ------------------------------------------------------------------------------


@background_task(queue_name=pipeline.SUBMIT_QUEUE)
def note(n: int) -> str:
    return f"noted {n}"


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> ImmClient:
    config = ImmConfig(
        endpoint="http://imm.test",
        region="cn-hangzhou",
        project="p",
        access_key_id="AK",
        access_key_secret=SECRET,
    )
    return ImmClient(config, transport=httpx.MockTransport(handler))


@pytest.mark.django_db(transaction=True)
def test_the_submitter_runs_the_queue_and_marks_each_task_with_its_outcome(task_queue):
    fake = Counted(FakeImm())
    ids = seed(30)
    pipeline.submit_image.enqueue(ids[0])  # queued twice, as a resend can
    pipeline.submit_image.enqueue(image_id=ids[1])
    note.enqueue(7)

    with mock_client(fake) as client:
        report = Submitter(concurrency=4, worker_id="w-test", client=client).run(batch=True)

    assert tasks_at_imm(fake.fake) == Counter({str(i): 1 for i in ids})
    assert Image.objects.filter(pk__in=ids, status=Image.Status.SUBMITTED).count() == 30
    rows = DBTaskResult.objects.all()
    assert {row.status for row in rows} == {"SUCCESSFUL"}
    assert Counter(row.return_value for row in rows) == Counter(
        {"submitted": 30, "skipped": 2, "noted 7": 1}
    )
    assert all(row.worker_ids == ["w-test"] for row in rows)
    assert report.claimed == 33
    assert report.outcomes == Counter({"submitted": 30, "skipped": 2, "noted 7": 1})


@pytest.mark.django_db(transaction=True)
def test_requests_in_flight_are_many_at_once_and_never_more_than_the_concurrency(task_queue):
    fake = FakeImm()
    lock = threading.Lock()
    active, most, seen = [0], [0], [0]
    # The first three requests wait for one another: sent one at a time, they never would.
    together = threading.Barrier(3, timeout=60)

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            seen[0] += 1
            first = seen[0] <= 3
        try:
            if first:
                together.wait()
            time.sleep(0.01)
            with lock:
                return fake(request)
        finally:
            with lock:
                active[0] -= 1

    ids = seed(40)
    with mock_client(handler) as client:
        Submitter(concurrency=5, worker_id="w", client=client).run(batch=True)

    assert 3 <= most[0] <= 5
    assert tasks_at_imm(fake) == Counter({str(i): 1 for i in ids})


@pytest.mark.django_db(transaction=True)
def test_a_paused_submission_sends_nothing_and_says_so_on_each_task(task_queue):
    ImmStatus.objects.update_or_create(pk=1, defaults={"paused": True})
    fake = Counted(FakeImm())
    seed(5)

    with mock_client(fake) as client:
        report = Submitter(concurrency=4, worker_id="w", client=client).run(batch=True)

    assert fake.arrivals == []
    assert report.outcomes == Counter({"paused": 5})
    assert set(DBTaskResult.objects.values_list("return_value", flat=True)) == {"paused"}


@pytest.mark.django_db(transaction=True)
def test_the_command_runs_the_queue_and_refuses_a_concurrency_out_of_range(
    task_queue, settings, capsys
):
    fake = Counted(FakeImm())
    server, url = serve(fake)
    settings.IMM_ENDPOINT, settings.IMM_PROJECT = url, "p"
    settings.IMM_ACCESS_KEY_ID, settings.IMM_ACCESS_KEY_SECRET = "AK", SECRET
    ids = seed(6)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        call_command("imm_submitter", "--batch", "--concurrency", "3")
    finally:
        server.shutdown()
        server.server_close()

    # Ctrl-C means what it meant before the command ran.
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers

    assert "6 task(s) run: submitted 6" in capsys.readouterr().out
    assert tasks_at_imm(fake.fake) == Counter({str(i): 1 for i in ids})
    with pytest.raises(CommandError, match="--concurrency must be from 1 to 256"):
        call_command("imm_submitter", "--batch", "--concurrency", "0")


# --- Real concurrent connections (PostgreSQL) ----------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: sixteen connections opened at once would have
    # some SYNs dropped, and the kernel resends them a second later, a second late at IMM.
    request_queue_size = 128


def serve(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[ThreadingHTTPServer, str]:
    """The handler as IMM on a loopback port, keeping connections open as IMM does."""
    relay = type(
        "Relay",
        (_Relay,),
        {
            "fake": staticmethod(handler),
            "protocol_version": "HTTP/1.1",
            "disable_nagle_algorithm": True,  # the body would wait ~40 ms for the headers' ACK
        },
    )
    server = _Server(("127.0.0.1", 0), relay)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def run_until_submitted(
    submitters: list[Submitter], ids: list[int], *, deadline: float = 180.0
) -> None:
    """Run the submitters in threads until every image is submitted (or the deadline passes,
    which the caller's assertions then report), then stop them."""
    threads = [threading.Thread(target=s.run) for s in submitters]
    for thread in threads:
        thread.start()
    try:
        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            waiting = Image.objects.filter(pk__in=ids).exclude(status=Image.Status.SUBMITTED)
            if not waiting.exists():
                break
            time.sleep(0.2)
    finally:
        for submitter in submitters:
            submitter.stop()
        for thread in threads:
            thread.join()
        connection.close()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_submitters_over_the_same_images_make_exactly_one_imm_task_each(task_queue):
    """Two submitters (each its own connections) over 300 images, every image queued twice (a
    resend racing the first send), while one create in ten reaches IMM and loses its answer: the
    next attempt must find that task with ListTasks and adopt it, never create a second."""
    fake = FakeImm()
    chance = random.Random(20261201)
    lost = [0]

    def sometimes_lost(request: httpx.Request, act: Act) -> httpx.Response:
        if chance.random() < 0.1:
            lost[0] += 1
            return acts_then_times_out(request, act)
        return act()

    fake.down[CREATE] = sometimes_lost
    counted = Counted(fake)
    ids = seed(300)
    for image_id in ids:
        pipeline.submit_image.enqueue(image_id)

    with mock_client(counted) as client:
        run_until_submitted(
            [Submitter(concurrency=16, worker_id=f"w{n}", client=client) for n in (1, 2)], ids
        )

    assert tasks_at_imm(fake) == Counter({str(i): 1 for i in ids})
    # A lost answer is never followed by a second create: the lookup finds the task first.
    assert lost[0] > 0, "no answer was lost: the seed no longer exercises adoption"
    assert len(fake.sent(CREATE)) == 300
    assert len(fake.sent(LIST)) == lost[0]
    tasks = ModerationTask.objects.filter(image_id__in=ids)
    assert tasks.count() == 300
    assert {t.state for t in tasks} == {ModerationTask.State.RUNNING}
    assert {t.task_id for t in tasks} == set(fake.tasks)
    adopted = AuditEntry.objects.filter(action="imm.submitted", detail__adopted=True).count()
    assert adopted == lost[0] == sum(1 for t in tasks if t.attempts > 1)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_throttled_answer_holds_every_submitter_back_until_the_shared_time(task_queue, settings):
    """Two submitters, one request in flight each; IMM throttles the fifth create, asking for
    1.5 s. Until then at most the other submitter's request already in flight reaches IMM, and
    the throttled create is sent again only once the pause is over."""
    fake = FakeImm()
    fake.faults[CREATE].extend([lambda r, act: act()] * 4 + [throttled(retry_after_ms=1500)])
    counted = Counted(fake)
    throttled_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        response = counted(request)
        if response.status_code == 400:
            throttled_at.append(time.time())
        return response

    ids = seed(40)
    with mock_client(handler) as client:
        run_until_submitted(
            [Submitter(concurrency=1, worker_id=f"w{n}", client=client) for n in (1, 2)], ids
        )

    [answered] = throttled_at
    pause_ends = ImmRateLimit.objects.get().paused_until
    assert answered < pause_ends
    during = [at for at, name, _ in counted.arrivals if answered < at < pause_ends]
    assert len(during) <= 1  # the other submitter's request, if it was already on its way
    creates = [(at, image) for at, name, image in counted.arrivals if name == CREATE]
    throttled_image = creates[4][1]
    [retried] = [at for at, image in creates[5:] if image == throttled_image]
    assert retried >= pause_ends
    assert tasks_at_imm(fake) == Counter({str(i): 1 for i in ids})


def submitter_process(url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    database = connection.settings_dict
    return subprocess.Popen(
        [sys.executable, "manage.py", "imm_submitter", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "moderation.settings",
            "DEBUG": "1",
            "DATABASE_URL": (
                f"postgres://{database['USER']}@{database['HOST'] or '127.0.0.1'}:"
                f"{database['PORT'] or 5432}/{database['NAME']}"
            ),
            "IMM_ENDPOINT": url,
            "IMM_PROJECT": "p",
            "IMM_ACCESS_KEY_ID": "AK",
            "IMM_ACCESS_KEY_SECRET": SECRET,
            "IMM_OSS_BUCKET": "review-bucket",
            "IMM_MAX_ATTEMPTS": "4",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def imm_over_http() -> Iterator[tuple[Counted, str]]:
    counted = Counted(FakeImm())
    server, url = serve(counted)
    yield counted, url
    server.shutdown()
    server.server_close()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_budget_holds_across_processes(task_queue, imm_over_http):
    """Two submitter processes, 8 requests in flight each, IMM_MAX_QPS=10: together they send
    ten creates a second, not ten each, and every image gets exactly one task.

    The budget counts turns by the database's second; a turn granted at the very end of a
    second can reach IMM in the next one when the machine is loaded (seen once under CI load:
    20 arrivals in the first second, then 10 a second), so IMM's own count is held to the
    budget over every two consecutive seconds, and the run must take as long as the budget says.
    """
    counted, url = imm_over_http
    ids = seed(60)

    workers = [
        submitter_process(url, "--batch", "--concurrency", "8", IMM_MAX_QPS="10") for _ in (1, 2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err

    per_second = counted.per_second()
    seconds = range(min(per_second), max(per_second) + 1)
    assert all(per_second[s] + per_second[s + 1] <= 20 for s in seconds), sorted(per_second.items())
    # 60 creates at 10 a second span at least five whole seconds; unshared, two processes
    # sending 10 a second each would be done in three.
    creates = sorted(at for at, name, _ in counted.arrivals if name == CREATE)
    assert creates[-1] - creates[0] > 4, sorted(per_second.items())
    assert tasks_at_imm(counted.fake) == Counter({str(i): 1 for i in ids})
    assert Image.objects.filter(pk__in=ids, status=Image.Status.SUBMITTED).count() == 60


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_pause_set_anywhere_holds_another_process_until_it_ends(task_queue, imm_over_http):
    counted, url = imm_over_http
    ids = seed(10)
    SharedRateLimit(qps=0).throttled(3.0)  # as a throttled answer in another process would
    pause_ends = ImmRateLimit.objects.get().paused_until

    worker = submitter_process(url, "--batch", "--concurrency", "4")
    _, err = worker.communicate(timeout=300)

    assert worker.returncode == 0, err
    assert len(counted.arrivals) == 10
    assert min(at for at, _, _ in counted.arrivals) >= pause_ends
    assert tasks_at_imm(counted.fake) == Counter({str(i): 1 for i in ids})
