"""The review pane in a real browser: claim, reveal, decide by keyboard and button, undo, and
two reviewers who never hold the same item.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright against pytest-django's
live_server; never downloads a browser. Skipped when Chromium is not installed.

README screenshot: `SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_review_browser.py -k
screenshot` writes docs/review.png (nothing is written otherwise).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from PIL import Image as PILImage
from PIL import ImageDraw
from playwright.sync_api import Page, expect

from moderation import services as intake
from moderation.accounts import create_user
from moderation.models import Image, ImageCategory
from reviews.models import Claim, Decision, Reveal

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS, VIEWPORT
from .conftest import PASSWORD

BLURRED = re.compile(r"blur\(")


@pytest.fixture
def signed_in(browser, live_server) -> Iterator[Callable[[str], Page]]:
    """A new browser context (its own cookies) signed in as `username`; fails the test on any
    JavaScript error in any of its tabs."""
    contexts = []
    errors: list[str] = []

    def open_as(username: str) -> Page:
        context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
        context.on("page", lambda tab: tab.on("pageerror", lambda error: errors.append(str(error))))
        contexts.append(context)
        page = context.new_page()
        sign_in(page, username)
        return page

    yield open_as
    for context in contexts:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
def second_reviewer(db):
    return create_user(username="rita", role="reviewer", password=PASSWORD, validate=False)


def sign_in(page: Page, username: str) -> None:
    """Through the login form, as a person does."""
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def waiting(make_image, n: int) -> list[Image]:
    """`n` images waiting for review with IMM's verdict, oldest first (a minute apart)."""
    verdicts = [("review", ["sexy"]), ("block", ["bloody", "violence"]), ("review", ["weapon"])]
    start = timezone.now() - timedelta(hours=2)
    images = []
    for i in range(n):
        image = make_image(status=Image.Status.AWAITING_REVIEW)
        suggestion, categories = verdicts[i % len(verdicts)]
        Image.objects.filter(pk=image.pk).update(
            imm_suggestion=suggestion,
            imm_categories=categories,
            imm_rate=91.5,
            status_changed_at=start + timedelta(minutes=i),
        )
        ImageCategory.objects.bulk_create(
            ImageCategory(image=image, category=c) for c in categories
        )
        image.refresh_from_db()
        images.append(image)
    return images


def start_reviewing(page: Page, button: str = "Start reviewing") -> None:
    """From the queue page into the pane, a page load; keys work once its scripts have run, so
    wait for the load event (deferred scripts run before it)."""
    page.goto("/reviews/")
    page.get_by_role("button", name=button).click()
    page.wait_for_url(re.compile(r"/reviews/\d+/$"), wait_until="load")


def pane(page: Page):
    return page.locator("#pane")


def expect_pane_for(page: Page, image: Image) -> None:
    """The pane shows `image`, held by this reviewer (its decision buttons are there)."""
    expect(pane(page)).to_have_attribute("data-image", str(image.pk))
    expect(pane(page).get_by_role("button", name=re.compile(r"^Approve"))).to_be_visible()
    expect(pane(page).locator("figure.sensitive img")).to_have_attribute(
        "alt", re.compile(rf"^Image {image.pk},")
    )


