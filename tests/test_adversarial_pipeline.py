"""Issue 9, the pipeline's part, replayed as IMM, a busy worker fleet or a careless user would.

Each test replays one finding over HTTP where it matters: IMM's later word on an image a person
has decided or escalated (point 2), submission and result recording at once on PostgreSQL
(point 7), frame numbers with IMM_INTERVAL > 1 and queue counts that contradict the list
(point 9).
"""

from __future__ import annotations

import io
import json
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage

from moderation import services
from moderation.imm import pipeline
from moderation.imm.client import ImmClient, ImmConfig
from moderation.imm.emulator import Emulator
from moderation.models import (
    AuditEntry,
    Image,
    ModerationResult,
    ModerationTask,
    NotificationInboxMessage,
)

from .audit_log import assert_log_verifies
from .conftest import apply_inbox, postgres_only
from .test_pipeline import CREATE, SECRET, FakeImm, acts_then_times_out, client_for

TOKEN = "adversarial-notify-token"
URL = "/imm/notifications/"


@pytest.fixture(autouse=True)
def _imm_settings(settings):
    settings.IMM_NOTIFY_TOKEN = TOKEN
    settings.IMM_OSS_BUCKET = "review-bucket"
    settings.IMM_SCENES = ["porn", "terrorism"]
    settings.IMM_POLL_AFTER = 60
    settings.IMM_NOTIFICATION = "none"


def notify(message: dict[str, Any], client: Client | None = None) -> str:
    """IMM's notification, as EventBridge delivers it (the shared-token door), then the inbox
    applied as the poller does; what record_result made of it ("" if another applier holds it
    still)."""
    response = (client or Client()).post(
        URL,
        data=json.dumps(message),
        content_type="application/json",
        headers={"X-IMM-Notify-Token": TOKEN},
    )
    assert response.status_code == 200, response.content
    apply_inbox()
    stored = NotificationInboxMessage.objects.filter(task_id=message["TaskId"]).latest("id")
    return stored.outcome


def imm_message(fake: FakeImm, task_id: str) -> dict[str, Any]:
    """The task as IMM reports it (what GetImageModerationResult answers), as a notification."""
    return {k: v for k, v in fake.tasks[task_id].items() if k != "SourceURI"}


# --- Point 2: a person's decision beats IMM's later word --------------------------------------


@pytest.fixture
def fake() -> FakeImm:
    return FakeImm()


def submitted_for_review(make_image, fake: FakeImm) -> tuple[Image, str]:
    """An image IMM sent to review (its first word, over the notification endpoint)."""
    image = make_image()
    with client_for(fake) as imm:
        assert pipeline.submit(image_id=image.pk, client=imm).what == "submitted"
    [task_id] = fake.tasks
    fake.finish(task_id, "review", ("sexy",), end="2025-05-20T08:00:03.000Z")
    assert notify(imm_message(fake, task_id)) == "recorded"
    image.refresh_from_db()
    assert image.status == Image.Status.AWAITING_REVIEW
    return image, task_id


@pytest.mark.parametrize("manual_review", ["pass", "block"])
def test_imm_s_manual_review_cannot_take_an_escalated_image_from_the_admin(
    manual_review, make_image, fake, reviewer_client, admin_client
):
    image, task_id = submitted_for_review(make_image, fake)
    assert reviewer_client.post(reverse("review_next")).status_code == 302
    response = reviewer_client.post(
        reverse("review_decide", args=[image.pk]),
        {"action": "escalate", "note": "the tattoo may be a hate symbol"},
    )
    assert response.status_code == 302
    image.refresh_from_db()
    assert image.status == Image.Status.ESCALATED

    # IMM's manual review finishes afterwards and says its word.
    fake.finish(task_id, manual_review, ("porn",) if manual_review == "block" else ())
    fake.tasks[task_id]["EndTime"] = "2025-05-20T10:00:00.000Z"
    answer = notify(imm_message(fake, task_id))

    assert answer == "recorded"
    image.refresh_from_db()
    assert image.status == Image.Status.ESCALATED
    assert image.human_decided_at is None
    kept = ModerationResult.objects.get(imm_task_id=task_id, suggestion=manual_review)
    assert kept.applied is False
    assert kept.outcome == "kept: a reviewer escalated this image; only an admin decides it"
    entry = AuditEntry.objects.filter(image=image).order_by("id").last()
    assert (entry.action, entry.state_before, entry.state_after) == (
        "imm.result_received",
        "escalated",
        "escalated",
    )
    assert entry.reason == kept.outcome
    assert entry.detail["suggestion"] == manual_review
    # The admin still finds it escalated, sees IMM's word and why it was kept, and decides.
    assert image.pk in [
        i.pk for i in admin_client.get(reverse("review_escalated")).context["images"]
    ]
    pane = admin_client.get(reverse("review_item", args=[image.pk])).content.decode()
    assert "Escalated: an admin decides." in pane
    assert f"— {kept.outcome}" in pane
    decided = admin_client.post(
        reverse("review_decide", args=[image.pk]), {"action": "reject", "reason": "hate symbol"}
    )
    assert decided.status_code == 302
    image.refresh_from_db()
    assert image.status == Image.Status.REJECTED


