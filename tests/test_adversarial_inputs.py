"""Issue 9, point 5, replayed over HTTP: odd parameters get a 4xx (or are ignored), never a 500.

Found by trying the running server as a reviewer and as an admin after the first round of fixes:
a NUL character in any typed text reached PostgreSQL (which cannot store it in text) and a
number such as "²" passed str.isdigit() and then failed int(). Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from moderation import limits
from moderation.models import AuditEntry, Image, RoutingRule
from reviews.models import Claim, Decision

pytestmark = pytest.mark.django_db

NUL_REFUSED = "a parameter holds a NUL character"


def written() -> tuple[int, int, int, int, list[tuple[int, str]]]:
    return (
        Decision.objects.count(),
        Claim.objects.count(),
        AuditEntry.objects.count(),
        RoutingRule.objects.count(),
        list(Image.objects.order_by("id").values_list("id", "status")),
    )


@pytest.fixture
def held(make_image, reviewer_client) -> Image:
    """An image waiting for review that the reviewer holds."""
    image = make_image(status=Image.Status.AWAITING_REVIEW)
    reviewer_client.post(reverse("review_next"))
    assert Claim.objects.filter(image=image).exists()
    return image


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "reject", "reason": "bad\x00reason"},
        {"action": "reject", "reject_category": "p\x00orn"},
        {"action": "escalate", "note": "look\x00here"},
        {"action\x00": "approve"},
    ],
    ids=["reason", "category", "note", "key"],
)
def test_a_nul_in_a_reviewers_words_is_a_400_that_writes_nothing(reviewer_client, held, fields):
    before = written()

    response = reviewer_client.post(reverse("review_decide", args=[held.pk]), fields)

    assert response.status_code == 400
    assert NUL_REFUSED in response.content.decode()
    assert written() == before


@pytest.mark.parametrize(
    ("who", "method", "url", "data"),
    [
        ("reviewer", "get", "/reviews/?category=%00", None),
        ("admin", "post", "/imm/routing/", {"category": "x\x00y", "note": ""}),
        ("admin", "post", "/imm/routing/", {"category": "sexy", "note": "n\x00"}),
        ("admin", "post", "/reviews/bulk/", {"action": "reject", "reason": "a\x00", "images": "1"}),
        ("admin", "get", "/audit/?actor=%00", None),
        ("admin", "get", "/audit/?action=%00", None),
        ("admin", "get", "/audit/export.csv?actor=%00", None),
        ("admin", "get", "/admin/moderation/image/?status__exact=%00", None),
    ],
)
def test_a_nul_anywhere_in_a_query_or_form_is_a_400_that_writes_nothing(
    admin_client, reviewer_client, make_image, who, method, url, data
):
    make_image(status=Image.Status.AWAITING_REVIEW)
    client = admin_client if who == "admin" else reviewer_client
    before = written()

    response = getattr(client, method)(url, data) if data else getattr(client, method)(url)

    assert response.status_code == 400
    assert NUL_REFUSED in response.content.decode()
    assert written() == before


@pytest.mark.parametrize(
    "query",
    ["after=%C2%B2.%C2%B2", "after=%C2%B2.1", "after=99999999999999999999999.1", "after=1.²"],
)
def test_a_queue_cursor_that_is_not_a_cursor_shows_the_first_page(
    reviewer_client, make_image, query
):
    image = make_image(status=Image.Status.AWAITING_REVIEW)

    response = reviewer_client.get(f"{reverse('review_queue')}?{query}")

    assert response.status_code == 200
    assert f">Image {image.pk}</a>" in response.content.decode()


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        ("get", "/reviews/?uploader=%C2%B2", None),
        ("get", f"/reviews/?uploader={2**70}", None),
        ("post", "/reviews/next/", {"uploader": "²"}),
        ("get", "/reviews/escalated/?undo=%C2%B2", None),
        ("get", f"/reviews/escalated/?undo={2**70}", None),
        ("post", "/reviews/bulk/", {"action": "approve", "images": ["²", str(2**70)]}),
        ("post", "/imm/routing/", {"remove": "²"}),
        ("post", "/imm/routing/", {"remove": str(2**70)}),
    ],
)
def test_a_number_that_is_not_one_is_ignored_not_a_500(admin_client, make_image, method, url, data):
    image = make_image(status=Image.Status.AWAITING_REVIEW)
    RoutingRule.objects.create(category="sexy")
    before_images = list(Image.objects.values_list("id", "status"))

    response = (
        getattr(admin_client, method)(url, data) if data else getattr(admin_client, method)(url)
    )

    assert response.status_code in (200, 302)
    assert list(Image.objects.values_list("id", "status")) == before_images
    assert Decision.objects.count() == 0
    assert RoutingRule.objects.filter(category="sexy").exists()
    image.refresh_from_db()
    assert image.status == Image.Status.AWAITING_REVIEW


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        ("12", 12),
        ("0", 0),
        ("²", None),
        ("١٢", None),
        ("", None),
        ("-1", None),
        (" 1", None),
        (str(limits.WHOLE_NUMBER_MAX), limits.WHOLE_NUMBER_MAX),
        (str(2**63), None),
        ("1" * 5000, None),
    ],
)
def test_whole_number_takes_ascii_digits_that_fit_the_database(raw, number):
    assert limits.whole_number(raw) == number


def test_a_multipart_post_to_the_notification_endpoint_is_a_4xx_not_a_500(settings):
    # The endpoint reads and checks its raw body itself; nothing may consume it first.
    settings.IMM_NOTIFY_TOKEN = "the-token"
    boundary = "xyz"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="a"\r\n\r\nbc\r\n--{boundary}--\r\n'
    ).encode()
    for headers in ({"X-IMM-Notify-Token": "the-token"}, {"x-mns-signing-cert-url": "aHR0cHM6"}):
        response = Client().post(
            reverse("imm_notification"),
            data=body,
            content_type=f"multipart/form-data; boundary={boundary}",
            headers=headers,
        )
        assert 400 <= response.status_code < 500
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "/reviews/?after=" + "1" * 5000 + ".1",
        "/reviews/?uploader=" + "1" * 5000,
        "/reviews/escalated/?undo=" + "1" * 5000,
        "/audit/?image=" + "1" * 5000,
    ],
    ids=["cursor", "uploader", "undo", "audit-image"],
)
def test_a_number_of_thousands_of_digits_is_ignored_not_a_500(admin_client, url):
    assert admin_client.get(url).status_code == 200


def test_a_content_length_of_thousands_of_digits_is_a_400(client):
    response = client.post(
        reverse("login"), data=b"", content_type="text/plain", CONTENT_LENGTH="9" * 5000
    )
    assert response.status_code == 400
