"""The platform API probed as an attacker would: another client's data by every route, keys in odd
shapes, malformed metadata and headers, hand-made multipart bodies. Every answer is a clear 4xx
in the API's shape (never a 500), and nothing is stored by a refused request."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from moderation.api.models import ApiSubmission, IdempotencyRecord
from moderation.events.models import Event
from moderation.models import Image
from reviews import services as review_services

from .api_helpers import make_key, png
from .conftest import postgres_only
from .test_feed import Writer, wait_until_servable

pytestmark = pytest.mark.django_db


def nested(depth: int) -> str:
    """A JSON object whose one value is `depth - 1` arrays deep."""
    return '{"a":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


# --- metadata that parses but cannot be kept --------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        # Deeper than Python's stack: json.loads raises RecursionError (a 500 before).
        (nested(2000), "must be a JSON object"),
        # Parses, stores, and then no read of the image could serialise it.
        (nested(300), "nests deeper than 32"),
        (nested(33), "nests deeper than 32"),
        # json.loads reads these as floats JSON has no spelling for (a 500 before).
        ('{"a": NaN}', "NaN, Infinity or out of range"),
        ('{"a": -Infinity}', "NaN, Infinity or out of range"),
        ('{"a": 1e400}', "NaN, Infinity or out of range"),
    ],
)
def test_metadata_too_deep_or_not_finite_is_a_422_and_stores_nothing(api, metadata, message):
    assert len(metadata.encode()) <= 4096
    response = api.submit(png(1), metadata=metadata, external_id="deep")
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid", "metadata")
    assert message in error["message"]
    assert not Image.objects.exists()
    assert not ApiSubmission.objects.exists()


def test_metadata_32_levels_deep_is_kept_and_read_back(api):
    response = api.submit(png(2), metadata=nested(32), external_id="d32")
    assert response.status_code == 201
    again = api.get("/api/v1/images?external_id=d32")
    assert again.status_code == 200
    assert again.json()["metadata"] == response.json()["metadata"]


# --- Idempotency-Key in odd shapes -------------------------------------------------------------


@pytest.mark.parametrize("key", ["nul\x00key", "tab\tkey", "caf\xe9", "\x7f"])
def test_an_idempotency_key_that_is_not_printable_ascii_is_a_422(api, key):
    # PostgreSQL's text holds no NUL: the claim's INSERT raised, a 500, before this was checked.
    response = api.submit(png(3), headers={"Idempotency-Key": key})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Idempotency-Key"
    assert not IdempotencyRecord.objects.exists()
    assert not Image.objects.exists()


def test_an_idempotency_key_of_255_printable_characters_is_taken(api):
    key = "k-" + "x" * 249 + " ~!?"
    assert len(key) == 255
    first = api.submit(png(4), headers={"Idempotency-Key": key})
    assert first.status_code == 201
    again = api.submit(png(4), headers={"Idempotency-Key": key})
    assert (again.status_code, again["Idempotent-Replayed"]) == (201, "true")
    too_long = api.submit(png(4), headers={"Idempotency-Key": key + "x"})
    assert too_long.status_code == 422


def test_another_clients_idempotency_key_replays_nothing_of_theirs(api, api_for):
    mine = api.submit(png(5), external_id="mine", headers={"Idempotency-Key": "same"})
    assert mine.status_code == 201
    theirs = api_for("rival").submit(
        png(5), external_id="mine", headers={"Idempotency-Key": "same"}
    )
    # The rival's own first answer (its own submission of the same bytes), not a replay of ours.
    assert theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs
    assert theirs.json()["duplicate_of"] == mine.json()["id"]
    assert ApiSubmission.objects.count() == 2


# --- keys in odd shapes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "Bearer\t{key}",
        "Bearer\u00a0{key}",
        "Bearer {key}\u200b",
        "Bearer {key}x",
        "Basic {key}",
        "Bearer " + "a" * 8000,
        "Bearer mk_" + "\xff" * 60,
    ],
)
def test_a_key_in_an_odd_shape_is_a_401_never_a_500(api, template):
    response = api.client.get(
        "/api/v1/images?external_id=x", headers={"Authorization": template.format(key=api.key)}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_two_spaces_after_bearer_still_name_the_key(api):
    response = api.client.get(
        "/api/v1/images?external_id=x", headers={"Authorization": f"bearer   {api.key}"}
    )
    assert response.status_code == 404  # through the door: the image is simply not there


def test_a_signed_in_admins_cookie_opens_no_api_route(admin_client):
    for path in ("/api/v1/images?external_id=x", "/api/v1/decisions", "/api/v1/images/1"):
        assert admin_client.get(path).status_code == 401
    assert admin_client.post("/api/v1/images", {"file": png(6)}).status_code == 401
    assert not Image.objects.exists()


# --- another client's data, by every route ----------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the feed serves committed transactions only (PG)
def test_another_client_reaches_nothing_of_mine_by_id_external_id_or_feed(api, api_for, admin_user):
    made = api.submit(png(7), external_id="secret-1", metadata='{"owner": "me"}')
    image_id = made.json()["id"]
    Image.objects.filter(pk=image_id).update(status=Image.Status.AWAITING_REVIEW)
    review_services.decide(image_id=image_id, reviewer=admin_user, verdict="reject", reason="no")
    wait_until_servable(list(Event.objects.values_list("pk", flat=True)))
    rival = api_for("rival")
    assert rival.get(f"/api/v1/images/{image_id}").status_code == 404
    assert rival.get("/api/v1/images?external_id=secret-1").status_code == 404
    mine = api.get("/api/v1/decisions").json()
    assert [item["image_id"] for item in mine["items"]] == [image_id]
    # An event id is no cursor; my cursor replayed by the rival is a position, none of my events.
    assert rival.get("/api/v1/decisions", data={"after": mine["items"][0]["id"]}).status_code == 400
    replayed = rival.get("/api/v1/decisions", data={"after": mine["next"]})
    assert replayed.status_code == 200
    assert replayed.json()["items"] == []
    assert rival.get("/api/v1/decisions").json()["items"] == []


# --- hand-made multipart bodies ---------------------------------------------------------------

BOUNDARY = "----attack-boundary"


def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def post_raw(key: str, body: bytes) -> Any:
    return Client().generic(
        "POST",
        "/api/v1/images",
        body,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        headers={"Authorization": f"Bearer {key}"},
    )


def test_metadata_that_is_not_utf8_is_read_with_replacement_characters():
    key = make_key()
    response = post_raw(
        key, multipart(("file", "a.png", png(8)), ("metadata", None, b'{"a": "\xff\xfe"}'))
    )
    # Django reads the field as UTF-8 with replacement characters: a valid object is kept.
    assert response.status_code == 201
    assert ApiSubmission.objects.get().metadata == {"a": "\ufffd\ufffd"}


@pytest.mark.parametrize(
    "filename", ["../../etc/passwd", "..", "a\\..\\b.png", "x" * 400 + ".png", "&#0;.png"]
)
def test_a_filename_trick_is_taken_as_a_plain_name_or_refused(filename):
    key = make_key()
    response = post_raw(key, multipart(("file", filename, png(9))))
    assert response.status_code in (201, 422), response.content
    if response.status_code == 201:
        image = Image.objects.get()
        assert "/" not in image.original_filename
        assert "\\" not in image.original_filename
        assert len(image.original_filename) <= 255
    else:
        assert response.json()["error"]["field"] == "file"


def test_two_files_make_one_image_and_a_body_that_is_not_multipart_is_a_4xx():
    key = make_key()
    two = post_raw(key, multipart(("file", "a.png", png(10)), ("file", "b.png", png(11))))
    assert two.status_code == 201
    assert Image.objects.count() == 1
    cut = post_raw(key, multipart(("file", "a.png", png(12)))[:-40])
    assert cut.status_code in (400, 422)
    assert "error" in cut.json()


def test_a_claim_abandoned_by_a_dead_worker_is_taken_over_by_the_retry(api):
    headers = {"Idempotency-Key": "died-midway"}
    assert api.submit(png(13), headers=headers).status_code == 201
    # As if the process handling it had been killed before it answered: claimed, never completed.
    unfinished = {"completed_at": None, "status_code": None, "body": None}
    IdempotencyRecord.objects.update(**unfinished, created_at=timezone.now() - timedelta(minutes=1))
    busy = api.submit(png(13), headers=headers)
    assert (busy.status_code, busy.json()["error"]["code"]) == (409, "idempotency_in_progress")

    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(minutes=11))
    retried = api.submit(png(13), headers=headers)  # a 409 'still being handled' forever before
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried
    record = IdempotencyRecord.objects.get()
    assert record.completed_at is not None
    assert record.body == retried.json()
    assert api.submit(png(13), headers=headers)["Idempotent-Replayed"] == "true"
    # Another body with the key is still a mismatch, however old the claim.
    IdempotencyRecord.objects.update(**unfinished, created_at=timezone.now() - timedelta(hours=1))
    assert api.submit(png(14), headers=headers).json()["error"]["code"] == "idempotency_mismatch"


# --- the decisions feed: one image's changes in the order they committed ----------------------


class Caller(Writer):
    """A Writer (tests/test_feed.py) that also runs any callable in its open transaction."""

    def _run(self, command: str, arg: Any) -> Any:
        if command == "call":
            return arg()
        return super()._run(command, arg)


def take_a_transaction_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()::text::bigint")
        return cursor.fetchone()[0]


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_change_from_a_transaction_that_began_first_follows_the_change_it_came_after(
    api, admin_user
):
    made = api.submit(png(15), external_id="raced").json()
    Image.objects.filter(pk=made["id"]).update(status=Image.Status.AWAITING_REVIEW)
    late = Caller()
    late.start()
    try:
        # The late writer takes its transaction id first (as the inbox applier does when it
        # claims its message row) and changes the image only after an admin's decision commits.
        late.do("begin")
        late.do("call", take_a_transaction_id)
        review_services.decide(image_id=made["id"], reviewer=admin_user, verdict="approve")
        late.do(
            "call",
            lambda: review_services.override(
                image_id=made["id"], admin=admin_user, to="rejected", reason="second look"
            ),
        )
        late.do("commit")
    finally:
        late.do("stop")
        late.join(timeout=30)
    wait_until_servable(list(Event.objects.values_list("pk", flat=True)))

    items = api.get("/api/v1/decisions").json()["items"]

    # By transaction id alone the override (older id) came first, and a platform applying the
    # feed in order ended with 'approved' for a rejected image.
    assert [(i["sequence"], i["type"]) for i in items] == [
        (1, "image.approved"),
        (2, "image.overridden"),
    ]
    assert items[-1]["status"] == Image.objects.get(pk=made["id"]).status == "rejected"
