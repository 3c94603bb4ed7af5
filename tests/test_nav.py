"""The main navigation as served: admins' pages grouped in named menus with the current page and
its group marked on every page, reviewers' few links in a row, nothing inline for the CSP.
How it looks and behaves in a browser is tests/test_nav_browser.py."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.urls import reverse


class NavParser(HTMLParser):
    """The main nav as a list: ("link", text, attrs) or ("group", name, attrs, [links])."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple] = []
        self.depth = 0  # inside <nav aria-label="Main"> when > 0
        self.group: tuple | None = None
        self.open: str | None = None  # "a" or "summary" whose text is being read
        self.attrs: dict[str, str | None] = {}
        self.text = ""
        self.inline: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "nav" and attributes.get("aria-label") == "Main":
            self.depth = 1
            return
        if not self.depth:
            return
        if tag == "nav":
            self.depth += 1
        if (
            tag in ("script", "style")
            or "style" in attributes
            or any(name.startswith("on") for name in attributes)
        ):
            self.inline.append(tag)
        if tag == "details":
            self.group = ("group", None, {}, [])
        if tag in ("a", "summary"):
            self.open, self.attrs, self.text = tag, attributes, ""

    def handle_data(self, data):
        if self.open:
            self.text += data

    def handle_endtag(self, tag):
        if not self.depth:
            return
        if tag == "nav":
            self.depth -= 1
        elif tag == "a" and self.open == "a":
            link = ("link", self.text.strip(), self.attrs)
            (self.group[3] if self.group else self.items).append(link)
            self.open = None
        elif tag == "summary" and self.group is not None:
            self.group = ("group", self.text.strip(), self.attrs, self.group[3])
            self.open = None
        elif tag == "details" and self.group is not None:
            self.items.append(self.group)
            self.group = None


def main_nav(client, url: str) -> NavParser:
    response = client.get(url)
    assert response.status_code == 200
    parser = NavParser()
    parser.feed(response.content.decode())
    assert parser.items, "no main navigation on the page"
    return parser


def outline(parser: NavParser) -> list:
    return [
        item[1] if item[0] == "link" else (item[1], [link[1] for link in item[3]])
        for item in parser.items
    ]


def test_admins_see_the_dashboard_then_four_named_groups(admin_client, admin_user):
    assert admin_user.is_staff
    nav = main_nav(admin_client, reverse("dashboard"))
    assert outline(nav) == [
        "Dashboard",
        ("Review", ["Review queue", "Escalated", "QA"]),
        ("Images", ["Images", "Upload"]),
        ("Policy", ["Routing", "Calibration", "Targets", "Exposure"]),
        ("Platform", ["API keys", "Webhooks", "Audit log", "Django admin"]),
    ]
    hrefs = {link[1]: link[2]["href"] for group in nav.items[1:] for link in group[3]}
    assert hrefs["QA"] == reverse("qa_overview")  # admins' QA page, not a reviewer's queue
    assert hrefs["Django admin"] == reverse("admin:index")
    assert nav.inline == []


def test_the_django_admin_link_is_only_for_staff(admin_client, admin_user):
    admin_user.is_staff = False
    admin_user.save(update_fields=["is_staff"])
    platform = outline(main_nav(admin_client, reverse("webhooks")))[-1]
    assert platform == ("Platform", ["API keys", "Webhooks", "Audit log"])


@pytest.mark.parametrize(
    ("url", "group", "link"),
    [
        ("review_queue", "Review", "Review queue"),
        ("review_escalated", "Review", "Escalated"),
        ("qa_overview", "Review", "QA"),
        ("image_list", "Images", "Images"),
        ("upload", "Images", "Upload"),
        ("routing_rules", "Policy", "Routing"),
        ("calibration", "Policy", "Calibration"),
        ("sla_targets", "Policy", "Targets"),
        ("exposure", "Policy", "Exposure"),
        ("api_keys", "Platform", "API keys"),
        ("webhooks", "Platform", "Webhooks"),
        ("audit_log", "Platform", "Audit log"),
    ],
)
def test_each_admin_page_marks_its_link_and_its_group(admin_client, url, group, link):
    nav = main_nav(admin_client, reverse(url))
    marked_groups = [item[1] for item in nav.items if item[0] == "group" and item[2]]
    assert marked_groups == [group]
    assert [item[2] for item in nav.items if item[1] == group] == [{"aria-current": "true"}]
    links = [entry for item in nav.items for entry in (item[3] if item[0] == "group" else [item])]
    assert [entry[1] for entry in links if entry[2].get("aria-current") == "page"] == [link]


def test_the_dashboard_marks_its_link_and_no_group(admin_client):
    nav = main_nav(admin_client, reverse("dashboard"))
    assert nav.items[0][2].get("aria-current") == "page"
    assert [item[1] for item in nav.items if item[0] == "group" and item[2]] == []


def test_reviewers_see_their_two_links_and_no_menus(reviewer_client):
    for url in (reverse("review_queue"), reverse("qa_imm_queue")):
        nav = main_nav(reviewer_client, url)
        assert outline(nav) == ["Review queue", "QA"]
        assert nav.items[1][2]["href"] == reverse("qa_imm_queue")
    html = reviewer_client.get(reverse("review_queue")).content.decode()
    assert '<details class="nav-group"' not in html


def test_the_nav_script_comes_from_our_static_files(admin_client):
    html = admin_client.get(reverse("dashboard")).content.decode()
    assert '<script src="/static/js/nav.js" defer></script>' in html
