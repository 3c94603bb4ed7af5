"""Who may call the API: bearer keys (401), scopes (403), revoked keys, sessions and CSRF, the
service user, last-used times, and keys never in a log."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import time_machine
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from moderation.api import keys
from moderation.api.models import ApiClient, ApiKey
from moderation.models import Image
from moderation.roles import ADMINS, REVIEWERS

from .api_helpers import png

pytestmark = pytest.mark.django_db


def error_of(response) -> dict:
    assert response["Content-Type"] == "application/json"
    return response.json()["error"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer ",
        "Bearer mk_00000000_" + "A" * 43,  # well formed, no such key
        "Bearer not-a-key",
        "Basic dXNlcjpwYXNz",
        "Token {key}",  # the right key, the wrong scheme
    ],
)
def test_no_key_a_wrong_key_or_scheme_gets_401(api, header):
    headers = {"Authorization": header.format(key=api.key)} if header else {}
    response = Client().get("/api/v1/images/1", headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_key_gets_401(api, admin_user):
    record = ApiKey.objects.get()
    assert api.get("/api/v1/images?external_id=x").status_code == 404
    keys.revoke_key(key_id=record.pk, revoked_by=admin_user)
    assert api.get("/api/v1/images?external_id=x").status_code == 401
    assert api.submit(png()).status_code == 401
    assert not Image.objects.exists()


def test_a_key_without_the_scope_gets_403(api_for):
    reader = api_for("reader", ("read",))
    response = reader.submit(png())
    assert response.status_code == 403
    assert "'submit' scope" in error_of(response)["message"]
    assert not Image.objects.exists()
    submitter = api_for("submitter", ("submit",))
    assert submitter.submit(png(2)).status_code == 201
    response = submitter.get("/api/v1/images?external_id=x")
    assert response.status_code == 403
    assert "'read' scope" in error_of(response)["message"]


def test_a_signed_in_session_is_not_a_key(admin_client):
    # An admin's browser cookie gets nothing from the API: no CSRF to forge, it fails closed.
    response = admin_client.post("/api/v1/images", {"file": SimpleUploadedFile("a.png", png())})
    assert response.status_code == 401
    assert admin_client.get("/api/v1/images?external_id=x").status_code == 401
    assert not Image.objects.exists()


def test_a_bearer_call_needs_no_csrf_token(api):
    api.client = Client(enforce_csrf_checks=True)
    assert api.submit(png()).status_code == 201


def test_the_service_user_cannot_sign_in_or_review(api):
    user = ApiClient.objects.get().user
    assert user.get_username() == "api:shop"
    assert not user.has_usable_password()
    assert not user.is_active
    assert not user.groups.filter(name__in=[ADMINS, REVIEWERS]).exists()
    assert not user.has_perm("moderation.review_image")
    client = Client()
    for password in ["", "!", user.password]:
        client.post("/accounts/login/", {"username": "api:shop", "password": password})
        assert "_auth_user_id" not in client.session


def test_only_the_hash_of_a_key_is_stored(api):
    record = ApiKey.objects.get()
    assert keys.KEY_PATTERN.match(api.key)
    assert api.key.startswith(f"mk_{record.prefix}_")
    assert record.key_hash == keys.digest(api.key)
    assert api.key not in str(list(ApiKey.objects.values()))


def test_last_used_is_written_at_most_once_a_minute(api):
    record = ApiKey.objects.get()
    assert record.last_used_at is None
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        api.get("/api/v1/images?external_id=x")
    record.refresh_from_db()
    assert record.last_used_at == start
    with time_machine.travel(start + timedelta(seconds=30), tick=False):
        api.get("/api/v1/images?external_id=x")
    record.refresh_from_db()
    assert record.last_used_at == start
    later = start + timedelta(seconds=61)
    with time_machine.travel(later, tick=False):
        api.get("/api/v1/images?external_id=x")
    record.refresh_from_db()
    assert record.last_used_at == later


def test_the_key_is_in_no_log_record_even_when_a_request_fails(api, caplog, monkeypatch):
    from moderation import intake

    def broken(fp):
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(intake, "inspect", broken)
    caplog.set_level(logging.DEBUG)
    failed = api.submit(png(), external_id="boom")
    assert failed.status_code == 500
    assert error_of(failed) == {
        "code": "internal",
        "message": "Something went wrong on our side; try again.",
    }
    # And the other ways a key can be wrong, under DEBUG, where ninja itself would log it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("django.conf.settings.DEBUG", True)
        Client().get("/api/v1/images/1", headers={"Authorization": f"Token {api.key}"})
        Client().get("/api/v1/images/1", headers={"Authorization": f"Bearer {api.key}x"})
    assert any(r.exc_info for r in caplog.records)  # the failure was logged, with its traceback
    secret = api.key.split("_", 2)[2]  # mk_<prefix>_<secret>: the secret may hold "_" itself
    for record in caplog.records:
        text = record.getMessage() + (caplog.text or "")
        assert secret not in text
        assert secret not in repr(record.__dict__)
