"""The API keys page (admins only) and manage.py create_api_key: a key shown once, revoking
(a POST, audited) that turns the key away, and the key alone on the command's last line."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from moderation.api import keys
from moderation.api.models import ApiClient, ApiKey
from moderation.models import AuditEntry

from .api_helpers import ApiCaller

pytestmark = pytest.mark.django_db

KEY = re.compile(r"mk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")


def test_the_keys_page_is_for_admins_only(reviewer_client):
    assert reviewer_client.get("/api-keys/").status_code == 403
    assert (
        reviewer_client.post("/api-keys/", {"client": "x", "scopes": ["read"]}).status_code == 403
    )
    anonymous = Client().get("/api-keys/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/")
    assert not ApiClient.objects.exists()


def test_the_nav_links_the_page_for_admins_only(admin_client, reviewer_client):
    assert 'href="/api-keys/"' in admin_client.get("/images/").content.decode()
    assert 'href="/api-keys/"' not in reviewer_client.get("/reviews/").content.decode()


def test_an_admin_makes_a_key_and_sees_it_once(admin_client, admin_user):
    response = admin_client.post("/api-keys/", {"client": "shop", "scopes": ["submit", "read"]})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    [key] = KEY.findall(page)
    record = ApiKey.objects.get()
    assert record.key_hash == keys.digest(key)
    assert record.scopes == ["read", "submit"]
    assert record.client.created_by == admin_user
    # Usable at once; never shown again, on the list or anywhere.
    assert ApiCaller(key).get("/api/v1/images?external_id=x").status_code == 404
    listing = admin_client.get("/api-keys/").content.decode()
    assert "shop" in listing
    assert f"mk_{record.prefix}_" in listing
    assert key not in listing
    assert key.split("_", 2)[2] not in listing  # the secret (it may hold "_" itself)
    actions = list(AuditEntry.objects.order_by("id").values_list("action", "actor_label"))
    assert actions[-2:] == [("api.client_created", "ada"), ("api.key_created", "ada")]
    assert key not in str(list(AuditEntry.objects.values("content", "detail")))


def test_the_list_shows_scopes_last_use_and_revocation(admin_client):
    made = keys.create_key(client_name="forum", scopes=["read"], created_by=None)
    ApiCaller(made.key).get("/api/v1/images?external_id=x")
    page = admin_client.get("/api-keys/").content.decode()
    assert "forum" in page
    assert made.record.display in page
    assert '<td class="muted">never</td>' not in page  # it was used just now
    assert "live" in page


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"client": "bad name!", "scopes": ["read"]}, "letters, digits"),
        ({"client": "shop", "scopes": []}, "at least one scope"),
        ({"client": "shop", "scopes": ["admin"]}, "unknown scope"),
    ],
)
def test_a_bad_request_for_a_key_says_why_and_makes_nothing(admin_client, data, message):
    response = admin_client.post("/api-keys/", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not ApiKey.objects.exists()


def test_revoking_a_key_turns_it_away_and_is_audited(admin_client):
    made = keys.create_key(client_name="shop", scopes=["read"], created_by=None)
    caller = ApiCaller(made.key)
    assert caller.get("/api/v1/images?external_id=x").status_code == 404
    response = admin_client.post(f"/api-keys/{made.record.pk}/revoke")
    assert response.status_code == 302
    made.record.refresh_from_db()
    assert made.record.revoked_at is not None
    assert caller.get("/api/v1/images?external_id=x").status_code == 401
    entry = AuditEntry.objects.get(action="api.key_revoked")
    assert entry.actor_label == "ada"
    assert entry.detail == {"client": "shop", "prefix": made.record.prefix}
    page = admin_client.get("/api-keys/").content.decode()
    assert "revoked" in page
    # Twice is harmless: nothing changes, nothing more is audited.
    admin_client.post(f"/api-keys/{made.record.pk}/revoke")
    assert AuditEntry.objects.filter(action="api.key_revoked").count() == 1


def test_revoking_is_a_post_only(admin_client):
    made = keys.create_key(client_name="shop", scopes=["read"], created_by=None)
    assert admin_client.get(f"/api-keys/{made.record.pk}/revoke").status_code == 405
    made.record.refresh_from_db()
    assert made.record.revoked_at is None


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_command_prints_the_key_alone_on_its_last_line():
    out, err = run("shop", "--scopes", "submit,read")
    last = out.rstrip("\n").splitlines()[-1]
    assert KEY.fullmatch(last)
    record = ApiKey.objects.get()
    assert record.key_hash == keys.digest(last)
    assert record.scopes == ["read", "submit"]
    assert "new client shop" in err
    assert last not in err
    # A second key for the same client.
    out2, err2 = run("shop", "--scopes", "read")
    assert KEY.fullmatch(out2.strip())
    assert ApiClient.objects.count() == 1
    assert ApiKey.objects.count() == 2
    assert "new client" not in err2
    assert ApiCaller(out2.strip()).submit(b"x").status_code == 403


@pytest.mark.parametrize("scopes", ["", "write", "read,admin"])
def test_the_command_refuses_unknown_scopes(scopes):
    with pytest.raises(CommandError, match="scopes must be"):
        run("shop", "--scopes", scopes)
    assert not ApiKey.objects.exists()
