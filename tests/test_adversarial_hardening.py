"""Issue 9, points 4, 5 and 8 replayed from outside, over HTTP, as an attacker or a careless
user would: guessing passwords (on the app's sign-in and the Django admin's), asking for a
password reset nobody configured, sending bodies far larger than any form needs, and looking for
a page without a Content-Security-Policy."""

from __future__ import annotations

import io
import logging
import re
from datetime import timedelta

import pytest
import time_machine
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from moderation.models import AuditEntry, Image, ModerationResult

from .conftest import PASSWORD
from .factories import image_bytes

pytestmark = pytest.mark.django_db

MB = 1024 * 1024
LOGIN_PAGES = ["/accounts/login/", "/admin/login/"]


def sign_in(client: Client, path: str, username: str, password: str, address: str = "127.0.0.1"):
    return client.post(
        path,
        {"username": username, "password": password, "next": "/"},
        REMOTE_ADDR=address,
    )


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def lockouts() -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action="user.locked_out").order_by("id"))


# Point 4: sign-in throttling and lockout.


@pytest.mark.parametrize("path", LOGIN_PAGES)
def test_a_guessed_password_locks_the_account_and_then_the_right_one_is_refused(
    path, admin_user, caplog
):
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    client = Client()
    for _ in range(limit - 1):
        response = sign_in(client, path, "ada", "wrong-guess")
        assert response.status_code == 200  # the form again, with its error
    assert lockouts() == []

    with caplog.at_level(logging.WARNING, logger="moderation.accounts"):
        tripped = sign_in(client, path, "ada", "wrong-guess")
        refused = sign_in(client, path, "ada", PASSWORD)

    for response in (tripped, refused):
        assert response.status_code == 429
        assert b"Sign-in paused" in response.content
        assert b"<code>manage.py axes_reset_username</code> followed by your username" in (
            response.content
        )
        assert b"ada" not in response.content  # never repeated: it would tell accounts apart
    assert not signed_in(client)
    assert client.get(reverse("image_list")).status_code == 302
    # One audit entry for the lockout, with where it came from; a log line for each refusal.
    [entry] = lockouts()
    assert entry.detail == {"username": "ada", "failures": limit}
    assert entry.ip_address == "127.0.0.1"
    assert "sign-in locked out after" in caplog.text
    assert "sign-in refused, locked out: username 'ada' from 127.0.0.1" in caplog.text
    assert PASSWORD not in caplog.text


def test_retrying_while_locked_out_neither_extends_the_lockout_nor_floods_the_audit_log(
    admin_user,
):
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    client = Client()
    for _ in range(limit):
        sign_in(client, "/accounts/login/", "ada", "wrong-guess")
    counted = AccessAttempt.objects.get(username="ada").failures_since_start
    for _ in range(5):
        assert sign_in(client, "/accounts/login/", "ada", "another-guess").status_code == 429
    attempt = AccessAttempt.objects.get(username="ada")
    assert attempt.failures_since_start == counted == limit
    assert len(lockouts()) == 1
    # What axes keeps of each try masks the password.
    assert "password=********************" in attempt.post_data
    assert "guess" not in attempt.post_data


def test_a_password_spray_from_one_address_locks_that_address_only(admin_user, reviewer_user):
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    client = Client()
    for n in range(limit):
        sign_in(client, "/accounts/login/", f"guess-{n}", "Winter2026!", address="203.0.113.7")
    # The right password for a real account, from the spraying address: refused.
    refused = sign_in(client, "/accounts/login/", "ada", PASSWORD, address="203.0.113.7")
    assert refused.status_code == 429
    assert b"manage.py axes_reset_ip 203.0.113.7" in refused.content
    assert not signed_in(client)
    # The same account from elsewhere is not locked: no single name was tried often.
    elsewhere = Client()
    assert (
        sign_in(elsewhere, "/accounts/login/", "ada", PASSWORD, "198.51.100.2").status_code == 302
    )
    assert signed_in(elsewhere)


