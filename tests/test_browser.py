"""The pages in a real browser: upload (XHR per file, drag and drop), blur and reveal, roles.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright against pytest-django's
live_server; never downloads a browser. Skipped when Chromium is not installed.

README screenshots: `SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_browser.py -k screenshots`
writes docs/upload.png and docs/images.png (nothing is written otherwise).
"""

from __future__ import annotations

import base64
import io
import os
import re

import pytest
from django.urls import reverse
from PIL import Image as PILImage
from PIL import ImageDraw
from playwright.sync_api import expect

from moderation.models import Image
from reviews.models import Reveal

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS, VIEWPORT
from .conftest import PASSWORD
from .factories import image_bytes

EVIL_HTML = b"<!doctype html><html><body><script>alert('not an image')</script></body></html>"


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def sign_in(page, username: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def scene(fmt: str, sky: tuple[int, int, int], ground: tuple[int, int, int]) -> bytes:
    """A small landscape (sky, sun, hills), so a blurred thumbnail visibly hides something."""
    picture = PILImage.new("RGB", (800, 600), sky)
    draw = ImageDraw.Draw(picture)
    for y in range(300):
        shade = tuple(min(255, c + y // 6) for c in sky)
        draw.line([(0, y), (800, y)], fill=shade)
    draw.ellipse([560, 80, 680, 200], fill=(250, 226, 160))
    draw.polygon(
        [(0, 420), (220, 300), (430, 400), (620, 280), (800, 380), (800, 600), (0, 600)],
        fill=ground,
    )
    draw.rectangle([90, 380, 160, 470], fill=(60, 50, 45))
    out = io.BytesIO()
    picture.save(out, format=fmt)
    return out.getvalue()


def png(n: int) -> bytes:
    return image_bytes("PNG", size=(640, 480), color=(40 + n, 90, 120))


def three_files() -> list[dict]:
    return [
        {
            "name": "harbour-at-dusk.png",
            "mimeType": "image/png",
            "buffer": scene("PNG", sky=(70, 110, 160), ground=(40, 80, 70)),
        },
        {
            "name": "street-market.jpg",
            "mimeType": "image/jpeg",
            "buffer": scene("JPEG", sky=(200, 150, 110), ground=(120, 70, 60)),
        },
        {"name": "evil.jpg", "mimeType": "image/jpeg", "buffer": EVIL_HTML},
    ]


def upload_three(page) -> None:
    """Choose two good files and one HTML page named evil.jpg; wait for their three results."""
    nav = page.get_by_role("navigation", name="Main")
    nav.locator("summary", has_text="Images").click()  # admins' pages are grouped in menus
    nav.get_by_role("link", name="Upload").click()
    expect(page.get_by_role("heading", name="Upload images")).to_be_visible()
    # The heading can show before the deferred upload.js has bound the file input (seen once on
    # a loaded machine: the files were chosen and nothing listened).
    page.wait_for_load_state("load")

    # Hold the uploads at the network so the in-flight state can be seen, then let them go.
    held = []
    page.route("**/images/upload/", lambda route: held.append(route))
    page.set_input_files("#id_files", three_files())
    results = page.locator("#upload-results > li")
    expect(results).to_have_count(3)
    bars = page.locator("#upload-results progress")
    expect(bars).to_have_count(3)
    for name in ("harbour-at-dusk.png", "street-market.jpg", "evil.jpg"):
        expect(page.get_by_role("progressbar", name=f"Uploading {name}")).to_be_visible()
    for _ in range(200):  # route handlers run whenever Playwright waits
        if len(held) == 3:
            break
        page.wait_for_timeout(25)
    assert len(held) == 3, f"expected 3 upload requests at once, saw {len(held)}"
    # All three at once, as the page sends them (the test database is a file even on SQLite,
    # so the server's threads have their own connections).
    for route in held:
        route.continue_()
    page.unroute("**/images/upload/")

    expect(page.locator("#upload-results progress")).to_have_count(0)
    expect(results.and_(page.locator("[data-outcome=stored]"))).to_have_count(2)
    expect(results.and_(page.locator("[data-outcome=refused]"))).to_have_count(1)


def test_admin_uploads_two_good_files_and_one_bad(page, admin_user):
    sign_in(page, "ada")
    upload_three(page)

    results = page.locator("#upload-results > li")
    # One batch, listed in the order the files were chosen.
    expect(results.locator(".filename")).to_have_text(
        ["harbour-at-dusk.png", "street-market.jpg", "evil.jpg"]
    )
    for name in ("harbour-at-dusk.png", "street-market.jpg"):
        row = results.filter(has=page.locator(".filename", has_text=name))
        expect(row).to_have_attribute("data-outcome", "stored")
        expect(row.locator(".badge")).to_have_text("Stored")
        expect(row.get_by_role("link", name=re.compile(r"^Image \d+$"))).to_be_visible()
    refused = results.filter(has=page.locator(".filename", has_text="evil.jpg"))
    expect(refused).to_have_attribute("data-outcome", "refused")
    expect(refused.locator(".badge")).to_have_text("Refused")
    expect(refused).to_contain_text("evil.jpg")
    expect(refused.locator(".reason")).to_contain_text("not an image IMM accepts")
    expect(refused.locator(".reason")).to_contain_text("HTML page")

    nav = page.get_by_role("navigation", name="Main")
    nav.locator("summary", has_text="Images").click()
    nav.get_by_role("link", name="Images").click()
    expect(page.locator(".grid > .tile")).to_have_count(2)
    expect(page.locator(".grid")).to_contain_text("harbour-at-dusk.png")
    expect(page.locator(".grid")).to_contain_text("street-market.jpg")
    expect(page.locator(".grid")).not_to_contain_text("evil.jpg")

    assert Image.objects.count() == 2
    assert set(Image.objects.values_list("original_filename", flat=True)) == {
        "harbour-at-dusk.png",
        "street-market.jpg",
    }


def drop_file(page, name: str, data: bytes, mime: str = "image/png") -> None:
    transfer = page.evaluate_handle(
        """([name, b64, type]) => {
            const raw = atob(b64);
            const bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            return transfer;
        }""",
        [name, base64.b64encode(data).decode(), mime],
    )
    form = page.locator("#upload-form")
    form.dispatch_event("dragenter", {"dataTransfer": transfer})
    expect(form).to_have_class(re.compile(r"\bdragging\b"))
    form.dispatch_event("drop", {"dataTransfer": transfer})
    expect(form).not_to_have_class(re.compile(r"\bdragging\b"))


def test_drop_a_file_then_the_same_content_again_is_a_duplicate(page, admin_user):
    sign_in(page, "ada")
    page.goto("/images/upload/")
    data = png(7)

    drop_file(page, "dropped.png", data)
    stored = page.locator("#upload-results > li[data-outcome=stored]")
    expect(stored).to_have_count(1)
    expect(stored).to_contain_text("dropped.png")
    first_link = stored.get_by_role("link", name=re.compile(r"^Image \d+$"))
    first_href = first_link.get_attribute("href")
    image = Image.objects.get()
    assert first_href == image.get_absolute_url()

    drop_file(page, "same-again.png", data)
    duplicate = page.locator("#upload-results > li[data-outcome=duplicate]")
    expect(duplicate).to_have_count(1)
    expect(duplicate.locator(".badge")).to_have_text("Duplicate")
    expect(duplicate).to_contain_text("same-again.png")
    expect(duplicate).to_contain_text("dropped.png")  # names the image it duplicates
    expect(duplicate.get_by_role("link")).to_have_attribute("href", first_href)
    # The newest result is on top.
    expect(page.locator("#upload-results > li").first).to_have_attribute(
        "data-outcome", "duplicate"
    )
    assert Image.objects.count() == 1


def assert_no_horizontal_overflow(page) -> None:
    """Nothing sticks out of its row, tile or card (blurred images are clipped on purpose)."""
    overflowing = page.evaluate(
        """() => {
            const out = [];
            const root = document.documentElement;
            if (root.scrollWidth > root.clientWidth) out.push("page is " + root.scrollWidth);
            const boxes = "#upload-results > li, .tile, .card, .detail > *, .page-head";
            for (const box of document.querySelectorAll(boxes)) {
                const right = box.getBoundingClientRect().right;
                for (const el of box.querySelectorAll("*")) {
                    if (el.closest(".sensitive")) continue;
                    const r = el.getBoundingClientRect().right;
                    if (r > right + 1) out.push(`${el.tagName}.${el.className} in ${box.tagName}`);
                }
            }
            return out;
        }"""
    )
    assert overflowing == [], f"content wider than its box: {overflowing}"


def test_a_very_long_filename_never_widens_the_page(page, admin_user):
    # No spaces, no hyphens: nothing for the browser to break the line on.
    name = "x" * 240 + ".png"
    sign_in(page, "ada")
    page.goto("/images/upload/")
    drop_file(page, name, png(11))
    expect(page.locator("#upload-results > li[data-outcome=stored]")).to_have_count(1)
    drop_file(page, "copy-" + name, png(11))
    expect(page.locator("#upload-results > li[data-outcome=duplicate]")).to_have_count(1)
    assert_no_horizontal_overflow(page)

    page.goto("/images/")
    tile_name = page.locator(".tile-meta .filename")
    expect(tile_name).to_have_attribute("title", name)  # shortened on screen, whole on hover
    assert_no_horizontal_overflow(page)

    page.goto(Image.objects.get().get_absolute_url())
    expect(page.locator(".meta")).to_contain_text(name)
    assert_no_horizontal_overflow(page)


def test_detail_preview_is_blurred_until_revealed(page, admin_user, make_image):
    image = make_image()
    sign_in(page, "ada")
    page.goto(image.get_absolute_url())
    figure = page.locator("figure.sensitive")
    preview = figure.locator("img")
    reveal = figure.get_by_role("button", name="Reveal")
    blurred = re.compile(r"blur\(")
    blurred_url = reverse("image_file", args=[image.pk, "preview-blurred"])
    clear_url = reverse("image_file", args=[image.pk, "preview"])

    # The page holds the server's blurred rendition, blurred further by CSS; nothing recorded.
    expect(preview).to_have_css("filter", blurred)
    expect(preview).to_have_attribute("src", blurred_url)
    expect(reveal).to_have_attribute("aria-pressed", "false")
    assert not Reveal.objects.exists()

    with page.expect_response(lambda r: r.url.endswith(clear_url)) as served:
        reveal.click()
    assert served.value.status == 200
    assert served.value.headers["cache-control"] == "private, no-store"
    expect(preview).to_have_css("filter", "none")
    expect(preview).to_have_attribute("src", clear_url)
    assert list(Reveal.objects.values_list("reviewer", "variant")) == [(admin_user.pk, "preview")]
    hide = figure.get_by_role("button", name="Hide")
    expect(hide).to_have_attribute("aria-pressed", "true")
    hide.click()
    expect(preview).to_have_css("filter", blurred)
    expect(preview).to_have_attribute("src", blurred_url)
    expect(reveal).to_have_attribute("aria-pressed", "false")

    page.keyboard.press("v")
    expect(preview).to_have_css("filter", "none")
    expect(preview).to_have_attribute("src", clear_url)
    page.keyboard.press("v")
    expect(preview).to_have_css("filter", blurred)

    preview.click()
    expect(preview).to_have_css("filter", "none")
    preview.click()
    expect(preview).to_have_css("filter", blurred)

    # The Reveal link is a button to the keyboard: Space presses it.
    reveal.focus()
    page.keyboard.press(" ")
    expect(preview).to_have_attribute("src", clear_url)
    expect(figure.get_by_role("button", name="Hide")).to_have_attribute("aria-pressed", "true")


def test_without_javascript_reveal_opens_the_clear_preview_and_records_it(
    browser, live_server, admin_user, make_image
):
    image = make_image()
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, "ada")
        page.goto(image.get_absolute_url())
        link = page.locator("figure.sensitive").get_by_role("button", name="Reveal")
        clear_url = reverse("image_file", args=[image.pk, "preview"])
        expect(link).to_have_attribute("href", clear_url)
        assert not Reveal.objects.exists()

        response = page.goto(clear_url)  # where the link (target=_blank) leads
        assert response is not None
        assert response.status == 200
        assert list(Reveal.objects.values_list("reviewer", "variant")) == [
            (admin_user.pk, "preview")
        ]
    finally:
        context.close()


def test_list_thumbnails_are_blurred(page, admin_user, make_image):
    make_image()
    sign_in(page, "ada")
    page.goto("/images/")
    thumb = page.locator(".grid .sensitive img")
    expect(thumb).to_have_count(1)
    expect(thumb).to_have_css("filter", re.compile(r"blur\("))
    image = Image.objects.get()
    expect(thumb).to_have_attribute(
        "src", reverse("image_file", args=[image.pk, "thumbnail-blurred"])
    )
    assert not Reveal.objects.exists()  # a list shows no clear pixel


def test_reviewer_has_no_upload_link_and_upload_page_is_refused(page, reviewer_user):
    sign_in(page, "rex")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Review queue")).to_be_visible()
    expect(nav.get_by_role("link", name="Upload")).to_have_count(0)
    expect(page.get_by_role("link", name=re.compile("upload", re.I))).to_have_count(0)

    response = page.goto("/images/upload/")
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.locator("#upload-form")).to_have_count(0)


@pytest.mark.skipif(
    os.environ.get("SCREENSHOTS") != "1", reason="writes docs/*.png only with SCREENSHOTS=1"
)
def test_readme_screenshots(page, admin_user):
    sign_in(page, "ada")
    upload_three(page)
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=DOCS / "upload.png")

    page.goto("/images/")
    expect(page.locator(".grid .tile img")).to_have_count(2)
    page.wait_for_function(
        "() => [...document.images].every((img) => img.complete && img.naturalWidth > 0)"
    )
    page.screenshot(path=DOCS / "images.png")