def test_a_late_imm_failure_does_not_pull_an_image_out_of_the_review_queue(
    make_image, fake, reviewer_client
):
    image, task_id = submitted_for_review(make_image, fake)
    fake.tasks[task_id].update(
        Status="Failed", Code="InternalError", Message="late", EndTime="2025-05-20T10:00:00.000Z"
    )
    del fake.tasks[task_id]["ModerationResult"]

    assert notify(imm_message(fake, task_id)) == "recorded"

    image.refresh_from_db()
    assert image.status == Image.Status.AWAITING_REVIEW
    failed = ModerationResult.objects.get(imm_task_id=task_id, status="Failed")
    assert failed.applied is False
    assert failed.outcome.startswith("kept: it has a verdict")
    queue = reviewer_client.get(reverse("review_queue")).content.decode()
    assert f'alt="Image {image.pk} (blurred)"' in queue


# --- Point 7: submission and result recording at once -------------------------------------------


ROUNDS = 12
PER_ROUND = 3


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_submission_notifications_and_polling_at_once_never_deadlock(make_image):
    """Two submitters, two notifiers (over HTTP) and a poller on the same images, many rounds.

    Every create makes the task at IMM and then times out (the answer is lost), so each image's
    second attempt looks its task up and adopts it, writing the task under the image's lock,
    while IMM's notifications for that submission (matched by its tag, before we know the
    TaskId) and the poller record results for the same task and image. With one path locking
    task then image and another image then task, PostgreSQL detects a deadlock and fails one.
    """
    fake = FakeImm()
    fake.down[CREATE] = acts_then_times_out
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # reported by the test below, not swallowed
            errors.append(error)
        finally:
            connection.close()

    def task_of(image_id: int) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for task_id, task in list(fake.tasks.items()):
                if task["Tags"].get("image") == str(image_id):
                    return task_id
            time.sleep(0.001)
        raise AssertionError(f"image {image_id} never reached IMM")

    images: list[int] = []
    for _ in range(ROUNDS):
        batch = [make_image().pk for _ in range(PER_ROUND)]
        images += batch
        barrier = threading.Barrier(5, timeout=60)

        def submitter(batch: list[int] = batch, barrier: threading.Barrier = barrier) -> None:
            with client_for(fake) as imm:
                barrier.wait()
                for image_id in random.sample(batch, len(batch)):
                    if pipeline.submit(image_id=image_id, client=imm).what == "retrying":
                        # The retry is due now (its backoff is what a worker waits for).
                        ModerationTask.objects.filter(
                            image_id=image_id, state=ModerationTask.State.SENDING
                        ).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
                        pipeline.submit(image_id=image_id, client=imm)

        def notifier(batch: list[int] = batch, barrier: threading.Barrier = barrier) -> None:
            client = Client()
            barrier.wait()
            for image_id in random.sample(batch, len(batch)):
                task_id = task_of(image_id)
                task = fake.tasks[task_id]
                if task["Status"] == "Running":
                    task.update(
                        Status="Succeeded",
                        EndTime="2025-05-20T08:00:03.000Z",
                        ModerationResult={
                            "URI": task["SourceURI"],
                            "Suggestion": "review",
                            "Categories": ["sexy"],
                            "Frames": {"TotalCount": 1, "BlockFrames": []},
                        },
                    )
                notify(imm_message(fake, task_id), client)
                # IMM's manual review follows: a block, later.
                fake.finish(task_id, "block", ("porn",), end="2025-05-20T09:00:00.000Z")
                notify(imm_message(fake, task_id), client)

        def poller(barrier: threading.Barrier = barrier) -> None:
            with client_for(fake) as imm:
                barrier.wait()
                for _ in range(3):
                    pipeline.poll_once(client=imm, now=timezone.now() + timedelta(seconds=61))

        workers = [submitter, submitter, notifier, notifier, poller]
        threads = [threading.Thread(target=run, args=(work,)) for work in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []

    # Each notifier applied the inbox after each delivery: nothing waits, nothing failed.
    assert apply_inbox() == []
    assert not NotificationInboxMessage.objects.filter(attempts__gt=0).exists()
    for image_id in images:
        image = Image.objects.get(pk=image_id)
        [task] = image.moderation_tasks.all()
        assert image.status == Image.Status.REJECTED
        assert task.state == ModerationTask.State.SUCCEEDED
        assert fake.tasks[task.task_id]["Tags"]["submission"] == task.submission_key
        results = list(ModerationResult.objects.filter(imm_task_id=task.task_id))
        assert sorted(r.suggestion for r in results) == ["block", "review"]
        assert all((r.task_id, r.image_id) == (task.pk, image.pk) for r in results)
        [block] = [r for r in results if r.suggestion == "block"]
        assert block.applied is True
        routed = AuditEntry.objects.filter(image=image, action="imm.routed").order_by("id")
        assert routed.last().state_after == Image.Status.REJECTED
    assert_log_verifies()


# --- Point 9: frame numbers with IMM_INTERVAL > 1 ---------------------------------------------


def thirty_frame_gif(offending: int) -> bytes:
    """A 30-frame GIF, blue-grey but for one frame mostly skin-coloured (the emulator blocks it)."""
    frames = [PILImage.new("RGB", (96, 72), (90, 110, 130 + n)) for n in range(30)]
    frames[offending] = PILImage.new("RGB", (96, 72), (224, 172, 140))
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def test_the_pane_marks_the_frame_imm_flagged_with_interval_3_on_a_30_frame_gif(
    settings, admin_user, admin_client
):
    settings.IMM_INTERVAL = 3
    settings.IMM_MAX_FRAMES = 10
    settings.IMM_SCENES = ["porn"]
    stored = services.ingest(fp=io.BytesIO(thirty_frame_gif(6)), filename="a.gif", actor=admin_user)
    image = stored.image
    assert image is not None
    assert image.frame_count == 30
    emulator = Emulator(
        access_key_id="AK",
        access_key_secret=SECRET,
        project="p",
        bucket="review-bucket",
        delay=0,
    )
    emulator.start()
    try:
        config = ImmConfig(
            endpoint=emulator.url,
            region="cn-hangzhou",
            project="p",
            access_key_id="AK",
            access_key_secret=SECRET,
        )
        with ImmClient(config) as imm:
            outcome = pipeline.submit(image_id=image.pk, client=imm)
            assert outcome.what == "submitted"
            deadline = time.monotonic() + 20
            while (answer := imm.get_image_moderation_result(outcome.detail)).status == "Running":
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        emulator.stop()
    message = pipeline.TaskMessage.parse({**answer.raw, "TaskType": "ImageModeration"})
    assert pipeline.record_result(message=message, source="poll").what == "recorded"
    result = ModerationResult.objects.get()
    # The emulator checked frames 0, 3, ..., 27 and names the offending one by its GIF index.
    assert result.frames_total == 10
    assert [f["Offset"] for f in result.block_frames] == [6]
    image.refresh_from_db()
    assert image.status == Image.Status.REJECTED

    html = admin_client.get(reverse("review_item", args=[image.pk])).content.decode()

    frames = re.findall(r'<li class="(\w*)" title="frame (\d+):', html)
    assert [int(number) for _, number in frames] == list(range(0, 30, 3))
    assert [int(number) for hit, number in frames if hit] == [6]
    assert "10 frames of 30 checked, offending ones marked" in html


# --- Point 9: queue counts never contradict the list under them ---------------------------------


def test_a_reviewer_never_sees_3_waiting_above_one_row(make_image, reviewer_client, admin_client):
    images = [make_image(status=Image.Status.AWAITING_REVIEW) for _ in range(3)]
    first = reviewer_client.get(reverse("review_queue")).content.decode()
    assert '<span class="figure" id="waiting-count">3</span>' in first

    # Within the 30 seconds the counts used to be cached for, an admin decides two of them.
    for image in images[:2]:
        response = admin_client.post(
            reverse("review_decide", args=[image.pk]), {"action": "approve"}
        )
        assert response.status_code == 302
    html = reviewer_client.get(reverse("review_queue")).content.decode()

    assert html.count('class="sensitive mini ') == 1
    assert f'alt="Image {images[2].pk} (blurred)"' in html
    assert '<span class="figure" id="waiting-count">1</span>' in html