def test_a_brute_force_of_one_account_from_many_addresses_locks_that_account(
    admin_user, reviewer_user
):
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    for n in range(limit):
        sign_in(Client(), "/admin/login/", "ada", f"guess-{n}", address=f"192.0.2.{n + 1}")
    fresh = Client()
    refused = sign_in(fresh, "/accounts/login/", "ada", PASSWORD, address="192.0.2.200")
    assert refused.status_code == 429
    assert not signed_in(fresh)
    # Another account from a fresh address is unaffected.
    other = Client()
    assert sign_in(other, "/accounts/login/", "rex", PASSWORD, "192.0.2.201").status_code == 302


def test_the_lockout_ends_after_the_cool_off_at_the_time_the_page_names(admin_user):
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    cool_off = getattr(django_settings, "AXES_COOLOFF_TIME", timedelta(minutes=15))
    client = Client()
    start = timezone.now().replace(second=30, microsecond=0) + timedelta(minutes=1)
    with time_machine.travel(start, tick=False):
        for _ in range(limit):
            page = sign_in(client, "/accounts/login/", "ada", "wrong-guess")
    ends = (start + cool_off + timedelta(minutes=1)).replace(second=0)  # rounded up
    assert page.status_code == 429
    assert f'datetime="{ends.isoformat()}"'.encode() in page.content
    with time_machine.travel(start + cool_off - timedelta(seconds=1), tick=False):
        assert sign_in(client, "/accounts/login/", "ada", PASSWORD).status_code == 429
    with time_machine.travel(ends, tick=False):
        assert sign_in(client, "/accounts/login/", "ada", PASSWORD).status_code == 302
    assert signed_in(client)


def test_a_successful_sign_in_clears_the_failures_counted_so_far(admin_user):
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    client = Client()
    from axes.models import AccessAttempt

    for _ in range(limit - 1):
        sign_in(client, "/accounts/login/", "ada", "wrong-guess")
    assert AccessAttempt.objects.get(username="ada").failures_since_start == limit - 1
    assert sign_in(client, "/accounts/login/", "ada", PASSWORD).status_code == 302
    assert not AccessAttempt.objects.exists()
    client.post(reverse("logout"))
    for _ in range(limit - 1):
        assert sign_in(client, "/accounts/login/", "ada", "wrong-guess").status_code == 200
    assert sign_in(client, "/accounts/login/", "ada", PASSWORD).status_code == 302
    assert lockouts() == []


def test_signing_in_to_ones_own_account_between_guesses_does_not_clear_them(
    admin_user, reviewer_user
):
    """An insider (rex) guesses ada's password from their desk and signs in as themselves now
    and then, hoping each success wipes the count."""
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    client = Client()
    for n in range(limit - 1):
        assert sign_in(client, "/accounts/login/", "ada", f"guess-{n}").status_code == 200
        assert sign_in(client, "/accounts/login/", "rex", PASSWORD).status_code == 302
        client.post(reverse("logout"))
    tripped = sign_in(client, "/accounts/login/", "ada", "one-more-guess")
    assert tripped.status_code == 429
    assert sign_in(Client(), "/accounts/login/", "ada", PASSWORD, "192.0.2.50").status_code == 429


@pytest.mark.parametrize(
    "username", ["a" * 300, "ädä \u202e", "ada\n2026-12-01 INFO forged log line"]
)
def test_odd_usernames_are_refused_plainly_and_counted_without_error(username, admin_user):
    client = Client()
    response = sign_in(client, "/accounts/login/", username, "guess", address="192.0.2.77")
    assert response.status_code == 200
    assert not signed_in(client)
    # Whatever the name, the address is counted.
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    for _ in range(limit):
        response = sign_in(client, "/accounts/login/", username, "guess", address="192.0.2.77")
    assert response.status_code == 429


