from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage
from PIL import ImageStat

from moderation.models import AuditEntry, Image, RoutingRule
from reviews.models import Reveal

from .factories import image_bytes

pytestmark = pytest.mark.django_db


def upload_file(name: str, data: bytes, content_type: str = "image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


# The role matrix: every URL against anonymous, reviewer and admin.
# Each row: (name, url builder, anonymous, reviewer, admin) with the expected status.
# 302 for anonymous means a redirect to the login page.
MATRIX = [
    ("home", lambda img: reverse("home"), 302, 302, 302),
    ("healthz", lambda img: reverse("healthz"), 200, 200, 200),
    ("login", lambda img: reverse("login"), 200, 200, 200),
    ("image list", lambda img: reverse("image_list"), 302, 403, 200),
    ("upload", lambda img: reverse("upload"), 302, 403, 200),
    (
        "detail, received",
        lambda img: reverse("image_detail", args=[img["received"]]),
        302,
        404,
        200,
    ),
    ("detail, waiting", lambda img: reverse("image_detail", args=[img["waiting"]]), 302, 200, 200),
    (
        "original, received",
        lambda img: reverse("image_file", args=[img["received"], "original"]),
        302,
        404,
        200,
    ),
    (
        "preview, waiting",
        lambda img: reverse("image_file", args=[img["waiting"], "preview"]),
        302,
        200,
        200,
    ),
    (
        "thumbnail, waiting",
        lambda img: reverse("image_file", args=[img["waiting"], "thumbnail"]),
        302,
        200,
        200,
    ),
    # Reviewers see the EXIF-free preview, never the original (its metadata is not theirs).
    (
        "original, waiting",
        lambda img: reverse("image_file", args=[img["waiting"], "original"]),
        302,
        404,
        200,
    ),
    (
        "blurred preview, waiting",
        lambda img: reverse("image_file", args=[img["waiting"], "preview-blurred"]),
        302,
        200,
        200,
    ),
    (
        "blurred thumbnail, received",
        lambda img: reverse("image_file", args=[img["received"], "thumbnail-blurred"]),
        302,
        404,
        200,
    ),
    ("review queue", lambda img: reverse("review_queue"), 302, 200, 200),
    ("routing rules", lambda img: reverse("routing_rules"), 302, 403, 200),
    ("notifications (GET)", lambda img: reverse("imm_notification"), 405, 405, 405),
    ("django admin", lambda img: "/admin/", 302, 302, 200),
    ("admin audit log", lambda img: "/admin/moderation/auditentry/", 302, 302, 200),
    ("admin images", lambda img: "/admin/moderation/image/", 302, 302, 200),
]


@pytest.fixture
def images(make_image):
    return {
        "received": make_image().pk,
        "waiting": make_image(status=Image.Status.AWAITING_REVIEW).pk,
    }


@pytest.mark.parametrize(("name", "url", "anonymous", "reviewer", "admin"), MATRIX)
def test_the_role_matrix_holds_for_every_url(
    name, url, anonymous, reviewer, admin, images, admin_client, reviewer_client
):
    path = url(images)
    assert Client().get(path).status_code == anonymous, "anonymous"
    assert reviewer_client.get(path).status_code == reviewer, "reviewer"
    assert admin_client.get(path).status_code == admin, "admin"


def test_anonymous_visitors_are_sent_to_the_login_page(images):
    response = Client().get(reverse("image_list"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_home_sends_each_role_to_its_start_page(admin_client, reviewer_client):
    assert admin_client.get("/")["Location"] == reverse("dashboard")
    assert reviewer_client.get("/")["Location"] == reverse("review_queue")


def test_a_user_without_a_role_is_told_so(django_user_model):
    user = django_user_model.objects.create_user(username="nobody", password="x")
    client = Client()
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 403
    assert b"No role yet" in response.content


def test_reviewers_cannot_post_uploads(reviewer_client):
    response = reviewer_client.post(
        reverse("upload"), {"files": [upload_file("a.png", image_bytes())]}
    )
    assert response.status_code == 403
    assert not Image.objects.exists()


def test_the_login_page_signs_a_user_in(admin_user):
    client = Client()
    response = client.post(
        reverse("login"), {"username": "ada", "password": "correct-horse-battery"}
    )
    assert response.status_code == 302
    assert client.get(reverse("image_list")).status_code == 200


def test_healthz_reports_what_needs_a_look_as_json():
    response = Client().get(reverse("healthz"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {
        "status": "degraded",
        "database": "ok",
        "imm_submissions": "running",
        "oldest_waiting_task_seconds": 0,
        "poller_last_round_seconds_ago": None,
        "inbox_waiting": 0,
        "inbox_failing": 0,
        "inbox_oldest_seconds": 0,
        "audit_entries_waiting": 0,
        "audit_oldest_waiting_seconds": 0,
        "problems": ["the IMM poller has not run recently: is imm_poller running?"],
    }


@pytest.mark.django_db(transaction=True)
def test_healthz_is_ok_with_a_recent_poller_round_and_sees_a_stale_backlog(settings):
    from datetime import timedelta

    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult

    from moderation.imm.pipeline import submit_image
    from moderation.models import ImmStatus

    ImmStatus.objects.create(pk=1, poller_seen_at=timezone.now())
    assert Client().get(reverse("healthz")).json()["status"] == "ok"

    settings.TASKS = {
        "default": {
            "BACKEND": "django_tasks_db.DatabaseBackend",
            "QUEUES": ["default", "imm_submit"],
        }
    }
    submit_image.enqueue(12345)
    DBTaskResult.objects.update(enqueued_at=timezone.now() - timedelta(minutes=10))
    ImmStatus.objects.filter(pk=1).update(paused=True)
    body = Client().get(reverse("healthz")).json()
    assert body["status"] == "degraded"
    assert body["imm_submissions"] == "paused"
    assert body["oldest_waiting_task_seconds"] >= 600
    assert body["problems"] == [
        "IMM submissions are paused",
        "tasks are waiting: are db_worker and imm_submitter running?",
    ]


def test_the_upload_page_renders_the_dropzone(admin_client):
    response = admin_client.get(reverse("upload"))
    assert response.status_code == 200
    assert b'id="upload-form"' in response.content
    assert b"multiple" in response.content
    assert response.headers["Vary"].count("HX-Request") == 1


def test_a_full_page_upload_stores_good_files_and_names_the_bad_one(admin_client, admin_user):
    files = [
        upload_file("one.png", image_bytes("PNG", color=(1, 2, 3))),
        upload_file("evil.jpg", b"<html><script>alert(1)</script></html>", "image/jpeg"),
        upload_file("two.jpg", image_bytes("JPEG", color=(200, 2, 3)), "image/jpeg"),
    ]
    response = admin_client.post(reverse("upload"), {"files": files})
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" in body.lower()  # the whole page, not a fragment
    assert body.count('data-outcome="stored"') == 2
    assert body.count('data-outcome="refused"') == 1
    assert "evil.jpg" in body
    assert "it looks like an HTML page" in body
    assert "&lt;script&gt;" not in body  # the refused file's content never reaches the page
    stored = Image.objects.order_by("id")
    assert [i.original_filename for i in stored] == ["one.png", "two.jpg"]
    assert all(i.uploaded_by == admin_user for i in stored)
    assert [i.format for i in stored] == ["PNG", "JPEG"]
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True))[-3:] == [
        "image.uploaded",
        "image.refused",
        "image.uploaded",
    ]


def test_an_htmx_upload_returns_only_the_result_fragment(admin_client):
    response = admin_client.post(
        reverse("upload"),
        {"files": [upload_file("one.png", image_bytes())]},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body.lower()
    assert body.strip().startswith("<li")
    assert 'data-outcome="stored"' in body
    image = Image.objects.get()
    assert image.get_absolute_url() in body
    assert "Vary" in response.headers
    assert "HX-Request" in response.headers["Vary"]


def test_the_same_content_uploaded_twice_is_stored_once_and_linked(admin_client):
    data = image_bytes(color=(9, 9, 9))
    admin_client.post(reverse("upload"), {"files": [upload_file("first.png", data)]})
    response = admin_client.post(
        reverse("upload"),
        {"files": [upload_file("again.png", data)]},
        headers={"HX-Request": "true"},
    )
    image = Image.objects.get()
    assert image.original_filename == "first.png"
    body = response.content.decode()
    assert 'data-outcome="duplicate"' in body
    assert image.get_absolute_url() in body
    duplicate = AuditEntry.objects.order_by("id").last()
    assert duplicate.action == "image.duplicate"
    assert duplicate.image == image
    assert duplicate.detail["filename"] == "again.png"


def test_a_low_resolution_upload_is_stored_with_a_visible_warning(admin_client):
    response = admin_client.post(
        reverse("upload"), {"files": [upload_file("tiny.png", image_bytes(size=(1, 1)))]}
    )
    assert b'data-outcome="stored"' in response.content
    assert b"Low resolution (1 x 1 px)" in response.content
    detail = admin_client.get(Image.objects.get().get_absolute_url())
    assert b"Low resolution" in detail.content


def test_uploads_record_who_from_where(admin_client, admin_user):
    admin_client.post(
        reverse("upload"),
        {"files": [upload_file("one.png", image_bytes())]},
        headers={"User-Agent": "pytest-browser/1.0"},
        REMOTE_ADDR="203.0.113.7",
    )
    entry = AuditEntry.objects.get(action="image.uploaded")
    assert entry.actor == admin_user
    assert entry.actor_label == "ada"
    assert entry.ip_address == "203.0.113.7"
    assert entry.user_agent == "pytest-browser/1.0"
    assert entry.state_after == Image.Status.RECEIVED


def test_the_image_list_is_newest_first_and_filters_by_status(admin_client, make_image):
    older = make_image()
    waiting = make_image(status=Image.Status.AWAITING_REVIEW)
    newest = make_image()
    response = admin_client.get(reverse("image_list"))
    assert list(response.context["page"].object_list) == [newest, waiting, older]
    response = admin_client.get(reverse("image_list"), {"status": "awaiting_review"})
    assert list(response.context["page"].object_list) == [waiting]
    assert response.context["status"] == "awaiting_review"


def test_the_image_list_ignores_an_unknown_status(admin_client, make_image):
    make_image()
    response = admin_client.get(reverse("image_list"), {"status": "nonsense"})
    assert response.status_code == 200
    assert response.context["status"] == ""
    assert len(response.context["page"].object_list) == 1


def test_the_image_list_is_paginated(admin_client, make_image, settings):
    from moderation import views

    for _ in range(views.IMAGES_PER_PAGE + 1):
        make_image(size=(8, 8))
    first = admin_client.get(reverse("image_list"))
    second = admin_client.get(reverse("image_list"), {"page": 2})
    assert len(first.context["page"].object_list) == views.IMAGES_PER_PAGE
    assert len(second.context["page"].object_list) == 1
    assert b'rel="next"' in first.content


def test_the_detail_page_shows_metadata_source_uri_and_history(admin_client, make_image, settings):
    image = make_image()
    response = admin_client.get(image.get_absolute_url())
    body = response.content.decode()
    assert image.sha256 in body
    assert f"oss://{settings.IMM_OSS_BUCKET}/images/{image.sha256[:2]}/{image.sha256}.png" in body
    assert "Uploaded" in body
    assert list(response.context["history"]) == list(AuditEntry.objects.filter(image=image))
    assert 'class="sensitive preview"' in body  # blurred by default


def test_image_bytes_are_served_with_their_detected_type_and_nosniff(admin_client, make_image):
    image = make_image(fmt="JPEG")
    response = admin_client.get(reverse("image_file", args=[image.pk, "original"]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert response["Cache-Control"].startswith("private")
    with image.file.open("rb") as stored:
        assert b"".join(response.streaming_content) == stored.read()


def test_previews_and_thumbnails_are_webp_re_encodings(admin_client, make_image):
    image = make_image(fmt="JPEG")
    for variant in ("preview", "thumbnail"):
        response = admin_client.get(reverse("image_file", args=[image.pk, variant]))
        assert response["Content-Type"] == "image/webp"
        assert b"".join(response.streaming_content)[8:12] == b"WEBP"


def test_image_bytes_are_never_at_a_public_media_url(admin_client, make_image, settings):
    image = make_image()
    assert Client().get(settings.MEDIA_URL + image.file.name).status_code in (302, 404)
    assert admin_client.get(settings.MEDIA_URL + image.file.name).status_code == 404
    assert admin_client.get("/media/" + image.file.name).status_code == 404


def test_an_unknown_variant_is_not_found(admin_client, make_image):
    image = make_image()
    assert admin_client.get(f"/images/{image.pk}/secret").status_code == 404


def test_the_review_queue_lists_waiting_images_oldest_first(reviewer_client, make_image):
    first = make_image(status=Image.Status.AWAITING_REVIEW)
    make_image()
    second = make_image(status=Image.Status.AWAITING_REVIEW)
    response = reviewer_client.get(reverse("review_queue"))
    assert [row.pk for row in response.context["page"].rows] == [first.pk, second.pk]
    assert response.context["figures"].waiting == 2


def test_reviewers_see_no_upload_or_admin_links(reviewer_client):
    body = reviewer_client.get(reverse("review_queue")).content.decode()
    assert reverse("upload") not in body
    assert "/admin/" not in body
    assert reverse("review_queue") in body


def test_the_admin_shows_audit_entries_read_only(admin_client, make_image):
    make_image()
    entry = AuditEntry.objects.order_by("id").last()
    page = admin_client.get(f"/admin/moderation/auditentry/{entry.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert admin_client.get("/admin/moderation/auditentry/add/").status_code == 403
    response = admin_client.post(
        f"/admin/moderation/auditentry/{entry.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_admins_add_and_remove_routing_rules_with_audit_entries(admin_client, admin_user):
    response = admin_client.post(reverse("routing_rules"), {"category": "sexy", "note": "confirm"})
    assert response.status_code == 302
    rule = RoutingRule.objects.get()
    assert (rule.category, rule.note, rule.created_by) == ("sexy", "confirm", admin_user)
    page = admin_client.get(reverse("routing_rules")).content.decode()
    assert "<code>sexy</code>" in page
    added = AuditEntry.objects.get(action="routing.rule_added")
    assert added.detail == {"category": "sexy"}
    assert added.actor == admin_user

    again = admin_client.post(reverse("routing_rules"), {"category": "sexy"}, follow=True)
    assert "There is already a rule for" in again.content.decode()
    blank = admin_client.post(reverse("routing_rules"), {"category": "two words"}, follow=True)
    assert "A category is one word" in blank.content.decode()
    assert RoutingRule.objects.count() == 1

    admin_client.post(reverse("routing_rules"), {"remove": str(rule.pk)})
    assert not RoutingRule.objects.exists()
    assert AuditEntry.objects.get(action="routing.rule_removed").detail == {"category": "sexy"}
    admin_client.post(reverse("routing_rules"), {"remove": "not-a-number"})
    assert AuditEntry.objects.filter(action="routing.rule_removed").count() == 1


def test_reviewers_cannot_change_routing_rules(reviewer_client):
    response = reviewer_client.post(reverse("routing_rules"), {"category": "sexy"})
    assert response.status_code == 403
    assert not RoutingRule.objects.exists()


def test_the_detail_page_offers_a_retry_only_for_failed_or_expired_images(admin_client, make_image):
    failed = make_image(status=Image.Status.FAILED)
    approved = make_image(status=Image.Status.APPROVED)
    retry = reverse("image_retry", args=[failed.pk])
    assert retry in admin_client.get(failed.get_absolute_url()).content.decode()
    other = reverse("image_retry", args=[approved.pk])
    assert other not in admin_client.get(approved.get_absolute_url()).content.decode()


def test_reviewers_cannot_retry_or_resume(reviewer_client, make_image):
    failed = make_image(status=Image.Status.FAILED)
    assert reviewer_client.post(reverse("image_retry", args=[failed.pk])).status_code == 403
    assert reviewer_client.post(reverse("imm_resume")).status_code == 403
    failed.refresh_from_db()
    assert failed.status == Image.Status.FAILED


def test_resume_only_redirects_to_local_pages(admin_client):
    response = admin_client.post(reverse("imm_resume"), {"next": "https://evil.example/"})
    assert response["Location"] == reverse("image_list")
    response = admin_client.post(reverse("imm_resume"), {"next": "/images/?status=failed"})
    assert response["Location"] == "/images/?status=failed"


# ------------------------------------------------------------- blurred by default, reveals recorded


def served(response) -> bytes:
    content = getattr(response, "streaming_content", None)
    return b"".join(content) if content is not None else response.content


def checkerboard_png(square: int = 8, size: tuple[int, int] = (640, 480)) -> bytes:
    image = PILImage.new("L", size, 0)
    for y in range(0, size[1], square):
        for x in range((y // square) % 2 * square, size[0], 2 * square):
            image.paste(255, (x, y, x + square, y + square))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("variant", ["preview", "thumbnail"])
def test_serving_clear_pixels_records_a_reveal_for_that_person_and_is_never_cached(
    variant, reviewer_client, reviewer_user, make_image
):
    image = make_image(status=Image.Status.AWAITING_REVIEW)

    response = reviewer_client.get(reverse("image_file", args=[image.pk, variant]))

    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"
    reveal = Reveal.objects.get()
    assert (reveal.image, reveal.reviewer, reveal.variant) == (image, reviewer_user, variant)


def test_each_serving_is_its_own_reveal_and_an_admins_original_is_marked_as_such(
    admin_client, admin_user, make_image
):
    image = make_image(fmt="JPEG")

    for variant in ("preview", "preview", "original"):
        assert admin_client.get(reverse("image_file", args=[image.pk, variant])).status_code == 200

    assert list(
        Reveal.objects.filter(reviewer=admin_user).order_by("id").values_list("variant", flat=True)
    ) == ["preview", "preview", "original"]


def test_a_head_request_or_a_blurred_rendition_records_no_reveal(reviewer_client, make_image):
    image = make_image(status=Image.Status.AWAITING_REVIEW)

    assert (
        reviewer_client.head(reverse("image_file", args=[image.pk, "preview"])).status_code == 200
    )
    for variant in ("preview-blurred", "thumbnail-blurred"):
        response = reviewer_client.get(reverse("image_file", args=[image.pk, variant]))
        assert response.status_code == 200
        assert response["Content-Type"] == "image/webp"
        assert response["Cache-Control"] == "private, max-age=86400"
        assert response["X-Content-Type-Options"] == "nosniff"

    assert not Reveal.objects.exists()


def test_the_blurred_rendition_has_the_clear_ones_size_and_none_of_its_shapes(admin_client, db):
    from moderation import services

    result = services.ingest(fp=io.BytesIO(checkerboard_png()), filename="c.png", actor=None)
    image = result.image
    assert image is not None
    for variant in ("preview", "thumbnail"):
        clear = PILImage.open(io.BytesIO(served(admin_client.get(f"/images/{image.pk}/{variant}"))))
        blurred = PILImage.open(
            io.BytesIO(served(admin_client.get(f"/images/{image.pk}/{variant}-blurred")))
        )
        assert blurred.size == clear.size
        # The squares are black and white (spread about 127); blurred, they are one grey.
        assert ImageStat.Stat(clear.convert("L")).stddev[0] > 100
        assert ImageStat.Stat(blurred.convert("L")).stddev[0] < 3


def test_pages_load_only_blurred_renditions_and_record_nothing(
    admin_client, reviewer_client, reviewer_user, make_image
):
    from reviews.models import Claim

    image = make_image(status=Image.Status.AWAITING_REVIEW)
    escalated = make_image(status=Image.Status.ESCALATED)
    Claim.objects.create(
        image=image,
        reviewer=reviewer_user,
        claimed_at=image.uploaded_at,
        expires_at=image.uploaded_at.replace(year=image.uploaded_at.year + 1),
    )
    pages = [
        (admin_client, reverse("image_list")),
        (admin_client, reverse("image_detail", args=[image.pk])),
        (admin_client, reverse("review_escalated")),
        (admin_client, reverse("review_item", args=[escalated.pk])),
        (reviewer_client, reverse("review_queue")),
        (reviewer_client, reverse("review_item", args=[image.pk])),
        (reviewer_client, reverse("image_detail", args=[image.pk])),
    ]
    for client, url in pages:
        html = client.get(url).content.decode()
        sources = re.findall(r'<img src="([^"]+)"', html)
        assert sources, url
        assert all(re.fullmatch(r"/images/\d+/(preview|thumbnail)-blurred", s) for s in sources), (
            url,
            sources,
        )

    assert not Reveal.objects.exists()


def test_reveal_is_a_link_to_the_clear_preview_that_works_without_javascript(
    reviewer_client, reviewer_user, make_image
):
    image = make_image(status=Image.Status.AWAITING_REVIEW)
    html = reviewer_client.get(reverse("image_detail", args=[image.pk])).content.decode()
    clear = reverse("image_file", args=[image.pk, "preview"])
    link = re.search(r'<a href="([^"]+)"[^>]*data-reveal[^>]*>Reveal</a>', html)
    assert link
    assert link.group(1) == clear
    assert f'data-clear-src="{clear}"' in html

    assert reviewer_client.get(link.group(1)).status_code == 200
    assert Reveal.objects.get().reviewer == reviewer_user


def test_only_admins_are_offered_the_original(admin_client, reviewer_client, make_image):
    image = make_image(status=Image.Status.AWAITING_REVIEW)
    original = reverse("image_file", args=[image.pk, "original"])

    assert original in admin_client.get(reverse("image_detail", args=[image.pk])).content.decode()
    assert (
        original
        not in reviewer_client.get(reverse("image_detail", args=[image.pk])).content.decode()
    )


def test_the_separate_reveal_endpoint_is_gone(reviewer_client, make_image):
    image = make_image(status=Image.Status.AWAITING_REVIEW)

    assert reviewer_client.post(f"/reviews/{image.pk}/reveal/").status_code == 404
    assert not Reveal.objects.exists()


def test_an_image_without_a_preview_says_why_on_every_page(
    admin_client, reviewer_client, make_image, monkeypatch
):
    from moderation import intake

    monkeypatch.setattr(intake, "DECODE_MAX_PIXELS", 50_000)
    image = make_image(status=Image.Status.AWAITING_REVIEW, size=(400, 300))
    assert not image.preview
    assert not image.thumbnail
    reason = (
        "No preview: this image is 400 x 300 (120,000 pixels), more than the 50,000 the server "
        "decodes for previews."
    )

    for response in [
        admin_client.get(reverse("image_detail", args=[image.pk])),
        reviewer_client.post(reverse("review_next"), follow=True),  # claims it: the pane
    ]:
        assert response.status_code == 200
        html = response.content.decode()
        assert reason in html
        assert "data-reveal" not in html
    assert "No preview" in admin_client.get(reverse("image_list")).content.decode()
    # The queue's rows and the admins' escalated list say so too, rather than a broken picture.
    blurred_url = reverse("image_file", args=[image.pk, "thumbnail-blurred"])
    for page in [
        reviewer_client.get(reverse("review_queue")),
        admin_client.get(reverse("review_escalated")),
    ]:
        html = page.content.decode()
        assert f"Image {image.pk}</a>" in html
        assert "No preview" in html
        assert blurred_url not in html
    for variant in ("preview", "thumbnail", "preview-blurred", "thumbnail-blurred"):
        assert admin_client.get(reverse("image_file", args=[image.pk, variant])).status_code == 404
    assert admin_client.get(reverse("image_file", args=[image.pk, "original"])).status_code == 200
    assert AuditEntry.objects.get(image=image, action="image.uploaded").detail["warnings"] == [
        reason
    ]


def noise_png(seed: int, side: int = 600) -> bytes:
    """A PNG that does not compress: about 1 MB at 600 x 600."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    PILImage.frombytes("RGB", (side, side), pixels).save(out, format="PNG")
    return out.getvalue()


def test_a_no_javascript_upload_of_several_megabytes_is_stored(admin_client, settings):
    files = [upload_file(f"noise-{n}.png", noise_png(n)) for n in range(3)]
    assert sum(f.size for f in files) > 2 * settings.REQUEST_MAX_KB * 1024
    response = admin_client.post(reverse("upload"), {"files": files})
    assert response.status_code == 200
    assert Image.objects.count() == 3


def test_changing_a_password_applies_the_password_validators(admin_client, admin_user):
    url = reverse("password_change")
    assert admin_client.get(url).status_code == 200
    weak = admin_client.post(
        url,
        {
            "old_password": "correct-horse-battery",
            "new_password1": "12345678",
            "new_password2": "12345678",
        },
    )
    assert weak.status_code == 200
    assert b"This password is too common." in weak.content
    assert b"This password is entirely numeric." in weak.content
    admin_user.refresh_from_db()
    assert admin_user.check_password("correct-horse-battery")
    done = admin_client.post(
        url,
        {
            "old_password": "correct-horse-battery",
            "new_password1": "a quieter horse, stapled",
            "new_password2": "a quieter horse, stapled",
        },
    )
    assert done["Location"] == reverse("password_change_done")
    admin_user.refresh_from_db()
    assert admin_user.check_password("a quieter horse, stapled")


def test_the_lockout_and_body_limits_come_from_the_environment(tmp_path):
    script = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), "
        "s.UPLOAD_MAX_REQUEST_MB, s.REQUEST_MAX_KB, s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS)"
    )
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "moderation.settings",
        "DEBUG": "1",
    }
    root = Path(__file__).resolve().parent.parent

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script],
            cwd=root,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert run().stdout.split() == ["10", "900.0", "100", "1024", "False", "0"]
    chosen = run(
        LOGIN_FAILURE_LIMIT="4",
        LOGIN_LOCKOUT_MINUTES="30",
        UPLOAD_MAX_REQUEST_MB="250",
        REQUEST_MAX_KB="256",
        SECURE_SSL_REDIRECT="1",
        SECURE_HSTS_SECONDS="31536000",
    )
    assert chosen.stdout.split() == ["4", "1800.0", "250", "256", "True", "31536000"]
    refused = run(LOGIN_FAILURE_LIMIT="0")
    assert refused.returncode != 0
    assert "LOGIN_FAILURE_LIMIT and LOGIN_LOCKOUT_MINUTES must be at least 1" in refused.stderr