class SameDocument:
    """Proof that htmx swapped the pane in and the browser did not load a page: a marker set on
    `window` survives, the document's time origin is the one it was, and the tab made no
    navigation request (pushing the item's URL onto the history is not one)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.loads: list[str] = []
        page.on(
            "request",
            lambda request: (
                self.loads.append(request.url)
                if request.is_navigation_request() and request.frame == page.main_frame
                else None
            ),
        )
        page.evaluate("() => { window.__marker = 1; }")
        self.origin = page.evaluate("() => performance.timeOrigin")

    def check(self) -> None:
        assert self.page.evaluate("() => window.__marker") == 1, "the page was reloaded"
        assert self.page.evaluate("() => performance.timeOrigin") == self.origin
        assert self.page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
        assert self.loads == [], f"pages requested: {self.loads}"


def press_a(page: Page, *, repeat: bool) -> bool:
    """Dispatch a keydown of A; True if it sent a request there and then (htmx starts one
    synchronously from the button's click)."""
    return page.evaluate(
        """(repeat) => {
            let sent = false;
            const seen = () => { sent = true; };
            document.addEventListener("htmx:beforeRequest", seen, { once: true });
            document.body.dispatchEvent(new KeyboardEvent("keydown", {
                key: "a", repeat, bubbles: true, cancelable: true,
            }));
            document.removeEventListener("htmx:beforeRequest", seen);
            return sent;
        }""",
        repeat,
    )


def is_decide(image: Image) -> Callable:
    path = reverse("review_decide", args=[image.pk])
    return lambda response: response.url.endswith(path) and response.request.method == "POST"


def audit_log_exists() -> bool:
    try:
        reverse("audit_log")
    except NoReverseMatch:
        return False
    return True


# ---------------------------------------------------------------------------------- the issue


def test_reviewer_reveals_approves_and_rejects_without_a_page_load(
    signed_in, reviewer_user, admin_user, make_image
):
    first, second, third = waiting(make_image, 3)
    page = signed_in("rex")
    start_reviewing(page)

    # The oldest waiting image, claimed for rex, blurred, with IMM's verdict beside it.
    expect(page).to_have_url(re.compile(rf"/reviews/{first.pk}/$"))
    expect_pane_for(page, first)
    preview = pane(page).locator("figure.sensitive img")
    expect(preview).to_have_css("filter", BLURRED)
    verdict = pane(page).locator(".verdict")
    expect(verdict.get_by_role("heading")).to_have_text("IMM says review 91.5")
    expect(verdict.locator(".chip")).to_have_text(["sexy"])
    assert Claim.objects.get(image=first).reviewer == reviewer_user

    # The page loaded only the blurred rendition: nothing is recorded yet.
    expect(preview).to_have_attribute(
        "src", reverse("image_file", args=[first.pk, "preview-blurred"])
    )
    assert not Reveal.objects.exists()

    # V reveals: the clear preview is fetched, and serving it records the reveal for (rex, first).
    clear_url = reverse("image_file", args=[first.pk, "preview"])
    with page.expect_response(lambda r: r.url.endswith(clear_url)) as revealed:
        page.keyboard.press("v")
    assert revealed.value.status == 200
    expect(preview).to_have_css("filter", "none")
    expect(preview).to_have_attribute("src", clear_url)
    assert list(Reveal.objects.values_list("image", "reviewer", "variant")) == [
        (first.pk, reviewer_user.pk, "preview")
    ]

    # A approves; the next item is swapped in, blurred again, and the page is the same page.
    same = SameDocument(page)
    with page.expect_response(is_decide(first)) as decided:
        page.keyboard.press("a")
    assert decided.value.status == 200
    expect_pane_for(page, second)
    expect(pane(page).locator("figure.sensitive img")).to_have_css("filter", BLURRED)
    note = pane(page).get_by_role("status")
    expect(note).to_contain_text(f"Image {first.pk} approved.")
    expect(note.get_by_role("button", name=re.compile(r"^Undo"))).to_be_visible()
    expect(page).to_have_url(re.compile(rf"/reviews/{second.pk}/$"))  # pushed, not loaded
    same.check()
    first.refresh_from_db()
    assert first.status == Image.Status.APPROVED
    assert Claim.objects.get(image=second).reviewer == reviewer_user

    # Reject the second with a reason, through the select and the Reject button.
    pane(page).get_by_label("Category").select_option("bloody")
    with page.expect_response(is_decide(second)):
        pane(page).get_by_role("button", name="Reject", exact=True).click()
    expect_pane_for(page, third)
    expect(pane(page).get_by_role("status")).to_contain_text(f"Image {second.pk} rejected.")
    same.check()
    second.refresh_from_db()
    assert second.status == Image.Status.REJECTED
    decision = Decision.objects.get(image=second)
    assert (decision.verdict, decision.reason, decision.reviewer) == (
        Decision.Verdict.REJECT,
        "bloody",
        reviewer_user,
    )
    third.refresh_from_db()
    assert third.status == Image.Status.AWAITING_REVIEW

    # An admin finds both decisions: on each image's history, and on the audit log.
    admin = signed_in("ada")
    for image, label, reason in (
        (first, "Approved by a reviewer", None),
        (second, "Rejected by a reviewer", "bloody"),
    ):
        admin.goto(image.get_absolute_url())
        entry = admin.locator("ol.history > li").filter(has_text=label)
        expect(entry).to_have_count(1)
        expect(entry).to_contain_text("by rex")
        if reason:
            expect(entry).to_contain_text(reason)
    if audit_log_exists():
        response = admin.goto(reverse("audit_log"))
        assert response is not None
        assert response.status == 200
        rows = admin.locator("#audit-rows tbody tr")
        approved = rows.filter(has=admin.locator('[title="review.approved"]'))
        expect(approved).to_have_count(1)
        expect(approved).to_contain_text("Approved by a reviewer")
        expect(approved).to_contain_text(f"Image {first.pk}")
        expect(approved).to_contain_text("rex")
        rejected = rows.filter(has=admin.locator('[title="review.rejected"]'))
        expect(rejected).to_have_count(1)
        expect(rejected).to_contain_text("Rejected by a reviewer")
        expect(rejected).to_contain_text(f"Image {second.pk}")
        expect(rejected).to_contain_text("bloody")


def test_a_second_reviewer_never_gets_the_item_the_first_one_holds(
    signed_in, reviewer_user, second_reviewer, make_image
):
    held, other, last = waiting(make_image, 3)
    rex = signed_in("rex")
    start_reviewing(rex)
    expect_pane_for(rex, held)

    rita = signed_in("rita")
    start_reviewing(rita)
    expect_pane_for(rita, other)
    assert Claim.objects.get(image=held).reviewer == reviewer_user
    assert Claim.objects.get(image=other).reviewer == second_reviewer

    # Her queue says who holds what.
    rita.goto("/reviews/")
    expect(rita.get_by_role("button", name=f"Continue with image {other.pk}")).to_be_visible()
    headers = rita.locator("table.queue thead th")
    # The last column (after Waiting, Response and Uploaded by).
    expect(headers.nth(6)).to_have_text("Held by")
    rows = rita.locator("table.queue tbody tr")
    expect(rows).to_have_count(3)
    for image, holder in ((held, "rex"), (other, "rita"), (last, "—")):
        row = rows.filter(has=rita.locator(f'a[href="/reviews/{image.pk}/"]'))
        expect(row.locator("td").nth(6)).to_have_text(holder)

    # Opening rex's item says he has it and offers no decision.
    rita.goto(f"/reviews/{held.pk}/")
    expect(rita.locator("#pane")).to_contain_text("rex is reviewing this image.")
    expect(
        rita.get_by_role("button", name=re.compile(r"^(Approve|Reject|Escalate|Skip)"))
    ).to_have_count(0)
    expect(rita.locator("#pane")).not_to_have_attribute("data-image", re.compile(r"."))
    rita.keyboard.press("a")  # nothing to press

    # Deciding her way through the queue, she is given everything except rex's item.
    start_reviewing(rita, f"Continue with image {other.pk}")
    expect_pane_for(rita, other)
    rita.keyboard.press("a")
    expect_pane_for(rita, last)
    rita.keyboard.press("a")
    expect(pane(rita).get_by_role("status")).to_contain_text(f"Image {last.pk} approved.")
    expect(pane(rita)).to_contain_text("1 item still waiting.")  # rex's, which she never gets
    expect(pane(rita).locator("figure")).to_have_count(0)

    held.refresh_from_db()
    assert held.status == Image.Status.AWAITING_REVIEW
    assert not Decision.objects.filter(image=held).exists()
    assert Claim.objects.get(image=held).reviewer == reviewer_user
    rex.reload()
    expect_pane_for(rex, held)  # still his, untouched


def test_keyboard_shortcuts(signed_in, reviewer_user, make_image):
    rejected, escalated, skipped, approved = waiting(make_image, 4)
    page = signed_in("rex")
    start_reviewing(page)
    expect_pane_for(page, rejected)
    same = SameDocument(page)

    # ? lists the shortcuts; Escape closes the list.
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(dialog).to_be_hidden()
    page.keyboard.press("?")
    expect(dialog).to_be_visible()
    expect(dialog.locator("dt kbd")).to_have_text(["A", "R", "E", "S", "V", "U", "?"])
    page.keyboard.press("a")  # nothing is decided or revealed behind the open list
    page.keyboard.press("v")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(pane(page).locator("figure.sensitive img")).to_have_css("filter", BLURRED)
    assert Image.objects.get(pk=rejected.pk).status == Image.Status.AWAITING_REVIEW
    assert not Reveal.objects.exists()

    # R without a reason goes to the category; nothing is sent.
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.keyboard.press("r")
    expect(pane(page).get_by_label("Category")).to_be_focused()
    expect(pane(page)).to_have_attribute("data-image", str(rejected.pk))
    assert not [url for url in requests if "/decide/" in url]

    # Enter in the reason field rejects, never approves.
    reason = pane(page).get_by_label("or reason")
    reason.fill("watermarked spam")
    with page.expect_response(is_decide(rejected)):
        reason.press("Enter")
    expect_pane_for(page, escalated)
    expect(pane(page).get_by_role("status")).to_contain_text(f"Image {rejected.pk} rejected.")
    decision = Decision.objects.get(image=rejected)
    assert (decision.verdict, decision.reason) == (Decision.Verdict.REJECT, "watermarked spam")

    # E goes to the note; Enter there escalates.
    page.keyboard.press("e")
    note = pane(page).get_by_label("Note")
    expect(note).to_be_focused()
    expect(pane(page)).to_have_attribute("data-image", str(escalated.pk))
    note.fill("looks like a real weapon")
    with page.expect_response(is_decide(escalated)):
        note.press("Enter")
    expect_pane_for(page, skipped)
    expect(pane(page).get_by_role("status")).to_contain_text(f"Image {escalated.pk} escalated.")
    assert Image.objects.get(pk=escalated.pk).status == Image.Status.ESCALATED

    # S skips to another item; the skipped one waits for someone else.
    page.keyboard.press("s")
    expect_pane_for(page, approved)
    expect(pane(page).get_by_role("status")).to_contain_text("Skipped; it stays in the queue.")
    assert Image.objects.get(pk=skipped.pk).status == Image.Status.AWAITING_REVIEW
    assert not Claim.objects.filter(image=skipped, reviewer=reviewer_user).exists()

    # A held-down key repeats: a repeat decides nothing (the next item is not seen yet); the
    # first press does, at once.
    assert press_a(page, repeat=True) is False
    assert Image.objects.get(pk=approved.pk).status == Image.Status.AWAITING_REVIEW
    assert press_a(page, repeat=False) is True

    # U, within the undo window, takes back the approval: the image is back with rex.
    expect(pane(page).get_by_role("status")).to_contain_text(f"Image {approved.pk} approved.")
    assert Image.objects.get(pk=approved.pk).status == Image.Status.APPROVED
    page.keyboard.press("u")
    expect(pane(page).get_by_role("status")).to_contain_text("Undone. The image is back with you.")
    expect_pane_for(page, approved)
    assert Image.objects.get(pk=approved.pk).status == Image.Status.AWAITING_REVIEW
    assert Claim.objects.get(image=approved).reviewer == reviewer_user
    assert list(
        Decision.objects.filter(image=approved).order_by("id").values_list("verdict", flat=True)
    ) == [Decision.Verdict.APPROVE, Decision.Verdict.UNDO]
    same.check()


def test_deciding_an_item_already_decided_in_another_tab_says_so(signed_in, admin_user, make_image):
    (image,) = waiting(make_image, 1)
    first = signed_in("ada")
    first.goto(f"/reviews/{image.pk}/")
    second = first.context.new_page()
    second.goto(f"/reviews/{image.pk}/")
    expect(second.get_by_role("button", name=re.compile(r"^Approve"))).to_be_visible()

    first.get_by_role("button", name=re.compile(r"^Approve")).click()
    expect(pane(first).get_by_role("status")).to_contain_text(f"Image {image.pk} approved.")

    same = SameDocument(second)
    with second.expect_response(is_decide(image)) as refused:
        second.get_by_role("button", name=re.compile(r"^Approve")).click()
    assert refused.value.status == 409
    alert = pane(second).get_by_role("alert")
    expect(alert).to_contain_text(f"Image {image.pk} was already decided by ada")
    expect(alert).to_contain_text("Nothing was changed.")
    expect(pane(second)).to_contain_text("This image is approved.")
    expect(second.get_by_role("button", name=re.compile(r"^Approve"))).to_have_count(0)
    same.check()
    assert Decision.objects.filter(image=image).count() == 1


def test_the_pane_says_at_once_when_its_image_was_settled_elsewhere(
    signed_in, reviewer_user, make_image
):
    (image,) = waiting(make_image, 1)
    page = signed_in("rex")
    page.clock.install()  # the pane renews its lease at most once a minute, by Date.now()
    start_reviewing(page)
    expect_pane_for(page, image)
    # IMM's own manual review passes the image while rex looks at it.
    Image.objects.filter(pk=image.pk).update(status=Image.Status.APPROVED)

    page.clock.fast_forward("01:01")
    renew_url = reverse("review_renew", args=[image.pk])
    with page.expect_response(lambda r: r.url.endswith(renew_url)) as renewed:
        page.mouse.move(200, 200)
        page.mouse.move(220, 240)
    assert renewed.value.status == 404

    # What happened to it is not rex's to know: only that it no longer waits for him.
    alert = pane(page).get_by_role("alert")
    expect(alert).to_have_text(
        f"Image {image.pk} is no longer waiting for review. Nothing was changed. "
        "Take the next item from the queue."
    )


def test_a_reviewer_deciding_an_item_settled_meanwhile_is_told_plainly_in_the_pane(
    signed_in, reviewer_user, make_image
):
    (image,) = waiting(make_image, 1)
    page = signed_in("rex")
    start_reviewing(page)
    expect_pane_for(page, image)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.REJECTED)

    same = SameDocument(page)
    with page.expect_response(is_decide(image)) as refused:
        page.get_by_role("button", name=re.compile(r"^Approve")).click()

    assert refused.value.status == 404
    expect(pane(page).get_by_role("alert")).to_have_text(
        f"Image {image.pk} is no longer waiting for review. Nothing was changed."
    )
    expect(pane(page)).not_to_contain_text("rejected")
    same.check()
    assert not Decision.objects.filter(image=image).exists()


