"""The API's pages in Chromium: the docs (Swagger UI from our own static files) and the keys
page, under the site's Content-Security-Policy with no complaint; a key made, copied from the
page once, revoked.

README screenshots: `SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_api_browser.py -k
screenshots` writes docs/api-keys.png and docs/api-docs.png (nothing is written otherwise)."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from moderation.api import keys
from moderation.api.models import ApiKey

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS, VIEWPORT
from .conftest import PASSWORD
from .test_headers import about_the_policy

KEY = re.compile(r"^mk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$")


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
    page = context.new_page()
    complaints: list[str] = []
    page.on("console", lambda m: complaints.append(m.text) if about_the_policy(m) else None)
    page.on("pageerror", lambda error: complaints.append(str(error)))
    page.complaints = complaints  # type: ignore[attr-defined]
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.requested = requested  # type: ignore[attr-defined]
    yield page
    context.close()


def sign_in(page, username: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


@pytest.mark.django_db(transaction=True)
def test_the_docs_render_from_local_files_under_the_policy(page, live_server):
    response = page.goto("/api/v1/docs", wait_until="networkidle")
    assert response is not None
    assert response.ok
    assert "content-security-policy" in response.headers
    expect(page.get_by_text("IMM moderation API").first).to_be_visible()
    expect(page.get_by_text("/api/v1/images/{image_id}").first).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Authorize"))).to_be_visible()
    assert page.complaints == []  # type: ignore[attr-defined]
    # Nothing from a CDN: every request went to this server.
    assert all(url.startswith(live_server.url) for url in page.requested)  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_an_admin_makes_a_key_sees_it_once_and_revokes_it(page, admin_user):
    sign_in(page, "ada")
    page.locator("nav summary", has_text="Platform").click()
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    page.get_by_label("Client").fill("shop-backend")
    page.get_by_role("button", name="Make key").click()
    expect(page.get_by_role("heading", name="New key for shop-backend")).to_be_visible()
    key = page.get_by_label("Key").input_value()
    assert KEY.match(key)
    assert ApiKey.objects.get().key_hash == keys.digest(key)
    page.get_by_role("link", name="Back to API keys").click()
    expect(page.get_by_text(key)).to_have_count(0)
    page.get_by_role("button", name=re.compile("^Revoke")).click()
    expect(page.get_by_text(re.compile("revoked: it now gets 401"))).to_be_visible()
    assert ApiKey.objects.get().revoked_at is not None
    assert page.complaints == []  # type: ignore[attr-defined]


@pytest.mark.skipif(
    os.environ.get("SCREENSHOTS") != "1", reason="writes docs/*.png only with SCREENSHOTS=1"
)
@pytest.mark.django_db(transaction=True)
def test_readme_screenshots(page, admin_user):
    from .api_helpers import ApiCaller, png

    shop = keys.create_key(client_name="shop-backend", scopes=["submit", "read"], created_by=None)
    ApiCaller(shop.key).submit(png(1), external_id="post-1")
    keys.create_key(client_name="forum", scopes=["read"], created_by=None)
    old = keys.create_key(client_name="shop-backend", scopes=["submit"], created_by=None)
    keys.revoke_key(key_id=old.record.pk, revoked_by=admin_user)
    sign_in(page, "ada")
    page.goto("/api-keys/")
    expect(page.get_by_role("heading", name="Clients and keys")).to_be_visible()
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=DOCS / "api-keys.png", full_page=True)
    page.goto("/api/v1/docs", wait_until="networkidle")
    expect(page.get_by_text("Submit an image")).to_be_visible()
    page.screenshot(path=DOCS / "api-docs.png")
