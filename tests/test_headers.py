"""Security headers: the Content-Security-Policy (in Chromium, page by page, as each role sees
them), HSTS and the HTTPS redirect, and `manage.py check --deploy` with production settings."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from playwright.sync_api import ConsoleMessage, Page, expect

from moderation.models import Image
from reviews.models import Claim

from .browser import VIEWPORT, _orm_beside_playwright, browser  # noqa: F401 - fixtures
from .browser import pytestmark as in_chromium
from .conftest import PASSWORD

ROOT = Path(__file__).resolve().parent.parent

# What README "Deploying" gives as the production environment (besides the database and IMM).
PRODUCTION = {
    "DEBUG": "0",
    "ALLOWED_HOSTS": "moderation.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://moderation.example.com",
    "BEHIND_TLS_PROXY": "1",
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
}


def test_check_deploy_is_clean_with_the_production_settings(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "moderation.settings",
        "SECRET_KEY": secrets.token_urlsafe(64),
        **PRODUCTION,
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


@pytest.mark.django_db
def test_production_redirects_plain_http_to_https_but_not_the_health_check(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    client = Client()
    plain = client.get("/accounts/login/")
    assert plain.status_code == 301
    assert plain["Location"] == "https://testserver/accounts/login/"
    assert client.get("/healthz").status_code == 200  # load balancers probe over HTTP
    secure = client.get("/accounts/login/", secure=True)
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"


TEMPLATES = ROOT / "templates"
# What a Content-Security-Policy without 'unsafe-inline' refuses: inline event handlers, style
# attributes, <script> without src, <style> blocks, javascript: URLs.
INLINE = re.compile(
    r"""\son[a-z]+\s*=|\sstyle\s*=|<script(?![^>]*\bsrc=)[^>]*>|<style[\s>]|javascript:""", re.I
)


def test_no_template_holds_inline_script_or_style():
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
        for path in sorted(TEMPLATES.rglob("*.html"))
        for match in INLINE.finditer(path.read_text())
    ]
    assert found == []


# In Chromium: every page, as the role that uses it, with no Content-Security-Policy complaint.


def about_the_policy(message: ConsoleMessage) -> bool:
    return "content security policy" in message.text.lower() or "content-security-policy" in (
        message.text.lower()
    )


@pytest.fixture
def visit(browser, live_server):  # noqa: F811 - the fixture imported above
    """Opens pages in one browser context at a time; collects every console message and page
    error about the Content-Security-Policy, and every page answered without the header."""
    contexts = []
    complaints: list[str] = []

    def open_as(username: str | None) -> Page:
        context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
        contexts.append(context)
        page = context.new_page()
        page.on(
            "console",
            lambda m: complaints.append(f"{page.url}: {m.text}") if about_the_policy(m) else None,
        )
        page.on("pageerror", lambda error: complaints.append(f"{page.url}: {error}"))

        def checked(response):
            if response.request.resource_type == "document" and (
                "content-security-policy" not in response.headers
            ):
                complaints.append(f"{response.url}: no Content-Security-Policy header")

        page.on("response", checked)
        if username:
            page.goto("/accounts/login/")
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        return page

    yield open_as, complaints
    for context in contexts:
        context.close()


@pytest.mark.django_db(transaction=True)
@in_chromium[0]
@in_chromium[1]
def test_every_page_keeps_to_the_content_security_policy_in_chromium(
    visit, admin_user, reviewer_user, make_image
):
    open_as, complaints = visit
    escalated = make_image(status=Image.Status.ESCALATED)
    waiting = [make_image(status=Image.Status.AWAITING_REVIEW) for _ in range(2)]

    anonymous = open_as(None)
    anonymous.goto("/accounts/login/")
    expect(anonymous.get_by_role("heading", name="Sign in")).to_be_visible()
    assert complaints == []

    admin = open_as("ada")
    for path, heading in [
        ("/images/upload/", None),
        ("/images/", None),
        (f"/images/{escalated.pk}/", None),
        ("/reviews/escalated/", None),
        ("/imm/routing/", None),
        ("/audit/", None),
        ("/accounts/password_change/", "Change password"),
        ("/admin/", None),
        ("/admin/moderation/image/", None),
        (f"/admin/moderation/image/{escalated.pk}/change/", None),
    ]:
        response = admin.goto(path, wait_until="load")
        assert response is not None, path
        assert response.ok, path
        if heading:
            expect(admin.get_by_role("heading", name=heading)).to_be_visible()
    # The detail page's reveal, and the audit log's htmx filter (a swap).
    admin.goto(f"/images/{escalated.pk}/", wait_until="load")
    admin.get_by_role("button", name="Reveal").first.click()
    admin.goto("/audit/", wait_until="load")
    admin.get_by_label("Action").select_option(index=1)
    admin.wait_for_load_state("networkidle")

    reviewer = open_as("rex")
    reviewer.goto("/reviews/", wait_until="load")
    # The greyscale preference saves itself on change (no inline handler).
    with reviewer.expect_navigation():
        reviewer.get_by_label("Show images in greyscale").check()
    reviewer.get_by_role("button", name="Start reviewing").click()
    reviewer.wait_for_url(re.compile(r"/reviews/\d+/$"), wait_until="load")
    held = Claim.objects.get(reviewer=reviewer_user).image_id
    assert held in {image.pk for image in waiting}
    # Approve: htmx swaps the next item into the pane.
    reviewer.locator("#pane").get_by_role("button", name=re.compile(r"^Approve")).click()
    expect(reviewer.locator("#pane")).not_to_have_attribute("data-image", str(held))
    reviewer.wait_for_load_state("networkidle")

    assert complaints == []