def test_the_admin_decides_an_escalated_item_with_its_note_in_view_and_returns_to_the_list(
    signed_in, reviewer_user, admin_user, make_image
):
    escalated, other = waiting(make_image, 2)
    reviewer = signed_in("rex")
    start_reviewing(reviewer)
    expect_pane_for(reviewer, escalated)
    reviewer.keyboard.press("e")
    reviewer.keyboard.type("Is that a real weapon or a toy? The label says replica.")
    reviewer.keyboard.press("Enter")
    expect_pane_for(reviewer, other)

    page = signed_in("ada")
    page.goto("/reviews/escalated/")
    page.get_by_role("link", name=f"Image {escalated.pk}").click()
    note = pane(page).get_by_role("note", name="Escalation")
    expect(note).to_contain_text("Escalated by rex")
    expect(note).to_contain_text("Is that a real weapon or a toy? The label says replica.")
    if os.environ.get("SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=DOCS / "escalated-pane.png")

    page.get_by_role("button", name=re.compile(r"^Approve")).click()

    page.wait_for_url(re.compile(r"/reviews/escalated/\?undo=\d+$"))
    expect(page.get_by_role("heading", name="Escalated and waiting")).to_be_visible()
    expect(page.get_by_text(f"Image {escalated.pk} approved.")).to_be_visible()
    assert Image.objects.get(pk=escalated.pk).status == Image.Status.APPROVED
    assert not Claim.objects.filter(reviewer=admin_user).exists()

    # Changed their mind: the list offers the undo, and the item is escalated again.
    page.get_by_role("button", name=f"Undo: image {escalated.pk} back to escalated").click()
    expect(pane(page).get_by_role("note", name="Escalation")).to_contain_text("Escalated by rex")
    assert Image.objects.get(pk=escalated.pk).status == Image.Status.ESCALATED


# ------------------------------------------------------------------------------ the screenshot


def street(size: tuple[int, int] = (960, 720)) -> bytes:
    """A small street scene, so the blurred preview visibly hides something."""
    w, h = size
    picture = PILImage.new("RGB", size, (120, 150, 185))
    draw = ImageDraw.Draw(picture)
    for y in range(h // 2):
        draw.line([(0, y), (w, y)], fill=(120 + y // 8, 150 + y // 10, 185 + y // 14))
    draw.rectangle([0, h // 2, w, h], fill=(70, 70, 76))
    for i, (x, top, colour) in enumerate(
        [(40, 160, (170, 90, 70)), (250, 100, (200, 170, 120)), (520, 190, (90, 120, 110))]
    ):
        draw.rectangle([x, top, x + 190 + 20 * i, h // 2 + 40], fill=colour)
        for wx in range(x + 20, x + 170, 45):
            for wy in range(top + 25, h // 2, 60):
                draw.rectangle([wx, wy, wx + 22, wy + 30], fill=(235, 220, 160))
    draw.ellipse([690, 300, 860, 470], fill=(200, 40, 40))
    draw.rectangle([760, 470, 790, 620], fill=(40, 40, 40))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=88)
    return out.getvalue()


@pytest.mark.skipif(
    os.environ.get("SCREENSHOTS") != "1", reason="writes docs/review.png only with SCREENSHOTS=1"
)
def test_readme_screenshot(signed_in, reviewer_user, admin_user, make_image):
    result = intake.ingest(fp=io.BytesIO(street()), filename="street-corner.jpg", actor=admin_user)
    assert result.image is not None, result.reason
    shown = result.image
    Image.objects.filter(pk=shown.pk).update(
        status=Image.Status.AWAITING_REVIEW,
        imm_suggestion="review",
        imm_categories=["bloody", "violence"],
        imm_rate=87.4,
        status_changed_at=timezone.now() - timedelta(hours=3, minutes=12),
    )
    waiting(make_image, 4)
    page = signed_in("rex")
    start_reviewing(page)
    expect_pane_for(page, shown)
    expect(pane(page).locator("figure.sensitive img")).to_have_css("filter", BLURRED)
    page.wait_for_function(
        "() => [...document.images].every((img) => img.complete && img.naturalWidth > 0)"
    )
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=DOCS / "review.png")
