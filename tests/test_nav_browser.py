"""The main navigation in Chromium: the admins' pages grouped in disclosure menus on one row at
1280 and 1024 px, each menu opened and closed from the keyboard (and without JavaScript), the
current page's group marked, a narrow screen, and the reviewers' few links as they were.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright against pytest-django's
live_server; never downloads a browser. Skipped when Chromium is not installed.

README screenshot: `SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_nav_browser.py
-k screenshot` writes docs/navigation.png (nothing is written otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Locator, Page, expect

from .browser import *  # noqa: F403 - Chromium, its fixtures and pytestmark
from .browser import DOCS, VIEWPORT
from .conftest import PASSWORD

GROUPS = {
    "Review": ["Review queue", "Escalated", "QA"],
    "Images": ["Images", "Upload"],
    "Policy": ["Routing", "Calibration", "Targets", "Exposure"],
    "Platform": ["API keys", "Webhooks", "Audit log"],
}

# One row: every item of the nav (links and menus' names) sits on the same line, and the nav is
# as tall as its tallest item, within a pixel or two of rounding.
ROW = """nav => {
  const items = [...nav.children].map(
    child => (child.matches("details") ? child.querySelector("summary") : child)
  );
  const boxes = items.map(item => item.getBoundingClientRect());
  const header = nav.closest("header");
  const outside = [header.querySelector(".brand"), header.querySelector(".signout")];
  return {
    nav: nav.getBoundingClientRect().height,
    item: Math.max(...boxes.map(b => b.height)),
    tops: boxes.map(b => Math.round(b.top)),
    names: items.map(item => item.textContent.trim()),
    middles: [nav, ...outside].map(e => {
      const b = e.getBoundingClientRect();
      return Math.round(b.top + b.height / 2);
    }),
    scrollWidth: document.documentElement.scrollWidth,
  };
}"""


@pytest.fixture
def signed_in(browser, live_server) -> Iterator[Callable[..., Page]]:
    contexts = []
    errors: list[str] = []

    def open_as(username: str, *, javascript: bool = True, width: int = 1280) -> Page:
        context = browser.new_context(
            viewport={**VIEWPORT, "width": width},
            base_url=live_server.url,
            java_script_enabled=javascript,
        )
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        return page

    yield open_as
    for context in contexts:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def main_nav(page: Page) -> Locator:
    return page.get_by_role("navigation", name="Main")


def summary(page: Page, group: str) -> Locator:
    return main_nav(page).locator("summary", has_text=group)


def menu(page: Page, group: str) -> Locator:
    return main_nav(page).locator("details").filter(has=page.locator("summary", has_text=group))


def focused_text(page: Page) -> str:
    return page.evaluate("document.activeElement.textContent.trim()")


def tab_to(page: Page, text: str) -> None:
    """Press Tab from the top of the page until the element named `text` has focus."""
    page.locator("body").focus()
    for _ in range(30):
        page.keyboard.press("Tab")
        if focused_text(page) == text:
            return
    raise AssertionError(f"{text!r} is not reached by Tab")


@pytest.mark.parametrize("width", [1280, 1024])
def test_the_admin_nav_is_one_row_at_desktop_widths(signed_in, admin_user, width):
    page = signed_in("ada", width=width)
    for path in ("/dashboard/", "/reviews/", "/webhooks/"):
        page.goto(path)
        row = main_nav(page).evaluate(ROW)
        assert row["names"] == ["Dashboard", *GROUPS]
        assert abs(row["nav"] - row["item"]) <= 2, row
        assert max(row["tops"]) - min(row["tops"]) <= 2, row
        # The brand, the nav and the sign-out form share the header's one line.
        assert max(row["middles"]) - min(row["middles"]) <= 3, row
        assert row["scrollWidth"] <= width, row


def test_each_group_opens_by_keyboard_and_shows_its_links(signed_in, admin_user):
    page = signed_in("ada")
    page.goto("/dashboard/")
    for index, (group, links) in enumerate(GROUPS.items()):
        group_menu = menu(page, group)
        for name in links:
            expect(group_menu.get_by_role("link", name=name, exact=True)).to_be_hidden()
        tab_to(page, group)
        page.keyboard.press("Enter" if index % 2 == 0 else " ")
        expect(group_menu).to_have_attribute("open", "")
        for name in links:
            expect(group_menu.get_by_role("link", name=name, exact=True)).to_be_visible()
        page.keyboard.press("Tab")
        assert focused_text(page) == links[0]
        page.keyboard.press("Escape")
        expect(group_menu).not_to_have_attribute("open", "")
        assert focused_text(page) == group  # focus back on the menu's name
        for name in links:
            expect(group_menu.get_by_role("link", name=name, exact=True)).to_be_hidden()

    # Enter on a link in a menu goes there; that page's group is marked.
    tab_to(page, "Policy")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert focused_text(page) == "Calibration"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="IMM calibration")).to_be_visible()
    expect(summary(page, "Policy")).to_have_attribute("aria-current", "true")


def test_one_menu_is_open_at_a_time_and_leaving_it_closes_it(signed_in, admin_user):
    page = signed_in("ada")
    page.goto("/dashboard/")
    review = menu(page, "Review")
    platform = menu(page, "Platform")

    summary(page, "Review").click()
    expect(review).to_have_attribute("open", "")
    summary(page, "Platform").click()
    expect(platform).to_have_attribute("open", "")
    expect(review).not_to_have_attribute("open", "")

    page.get_by_role("heading", name="Team dashboard").click()  # a click elsewhere
    expect(platform).not_to_have_attribute("open", "")

    # Tab past a menu's last link closes it.
    tab_to(page, "Images")
    page.keyboard.press("Enter")
    images = menu(page, "Images")
    expect(images).to_have_attribute("open", "")
    for _ in range(3):  # Images, Upload, then Policy's name
        page.keyboard.press("Tab")
    assert focused_text(page) == "Policy"
    expect(images).not_to_have_attribute("open", "")


@pytest.mark.parametrize(
    ("path", "group", "link"),
    [
        ("/reviews/", "Review", "Review queue"),
        ("/reviews/escalated/", "Review", "Escalated"),
        ("/images/upload/", "Images", "Upload"),
        ("/reviews/exposure/", "Policy", "Exposure"),
        ("/audit/", "Platform", "Audit log"),
    ],
)
def test_the_current_pages_group_is_marked(signed_in, admin_user, path, group, link):
    page = signed_in("ada")
    page.goto(path)
    marked = main_nav(page).locator('summary[aria-current="true"]')
    expect(marked).to_have_count(1)
    expect(marked).to_have_text(group)
    # It looks marked too: the underline the current link has.
    colour = marked.evaluate("e => getComputedStyle(e).borderBottomColor")
    assert colour == "rgb(156, 195, 222)"
    marked.click()
    expect(main_nav(page).get_by_role("link", name=link, exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    expect(main_nav(page).locator('[aria-current="page"]')).to_have_count(1)


def test_the_dashboard_is_one_link_and_no_group_is_marked_there(signed_in, admin_user):
    page = signed_in("ada")
    page.goto("/dashboard/")
    expect(main_nav(page).get_by_role("link", name="Dashboard")).to_have_attribute(
        "aria-current", "page"
    )
    expect(main_nav(page).locator('summary[aria-current="true"]')).to_have_count(0)


def test_the_menus_work_without_javascript(signed_in, admin_user):
    page = signed_in("ada", javascript=False)
    page.goto("/dashboard/")
    tab_to(page, "Platform")
    page.keyboard.press("Enter")
    webhooks = main_nav(page).get_by_role("link", name="Webhooks", exact=True)
    expect(webhooks).to_be_visible()
    webhooks.click()
    expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    expect(summary(page, "Platform")).to_have_attribute("aria-current", "true")


def test_on_a_narrow_screen_every_menu_opens_inside_the_screen(signed_in, admin_user):
    page = signed_in("ada", width=390)
    page.goto("/reviews/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for group, links in GROUPS.items():
        summary(page, group).click()
        for name in links:
            link = main_nav(page).get_by_role("link", name=name, exact=True)
            expect(link).to_be_visible()
            box = link.bounding_box()
            assert box is not None
            assert box["x"] >= 0, box
            assert box["x"] + box["width"] <= 390, box
        # The open menu lies over the page, in front of it.
        panel = main_nav(page).locator("details[open] ul")
        topmost = panel.evaluate(
            "m => { const b = m.getBoundingClientRect();"
            " return m.contains(document.elementFromPoint(b.left + 10, b.bottom - 10)); }"
        )
        assert topmost
    main_nav(page).get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()


def test_reviewers_keep_their_few_links_in_a_row(signed_in, reviewer_user):
    page = signed_in("rex")
    page.goto("/reviews/")
    nav = main_nav(page)
    expect(nav.locator("details")).to_have_count(0)
    expect(nav.get_by_role("link")).to_have_text(["Review queue", "QA"])
    expect(nav.get_by_role("link", name="Review queue")).to_have_attribute("aria-current", "page")
    row = nav.evaluate(ROW)
    assert abs(row["nav"] - row["item"]) <= 2, row


@pytest.mark.skipif(
    os.environ.get("SCREENSHOTS") != "1",
    reason="writes docs/navigation.png only with SCREENSHOTS=1",
)
def test_readme_screenshot(signed_in, admin_user, reviewer_user):
    """docs/navigation.png: an admin's queue with the Review menu open. The dashboard and
    reviewer's queue go to /tmp, for a person to look at."""
    admin = signed_in("ada")
    admin.goto("/dashboard/")
    admin.screenshot(path="/tmp/nav-admin-dashboard.png")
    admin.goto("/reviews/")
    admin.screenshot(path="/tmp/nav-admin-queue.png")
    summary(admin, "Review").click()
    expect(menu(admin, "Review")).to_have_attribute("open", "")
    DOCS.mkdir(exist_ok=True)
    admin.screenshot(
        path=DOCS / "navigation.png", clip={"x": 0, "y": 0, "width": 1280, "height": 220}
    )
    admin.set_viewport_size({"width": 1024, "height": 860})
    admin.goto("/reviews/calibration/")
    admin.screenshot(path="/tmp/nav-admin-1024.png")
    reviewer = signed_in("rex")
    reviewer.goto("/reviews/")
    reviewer.screenshot(path="/tmp/nav-reviewer-queue.png")
    narrow = signed_in("ada", width=390)
    narrow.goto("/reviews/")
    summary(narrow, "Policy").click()
    narrow.screenshot(path="/tmp/nav-admin-narrow.png")
