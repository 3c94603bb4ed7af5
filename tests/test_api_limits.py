"""The API's limits and errors: the per-client rate (429 with Retry-After), request bodies by
declared size before they are read (413), and one JSON shape for every error."""

from __future__ import annotations

import pytest
from django.test import Client

from moderation.api.models import ApiRateLimit
from moderation.models import Image

from .api_helpers import ApiCaller, png
from .test_adversarial_hardening import MB, post_unread

pytestmark = pytest.mark.django_db


def in_one_window(attempt) -> None:
    """Run `attempt` until it ran within one minute of the database's clock: the count starts
    again with each minute, so a run that crossed into the next one proves nothing. Twice at
    most: no run takes a minute."""
    for _ in range(2):
        ApiRateLimit.objects.all().delete()
        windows: set[int] = set()
        result = attempt(
            lambda seen=windows: seen.update(
                ApiRateLimit.objects.values_list("window_start", flat=True)
            )
        )
        if len(windows) <= 1:
            return result
    raise AssertionError("two runs in a row crossed a minute")


def test_a_client_over_its_rate_gets_429_with_retry_after(api, api_for, settings):
    settings.API_RATE_LIMIT = 3

    def attempt(note):
        answers = []
        for _ in range(4):
            answers.append(api.get("/api/v1/images?external_id=x"))
            note()
        submitted = api.submit(png())
        note()
        return answers, submitted

    answers, submitted = in_one_window(attempt)
    assert [a.status_code for a in answers[:3]] == [404, 404, 404]
    over = answers[3]
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(over["Retry-After"]) <= 60
    assert submitted.status_code == 429  # every call counts, submissions too
    assert not Image.objects.exists()
    # Another client has its own count.
    assert api_for("other").get("/api/v1/images?external_id=x").status_code == 404


def test_the_count_starts_again_with_the_next_minute(api, settings):
    settings.API_RATE_LIMIT = 1

    def attempt(note):
        first = api.get("/api/v1/images?external_id=x").status_code
        note()
        second = api.get("/api/v1/images?external_id=x").status_code
        note()
        return first, second

    assert in_one_window(attempt) == (404, 429)
    ApiRateLimit.objects.update(window_start=0)  # as if that minute had passed
    assert api.get("/api/v1/images?external_id=x").status_code == 404
    assert ApiRateLimit.objects.get().count == 1


def test_no_limit_when_the_setting_is_zero(api, settings):
    settings.API_RATE_LIMIT = 0
    for _ in range(5):
        assert api.get("/api/v1/images?external_id=x").status_code == 404
    assert not ApiRateLimit.objects.exists()


def test_an_unknown_key_is_not_counted(settings):
    settings.API_RATE_LIMIT = 1
    for _ in range(3):
        response = ApiCaller("mk_00000000_" + "A" * 43).get("/api/v1/images?external_id=x")
        assert response.status_code == 401
    assert not ApiRateLimit.objects.exists()


# Bodies: a key holding submit gets the upload limit, anyone else the small one, all unread.


def test_a_body_over_the_upload_limit_is_refused_unread_in_the_api_shape(api, settings):
    settings.UPLOAD_MAX_REQUEST_MB = 5
    response, body = post_unread(
        Client(), "/api/v1/images", str(6 * MB), HTTP_AUTHORIZATION=f"Bearer {api.key}"
    )
    assert response.status_code == 413
    assert body.reads == 0
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "too_large"
    assert "larger than the 5 MB" in error["message"]


def test_a_key_with_submit_may_send_more_than_the_small_limit(api, settings):
    settings.REQUEST_MAX_KB = 64
    big = png(1, size=(600, 600))  # a PNG of noise-free colour compresses; pad with metadata
    response = api.submit(big, metadata='{"pad": "' + "p" * 3000 + '"}', name="big.png")
    assert response.status_code == 201
    settings.REQUEST_MAX_KB = 1
    assert api.submit(png(2)).status_code == 201


@pytest.mark.parametrize("scopes", [None, ("read",)])
def test_without_a_submit_key_the_small_limit_holds_unread(api_for, scopes):
    headers = {}
    if scopes:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {api_for('reader', scopes).key}"
    response, body = post_unread(Client(), "/api/v1/images", str(2 * MB), **headers)
    assert response.status_code == 413
    assert body.reads == 0
    assert "larger than the 1024 KB" in response.json()["error"]["message"]


def test_a_revoked_submit_key_gets_the_small_limit(api, admin_user):
    from moderation.api import keys
    from moderation.api.models import ApiKey

    keys.revoke_key(key_id=ApiKey.objects.get().pk, revoked_by=admin_user)
    response, body = post_unread(
        Client(), "/api/v1/images", str(2 * MB), HTTP_AUTHORIZATION=f"Bearer {api.key}"
    )
    assert response.status_code == 413
    assert body.reads == 0


def test_a_body_of_undeclared_size_gets_411_in_the_api_shape(api):
    response, body = post_unread(
        Client(),
        "/api/v1/images",
        "",
        HTTP_TRANSFER_ENCODING="chunked",
        HTTP_AUTHORIZATION=f"Bearer {api.key}",
    )
    assert response.status_code == 411
    assert body.reads == 0
    assert response.json()["error"]["code"] == "length_required"


# One shape for every error.


def assert_error_shape(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message"} <= set(body["error"]) <= {"code", "message", "field", "rule"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def test_every_error_has_the_one_shape(api, api_for):
    assert_error_shape(Client().get("/api/v1/images/1"), 401, "unauthorized")
    assert_error_shape(api_for("r", ("read",)).submit(png()), 403, "forbidden")
    assert_error_shape(api.get("/api/v1/images/999"), 404, "not_found")
    assert_error_shape(api.get("/api/v1/no-such-thing"), 404, "not_found")
    assert_error_shape(api.get("/api/v2/images"), 404, "not_found")
    deleted = api.client.delete("/api/v1/images/1", headers=api.headers())
    error = assert_error_shape(deleted, 405, "method_not_allowed")
    assert deleted["Allow"] == "GET"
    assert "GET" in error["message"]
    assert_error_shape(api.get("/api/v1/images/not-a-number"), 404, "not_found")
    assert_error_shape(api.get("/api/v1/images"), 422, "invalid")
    assert_error_shape(api.get("/api/v1/images?external_id=a%00b"), 400, "bad_request")
    assert_error_shape(api.submit(b"nope"), 422, "refused")
    nul = api.submit(png(), external_id="a\x00b")
    assert_error_shape(nul, 400, "bad_request")
    broken = api.client.post(
        "/api/v1/images",
        data=b"--x\r\nbroken",
        content_type="multipart/form-data",
        headers=api.headers(),
    )
    assert_error_shape(broken, 400, "bad_request")
    as_json = api.client.post(
        "/api/v1/images", data=b"{}", content_type="application/json", headers=api.headers()
    )
    assert_error_shape(as_json, 422, "invalid")
    big_id = api.get(f"/api/v1/images/{2**70}")
    assert big_id.status_code in (404, 422)
    assert_error_shape(big_id, big_id.status_code, big_id.json()["error"]["code"])


def test_a_form_field_over_djangos_memory_limit_is_a_413_in_the_api_shape(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = api.submit(png(), metadata='{"a": "' + "x" * 20_000 + '"}')
    error = assert_error_shape(response, 413, "too_large")
    assert "form field" in error["message"]
    assert not Image.objects.exists()
