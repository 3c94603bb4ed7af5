"""POST /api/v1/images and the reads: the upload page's intake behind a key, duplicates,
external ids, metadata, another client's images, IMM's verdict and the final outcome."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils.html import escape
from django_tasks import default_task_backend

from moderation.api.models import ApiClient, ApiSubmission
from moderation.events.models import Event
from moderation.imm import pipeline
from moderation.models import AuditEntry, Image
from reviews import services as review_services

from .api_helpers import png
from .test_pipeline import _imm_settings, deliver, fake, imm, sleeps  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


def test_a_submitted_image_is_stored_audited_as_the_client_and_sent_to_imm(
    api, django_capture_on_commit_callbacks
):
    default_task_backend.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = api.submit(png(1), external_id="post-1", metadata='{"user": 42, "tags": ["a"]}')
    assert response.status_code == 201
    body = response.json()
    image = Image.objects.get()
    client = ApiClient.objects.get(name="shop")
    assert body["id"] == image.pk
    assert body["sha256"] == image.sha256
    assert body["status"] == "received"
    assert body["duplicate_of"] is None
    assert body["external_id"] == "post-1"
    assert body["metadata"] == {"user": 42, "tags": ["a"]}
    assert body["waiting"]["waiting_for"] == "imm"
    assert body["outcome"] is None
    assert image.uploaded_by == client.user
    submission = ApiSubmission.objects.get()
    assert (submission.client, submission.image, submission.external_id) == (
        client,
        image,
        "post-1",
    )
    entry = AuditEntry.objects.get(action="image.uploaded")
    assert entry.actor == client.user
    assert entry.actor_label == "api:shop"
    assert entry.detail["via"] == "api"
    # Sent to IMM exactly as an upload is: the submit task, once the transaction committed.
    assert [(r.task.name, list(r.args)) for r in default_task_backend.results] == [
        ("submit_image", [image.pk])
    ]


def test_the_same_bytes_from_two_clients_are_one_image_with_two_submissions(api, api_for):
    first = api.submit(png(7), external_id="x").json()
    other = api_for("forum")
    second = other.submit(png(7), external_id="x")
    assert second.status_code == 201
    assert second.json()["id"] == first["id"]
    assert second.json()["duplicate_of"] == first["id"]
    assert Image.objects.count() == 1
    assert ApiSubmission.objects.count() == 2
    dup = AuditEntry.objects.get(action="image.duplicate")
    assert dup.actor_label == "api:forum"
    # Each sees it through its own submission.
    assert other.get("/api/v1/images?external_id=x").json()["duplicate_of"] == first["id"]
    assert api.get("/api/v1/images?external_id=x").json()["duplicate_of"] is None


def test_another_clients_image_is_not_found(api, api_for):
    image_id = api.submit(png(2), external_id="mine").json()["id"]
    stranger = api_for("stranger")
    response = stranger.get(f"/api/v1/images/{image_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert stranger.get("/api/v1/images?external_id=mine").status_code == 404
    assert api.get(f"/api/v1/images/{image_id}").status_code == 200


def test_an_image_uploaded_on_the_page_is_not_visible_to_a_client(api, make_image):
    image = make_image()
    assert api.get(f"/api/v1/images/{image.pk}").status_code == 404


def test_an_external_id_is_unique_per_client_but_not_across_clients(api, api_for):
    assert api.submit(png(3), external_id="same").status_code == 201
    again = api.submit(png(4), external_id="same")
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["code"] == "external_id_taken"
    assert error["field"] == "external_id"
    assert Image.objects.count() == 1  # the second file was not stored
    assert api_for("other").submit(png(4), external_id="same").status_code == 201


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("[1, 2]", "metadata must be a JSON object."),
        ("{not json", "metadata must be a JSON object."),
        ('{"a": "' + "x" * 4100 + '"}', "it can be at most 4,096"),
        ('{"a": "nul \\u0000 here"}', "NUL"),
        ('{"a": "\\ud800"}', "not valid Unicode"),
    ],
)
def test_metadata_must_be_a_json_object_of_at_most_4_kb(api, metadata, message):
    response = api.submit(png(5), metadata=metadata)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "metadata"
    assert message in error["message"]
    assert not Image.objects.exists()


def test_metadata_of_exactly_4_kb_is_kept(api):
    text = '{"a": "' + "x" * (4096 - 9) + '"}'
    assert len(text.encode()) == 4096
    response = api.submit(png(6), metadata=text)
    assert response.status_code == 201
    assert ApiSubmission.objects.get().metadata == json.loads(text)


def test_an_external_id_over_its_limit_is_refused(api):
    response = api.submit(png(8), external_id="e" * 201)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "external_id"


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"<html><script>alert(1)</script></html>", "evil.jpg"),
        (b"", "empty.png"),
        (png(9)[:200], "cut.png"),
    ],
)
def test_a_refusal_has_the_rule_and_the_upload_pages_own_words(api, admin_client, data, name):
    response = api.submit(data, name=name)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "refused"
    assert error["field"] == "file"
    assert error["rule"]
    page = admin_client.post(
        reverse("upload"), {"files": [SimpleUploadedFile(name, data)]}
    ).content.decode()
    assert escape(error["message"]) in page  # "This file <reason>." word for word
    assert not Image.objects.exists()
    refusals = AuditEntry.objects.filter(action="image.refused").order_by("id")
    assert [e.actor_label for e in refusals] == ["api:shop", "ada"]
    assert refusals[0].detail["rule"] == error["rule"]


def test_a_request_without_a_file_names_the_missing_field(api):
    response = api.submit(None, external_id="nofile")
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "invalid",
        "message": "file: Field required",
        "field": "file",
    }


def test_reading_by_external_id_needs_one(api):
    response = api.get("/api/v1/images")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "external_id"


def test_a_read_shows_imms_verdict_and_imms_outcome(api, imm):  # noqa: F811 - imported fixture
    image_id = api.submit(png(10), external_id="imm").json()["id"]
    assert pipeline.submit(image_id=image_id, client=imm).what == "submitted"
    task = Image.objects.get(pk=image_id).moderation_tasks.get()
    assert api.get(f"/api/v1/images/{image_id}").json()["status"] == "submitted"
    deliver(task.task_id, "block", categories=("porn",))
    body = api.get("/api/v1/images?external_id=imm").json()
    assert body["status"] == "rejected"
    assert body["imm"]["suggestion"] == "block"
    assert body["imm"]["categories"] == ["porn"]
    assert body["imm"]["frames_checked"] == 1
    assert body["outcome"]["verdict"] == "rejected"
    assert body["outcome"]["decided_by"] == {"kind": "imm", "name": "IMM"}
    event = Event.objects.get(image_id=image_id)
    assert body["outcome"]["reason"] == event.data["reason"]
    assert body["outcome"]["reason"].startswith("IMM said block")
    assert body["waiting"] is None


def test_a_read_shows_a_persons_decision_and_what_waits_before_it(api, imm, admin_user):  # noqa: F811
    image_id = api.submit(png(11)).json()["id"]
    pipeline.submit(image_id=image_id, client=imm)
    task = Image.objects.get(pk=image_id).moderation_tasks.get()
    deliver(task.task_id, "review", categories=("sexy",))
    waiting = api.get(f"/api/v1/images/{image_id}").json()
    assert waiting["status"] == "awaiting_review"
    assert waiting["outcome"] is None
    image = Image.objects.get(pk=image_id)
    assert waiting["waiting"]["waiting_for"] == "review"
    assert waiting["waiting"]["since"].startswith(image.status_changed_at.isoformat()[:19])
    review_services.decide(
        image_id=image_id, reviewer=admin_user, verdict="reject", category="sexy", reason="nope"
    )
    decided = api.get(f"/api/v1/images/{image_id}").json()
    assert decided["status"] == "rejected"
    assert decided["outcome"]["decided_by"] == {"kind": "person", "name": "ada"}
    assert "sexy" in decided["outcome"]["reason"]
    assert "nope" in decided["outcome"]["reason"]
    assert decided["imm"]["suggestion"] == "review"