def test_the_audit_log_page_shows_the_signed_log_and_offers_each_receipt(
    page, admin_user, settings
):
    from django.db import transaction

    from moderation.audit import log as audit
    from moderation.audit.note import Signer, generate_signer_key
    from moderation.audit.verify import check_log

    from .audit_log import sequence_all

    settings.AUDIT_SIGNING_KEY = generate_signer_key("moderation.example.com/audit")
    sign_in(page, "ada")
    upload_three(page)
    context = audit.AuditContext("203.0.113.9", "Mozilla/5.0 (X11; Linux x86_64) Chrome/130")
    with transaction.atomic():
        audit.record(
            action="routing.rule_added",
            actor=admin_user,
            reason="sexy goes to a person",
            detail={"category": "sexy", "rule": "review"},
            context=context,
        )
    sequence_all()
    check_log()
    with transaction.atomic():  # written after the last batch: waiting for the sequencer
        for name in ("violence", "gambling"):
            audit.record(
                action="routing.rule_added",
                actor=admin_user,
                detail={"category": name, "rule": "review"},
                context=context,
            )

    page.goto("/audit/")
    state = page.get_by_role("region", name="Signed log")
    verifier_key = Signer.from_key(settings.AUDIT_SIGNING_KEY).verifier_key()
    expect(state.locator("code.key")).to_have_text(verifier_key)
    expect(state).to_contain_text("2 entries waiting for a position")
    expect(page.get_by_role("region", name="Verification")).to_contain_text("Log verified")
    expect(page.locator(".audit-table tbody tr").first).to_contain_text("pending")
    receipt = page.get_by_role("link", name="receipt").first
    with page.expect_download() as download:
        receipt.click()
    assert download.value.suggested_filename.startswith("audit-entry-")
    if os.environ.get("SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=DOCS / "audit.png")