def test_an_admin_lifts_a_lockout_with_axes_reset_username(admin_user):
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    for n in range(limit):
        sign_in(Client(), "/accounts/login/", "ada", "wrong-guess", address=f"192.0.2.{n + 1}")
    assert sign_in(Client(), "/accounts/login/", "ada", PASSWORD, "192.0.2.99").status_code == 429
    call_command("axes_reset_username", "ada", stdout=io.StringIO())
    client = Client()
    assert sign_in(client, "/accounts/login/", "ada", PASSWORD, "192.0.2.99").status_code == 302


@pytest.mark.parametrize(
    "path",
    [
        "/accounts/password_reset/",
        "/accounts/password_reset/done/",
        "/accounts/reset/MQ/set-password/",
        "/accounts/reset/MQ/abc-0123456789abcdef/",
        "/accounts/reset/done/",
    ],
)
def test_the_password_reset_pages_nobody_configured_do_not_exist(path, admin_user):
    assert Client().get(path).status_code == 404
    response = Client().post(path, {"email": "ada@example.com"})
    assert response.status_code == 404  # no such page, so CSRF never even runs: no mail sent


# Point 5: request bodies refused by their declared size, before anything reads them.


class UnreadableInput:
    """A WSGI input that fails the test if anything reads it."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, *args: object) -> bytes:
        self.reads += 1
        raise AssertionError("the request body was read")

    readline = read


def post_unread(client: Client, path: str, length: str, **headers: str):
    body = UnreadableInput()
    # Client.generic sets the length and type only for a body it has; these stand in for one.
    environ = {
        "wsgi.input": body,
        "CONTENT_LENGTH": length,
        "CONTENT_TYPE": "multipart/form-data; boundary=xyz",
    }
    response = client.generic("POST", path, b"", **environ, **headers)
    return response, body


@pytest.mark.parametrize("path", ["/imm/notifications/", "/accounts/login/"])
def test_a_60_mb_body_from_an_anonymous_client_is_refused_without_being_read(path):
    response, body = post_unread(Client(), path, str(60 * MB))
    assert response.status_code == 413
    assert body.reads == 0
    if path == "/imm/notifications/":
        assert response["Content-Type"] == "application/json"
        assert "larger than the 1024 KB" in response.json()["error"]
    else:
        assert response["Content-Type"].startswith("text/plain")
        assert b"larger than the 1024 KB accepted here" in response.content
    assert not ModerationResult.objects.exists()
    assert not AuditEntry.objects.exists()


def test_a_reviewer_cannot_send_a_large_body_either(reviewer_client):
    response, body = post_unread(reviewer_client, reverse("upload"), str(5 * MB))
    assert response.status_code == 413
    assert body.reads == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"HTTP_TRANSFER_ENCODING": "chunked"}, 411),
        ({"CONTENT_LENGTH": "sixty megabytes"}, 400),
        ({"CONTENT_LENGTH": "-1"}, 400),
    ],
)
def test_a_body_of_undeclared_size_is_refused_without_being_read(headers, status):
    body = UnreadableInput()
    environ = {"wsgi.input": body, "CONTENT_TYPE": "application/x-www-form-urlencoded"}
    response = Client().generic("POST", "/accounts/login/", b"", **{**environ, **headers})
    assert response.status_code == status
    assert body.reads == 0


def test_an_upload_over_the_request_total_is_refused_and_stores_nothing(admin_client, settings):
    settings.UPLOAD_MAX_REQUEST_MB = 1
    files = [
        SimpleUploadedFile("small.png", image_bytes(), content_type="image/png"),
        SimpleUploadedFile(
            "big.jpg", b"\xff\xd8\xff" + b"x" * (MB + 10), content_type="image/jpeg"
        ),
    ]
    response = admin_client.post(reverse("upload"), {"files": files})
    assert response.status_code == 413
    assert b"larger than the 1 MB one upload may be" in response.content
    assert not Image.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="image.").exists()


# Point 8: a Content-Security-Policy on every page, the lockout and error pages included.


def test_no_page_goes_out_without_the_content_security_policy(admin_user, make_image):
    image = make_image()
    client = Client()
    anonymous = [client.get("/accounts/login/"), client.get("/no-such-page/")]
    for _ in range(getattr(django_settings, "AXES_FAILURE_LIMIT", 10)):
        locked = sign_in(Client(), "/accounts/login/", "ada", "wrong-guess")
    admin = Client()
    admin.force_login(admin_user)
    pages = [
        admin.get(reverse("image_list")),
        admin.get(reverse("image_detail", args=[image.pk])),
        admin.get("/admin/moderation/image/"),
    ]
    for response in [*anonymous, locked, *pages]:
        policy = response["Content-Security-Policy"]
        assert "script-src 'self'" in policy
        assert "style-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        assert "unsafe-eval" not in policy
        assert b"{#" not in response.content  # no template comment leaks into a page


def test_a_password_typed_as_the_username_is_kept_out_of_every_record(admin_user, caplog):
    secret = "Tr0ub4dor&3-typed-in-the-wrong-field"
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    client = Client()
    with caplog.at_level("INFO"):
        for _ in range(limit + 1):
            response = sign_in(client, "/accounts/login/", secret, "guess", address="192.0.2.80")

    assert response.status_code == 429
    assert secret not in response.content.decode()
    assert "for that username" in response.content.decode()
    stored = list(AccessAttempt.objects.values_list("username", flat=True))
    assert stored
    assert all(name.startswith("unknown:") for name in stored)
    assert not any(secret in str(entry.detail) for entry in AuditEntry.objects.all())
    assert secret not in caplog.text
    # A name that is an account is still counted and shown as typed, for axes_reset_username.
    for _ in range(limit):
        sign_in(Client(), "/accounts/login/", "ada", "wrong", address="192.0.2.81")
    assert AccessAttempt.objects.filter(username="ada").exists()


def test_guessing_the_old_password_of_a_signed_in_session_is_throttled_too(admin_user):
    # A session left signed in: the password change page must not be an unthrottled oracle.
    client = Client()
    client.force_login(admin_user)
    url = reverse("password_change")
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    new = {"new_password1": "a quieter horse, stapled", "new_password2": "a quieter horse, stapled"}
    for n in range(limit - 1):
        response = client.post(url, {"old_password": f"guess-{n}", **new}, REMOTE_ADDR="192.0.2.90")
        assert response.status_code == 200
        assert b"Your old password was entered incorrectly" in response.content
    last = client.post(url, {"old_password": "guess-last", **new}, REMOTE_ADDR="192.0.2.90")
    assert last.status_code == 429  # the guess that reaches the limit gets the lockout page

    right = client.post(url, {"old_password": PASSWORD, **new}, REMOTE_ADDR="192.0.2.90")

    assert right.status_code == 429
    admin_user.refresh_from_db()
    assert admin_user.check_password(PASSWORD)
    assert AccessAttempt.objects.get(username="ada").failures_since_start == limit


def test_the_admins_password_change_is_the_throttled_one(admin_client):
    response = admin_client.get("/admin/password_change/")
    assert response.status_code == 302
    assert response["Location"] == reverse("password_change")


def test_the_lockout_page_does_not_tell_an_account_from_a_name_that_is_none(admin_user):
    limit = getattr(django_settings, "AXES_FAILURE_LIMIT", 10)
    pages = []
    for n, name in enumerate(["ada", "nobody-by-this-name"]):
        for m in range(limit):
            # A fresh address per try: only the username count locks.
            response = sign_in(Client(), "/accounts/login/", name, "x", address=f"198.51.{n}.{m}")
        assert response.status_code == 429
        page = re.sub(r"<time[^>]*>.*?</time>", "", response.content.decode())
        pages.append(
            re.sub(r'CSRFToken": "[^"]*"|name="csrfmiddlewaretoken" value="[^"]*"', "", page)
        )
    assert pages[0].replace("198.51.0.", "") == pages[1].replace("198.51.1.", "")
