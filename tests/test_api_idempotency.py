"""Idempotency-Key on POST /api/v1/images: a retry gets the first answer, a different body a
409, and two requests at once with one key are settled by the database."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from moderation import intake
from moderation.api.models import ApiSubmission, IdempotencyRecord
from moderation.models import AuditEntry, Image

from .api_helpers import ApiCaller, make_key, png
from .conftest import postgres_only


@pytest.mark.django_db
def test_a_retry_with_the_same_key_and_body_gets_the_first_answer(api):
    headers = {"Idempotency-Key": "order-77"}
    first = api.submit(png(1), external_id="p77", metadata='{"a":1}', headers=headers)
    assert first.status_code == 201
    again = api.submit(png(1), external_id="p77", metadata='{"a": 1}', headers=headers)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Image.objects.count() == 1
    assert ApiSubmission.objects.count() == 1  # no second submission, no 409 on external_id
    assert AuditEntry.objects.filter(action__startswith="image.").count() == 1


@pytest.mark.django_db
def test_a_refusal_is_replayed_too(api):
    headers = {"Idempotency-Key": "bad-1"}
    first = api.submit(b"GIF89a", name="x.gif", headers=headers)
    assert first.status_code == 422
    again = api.submit(b"GIF89a", name="x.gif", headers=headers)
    assert (again.status_code, again.json()) == (422, first.json())
    assert AuditEntry.objects.filter(action="image.refused").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [
        {"data": png(2)},
        {"external_id": "other"},
        {"metadata": '{"a": 2}'},
        {"name": "renamed.png"},
    ],
)
def test_the_same_key_with_a_different_body_is_a_409(api, change):
    headers = {"Idempotency-Key": "k-1"}
    assert (
        api.submit(png(1), external_id="e", metadata='{"a": 1}', headers=headers).status_code == 201
    )
    fields = {"data": png(1), "external_id": "e", "metadata": '{"a": 1}', "name": "photo.png"}
    fields.update(change)
    data = fields.pop("data")
    response = api.submit(data, headers=headers, **fields)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_mismatch"
    assert Image.objects.count() == 1


@pytest.mark.django_db
def test_keys_are_per_client(api, api_for):
    headers = {"Idempotency-Key": "shared-name"}
    assert api.submit(png(1), headers=headers).status_code == 201
    other = api_for("other").submit(png(3), headers=headers)
    assert other.status_code == 201
    assert other.get("Idempotent-Replayed") is None
    assert Image.objects.count() == 2


@pytest.mark.django_db
def test_a_failure_on_our_side_frees_the_key_for_a_retry(api, monkeypatch):
    real = intake.inspect
    monkeypatch.setattr(intake, "inspect", lambda fp: (_ for _ in ()).throw(OSError("disk")))
    headers = {"Idempotency-Key": "flaky"}
    assert api.submit(png(1), headers=headers).status_code == 500
    assert not IdempotencyRecord.objects.exists()
    monkeypatch.setattr(intake, "inspect", real)
    assert api.submit(png(1), headers=headers).status_code == 201


@pytest.mark.django_db
def test_an_overlong_idempotency_key_is_refused(api):
    response = api.submit(png(1), headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Idempotency-Key"


def _in_thread(target) -> threading.Thread:
    def run() -> None:
        try:
            target()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_retry_while_the_first_is_still_running_is_told_so(monkeypatch):
    key = make_key()
    real = intake.inspect
    inside, release = threading.Event(), threading.Event()

    def slow(fp):
        inside.set()
        assert release.wait(30)
        return real(fp)

    monkeypatch.setattr(intake, "inspect", slow)
    headers = {"Idempotency-Key": "slow-1"}
    answers = {}
    first = _in_thread(
        lambda: answers.setdefault("first", ApiCaller(key).submit(png(1), headers=headers))
    )
    assert inside.wait(30)
    second = _in_thread(
        lambda: answers.setdefault("second", ApiCaller(key).submit(png(1), headers=headers))
    )
    second.join(30)
    release.set()
    first.join(30)
    assert answers["second"].status_code == 409
    assert answers["second"].json()["error"]["code"] == "idempotency_in_progress"
    assert answers["first"].status_code == 201
    replay = ApiCaller(key).submit(png(1), headers=headers)
    assert (replay.status_code, replay.json()) == (201, answers["first"].json())
    assert Image.objects.count() == 1
    assert ApiSubmission.objects.count() == 1


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_eight_requests_at_once_with_one_key_make_one_submission():
    key = make_key()
    together = threading.Barrier(8, timeout=30)
    answers = []
    lock = threading.Lock()

    def send() -> None:
        caller = ApiCaller(key)
        together.wait()
        response = caller.submit(png(5), external_id="once", headers={"Idempotency-Key": "burst"})
        with lock:
            answers.append(response)

    threads = [_in_thread(send) for _ in range(8)]
    for thread in threads:
        thread.join(60)
    assert len(answers) == 8
    created = [a for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code == 409]
    assert len(created) + len(refused) == 8
    assert created  # the one that won, and any that came after it finished and got its answer
    assert len({a.json()["id"] for a in created}) == 1
    assert all(a.json()["error"]["code"] == "idempotency_in_progress" for a in refused)
    assert Image.objects.count() == 1
    assert ApiSubmission.objects.count() == 1
    assert AuditEntry.objects.filter(action__startswith="image.").count() == 1
