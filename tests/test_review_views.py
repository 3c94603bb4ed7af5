"""The review queue's pages, each as a full page and as the htmx fragment where both exist, with
what they change checked in the database and the audit log, not just the status code."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.template.defaultfilters import floatformat
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince

from moderation import limits
from moderation.accounts import create_user
from moderation.models import AuditEntry, Image, ImageCategory, ModerationResult
from reviews.models import Claim, Decision, Reveal, ReviewerPreference
from reviews.queue import PAGE_SIZE
from reviews.templatetags.review_tags import age

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}
WAITING, ESCALATED = Image.Status.AWAITING_REVIEW, Image.Status.ESCALATED
APPROVED, REJECTED = Image.Status.APPROVED, Image.Status.REJECTED
_bare_numbers = itertools.count(1)


# ---------------------------------------------------------------------------------- helpers


def user(username: str, role: str = "reviewer") -> Any:
    return create_user(username=username, role=role, password=PASSWORD, validate=False)


def client_for(someone: Any) -> Client:
    client = Client()
    client.force_login(someone)
    return client


@pytest.fixture
def other_reviewer(db) -> Any:
    return user("rio")


@pytest.fixture
def other_client(other_reviewer) -> Client:
    return client_for(other_reviewer)


@pytest.fixture
def queued(make_image) -> Callable[..., Image]:
    """A waiting image that changed status `age` ago, with IMM's verdict and category rows."""

    def make(
        *,
        age: timedelta = timedelta(hours=2),
        status: str = WAITING,
        suggestion: str = "review",
        categories: tuple[str, ...] = ("porn",),
        **changes: Any,
    ) -> Image:
        image = make_image(status=status)
        Image.objects.filter(pk=image.pk).update(
            status_changed_at=timezone.now() - age,
            imm_suggestion=suggestion,
            imm_categories=list(categories),
            **changes,
        )
        ImageCategory.objects.bulk_create(
            ImageCategory(image=image, category=category) for category in categories
        )
        image.refresh_from_db()
        return image

    return make


def bare_waiting(
    n: int, *, oldest: timedelta = timedelta(days=3), uploaded_by: Any = None
) -> list[int]:
    """n waiting images as plain rows (no files), oldest first; pairs share a status time."""
    numbers = [next(_bare_numbers) for _ in range(n)]
    images = Image.objects.bulk_create(
        Image(
            file=f"bare/{i}.png",
            sha256=f"{i:064x}",
            format=Image.Format.PNG,
            width=320,
            height=240,
            byte_size=1000,
            original_filename=f"bare-{i}.png",
            status=WAITING,
            imm_suggestion="review",
            imm_categories=["sexy"],
            uploaded_by=uploaded_by,
        )
        for i in numbers
    )
    ImageCategory.objects.bulk_create(
        ImageCategory(image=image, category="sexy") for image in images
    )
    start = timezone.now() - oldest
    for index, image in enumerate(images):
        # Every two rows share a moment, so the page boundary has to break ties by id.
        moment = start + timedelta(seconds=index // 2)
        Image.objects.filter(pk=image.pk).update(status_changed_at=moment)
    return [image.pk for image in images]


def hold(image: Image, reviewer: Any, *, seconds: int = 300) -> Claim:
    now = timezone.now()
    return Claim.objects.create(
        image=image, reviewer=reviewer, claimed_at=now, expires_at=now + timedelta(seconds=seconds)
    )


def past_decision(
    image: Image,
    reviewer: Any,
    *,
    seconds: float | None,
    when: Any,
    verdict: str = Decision.Verdict.APPROVE,
) -> Decision:
    """A decision row as the figures read it (no claim, status or audit entry around it)."""
    return Decision.objects.create(
        image=image,
        reviewer=reviewer,
        verdict=verdict,
        status_before=WAITING,
        status_after=APPROVED,
        seconds=seconds,
        created_at=when,
    )


def listed(html: str) -> list[int]:
    """Image ids in the order the queue (or escalated list) lists them."""
    return [int(pk) for pk in re.findall(r'<a href="/reviews/(\d+)/">Image \1</a>', html)]


def buttons(html: str) -> dict[str, str]:
    """Submit buttons of the decision form: action value -> visible label (tags stripped)."""
    found = re.findall(r'<button[^>]*name="action" value="(\w+)"[^>]*>(.*?)</button>', html, re.S)
    return {value: re.sub(r"<[^>]+>", "", label).strip() for value, label in found}


def actions(image: Image) -> list[str]:
    return list(
        AuditEntry.objects.filter(image=image).order_by("id").values_list("action", flat=True)
    )


def decide(client: Client, image: Image, action: str, htmx: bool = False, **data: str):
    headers = HX if htmx else {}
    return client.post(
        reverse("review_decide", args=[image.pk]), {"action": action, **data}, headers=headers
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def varies_on_hx_request(response) -> bool:
    return "HX-Request" in [v.strip() for v in response.get("Vary", "").split(",")]


def pane_image(html: str) -> int | None:
    found = re.search(r'<section id="pane"[^>]*data-image="(\d+)"', html)
    return int(found.group(1)) if found else None


def snapshot(image: Image) -> tuple[str, int, int, bool]:
    image.refresh_from_db()
    return (
        image.status,
        Decision.objects.filter(image=image).count(),
        AuditEntry.objects.filter(image=image).count(),
        Claim.objects.filter(image=image).exists(),
    )


# ------------------------------------------------------------------------------ who gets in

EVERY_VIEW = [
    ("get", "review_queue", False),
    ("get", "review_next", False),
    ("post", "review_next", False),
    ("get", "review_escalated", False),
    ("post", "review_bulk", False),
    ("post", "review_preferences", False),
    ("get", "review_item", True),
    ("post", "review_decide", True),
    ("post", "review_renew", True),
    ("post", "review_undo", True),
]


@pytest.mark.parametrize(("method", "name", "with_pk"), EVERY_VIEW)
def test_anonymous_visitors_are_sent_to_log_in_by_every_review_view(method, name, with_pk, queued):
    image = queued()
    url = reverse(name, args=[image.pk] if with_pk else [])
    before = snapshot(image)

    response = getattr(Client(), method)(url, {"action": "approve", "images": [image.pk]})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")
    assert snapshot(image) == before
    assert not Reveal.objects.exists()


@pytest.mark.parametrize(("method", "name", "with_pk"), EVERY_VIEW)
def test_a_user_without_a_role_is_refused_by_every_review_view(method, name, with_pk, queued):
    image = queued()
    nobody = get_user_model().objects.create_user(username="nobody", password=PASSWORD)
    url = reverse(name, args=[image.pk] if with_pk else [])
    before = snapshot(image)

    response = getattr(client_for(nobody), method)(url, {"action": "approve", "images": [image.pk]})

    assert response.status_code == 403
    assert snapshot(image) == before
    assert not Reveal.objects.exists()
    assert not ReviewerPreference.objects.exists()


# ------------------------------------------------------------------------------------ queue


def test_the_queue_lists_waiting_items_oldest_first_with_verdict_categories_and_age(
    reviewer_client, queued
):
    newest = queued(age=timedelta(minutes=10), suggestion="review", categories=("weapon",))
    oldest = queued(
        age=timedelta(days=2, seconds=5), suggestion="block", categories=("porn", "sexy")
    )
    middle = queued(age=timedelta(hours=3, seconds=5), categories=())
    queued(status=APPROVED)
    queued(status=ESCALATED)
    queued(status=Image.Status.SUBMITTED)

    response = reviewer_client.get(reverse("review_queue"))

    assert response.status_code == 200
    html = response.content.decode()
    assert listed(html) == [oldest.pk, middle.pk, newest.pk]
    assert html.count('class="sensitive mini ') == 3
    assert 'class="sensitive mini grey"' not in html
    row = html[html.index(f'alt="Image {oldest.pk} (blurred)"') :].split("</tr>")[0]
    assert '<span class="suggestion-block">block</span>' in row
    assert '<span class="chip">porn</span><span class="chip">sexy</span>' in row
    assert ">2\N{NO-BREAK SPACE}days</time>" in row
    assert "ada" in row  # uploaded by
    middle_row = html[html.index(f'alt="Image {middle.pk} (blurred)"') :].split("</tr>")[0]
    assert ">3\N{NO-BREAK SPACE}hours</time>" in middle_row
    assert '<span class="muted">none</span>' in middle_row
    assert varies_on_hx_request(response)


def test_the_queue_rows_escape_what_comes_from_data(reviewer_client, queued, other_reviewer):
    # Category labels come from IMM and names from admins: neither may write markup.
    shown = queued(categories=('<img src=x onerror="alert(1)">',))
    other_reviewer.username = "<b>rio</b>"
    other_reviewer.save()
    hold(shown, other_reviewer)

    html = reviewer_client.get(reverse("review_queue")).content.decode()

    at = html.index(f'alt="Image {shown.pk} (blurred)"')
    row = html[html.rindex("<tr>", 0, at) :].split("</tr>")[0]
    assert "<img src=x" not in row
    assert '<span class="chip">&lt;img src=x onerror=&quot;alert(1)&quot;&gt;</span>' in row
    assert "<td>&lt;b&gt;rio&lt;/b&gt;</td>" in row
    assert f'href="{reverse("review_item", args=[shown.pk])}"' in row
    assert f'src="{reverse("image_file", args=[shown.pk, "thumbnail-blurred"])}"' in row


def test_the_queue_rows_follow_the_greyscale_preference(reviewer_client, reviewer_user, queued):
    queued()
    queued()
    ReviewerPreference.objects.create(user=reviewer_user, greyscale=True)

    html = reviewer_client.get(reverse("review_queue")).content.decode()

    assert html.count('class="sensitive mini grey"') == 2


@pytest.mark.parametrize(
    "waited",
    [
        timedelta(seconds=30),
        timedelta(minutes=1),
        timedelta(minutes=59, seconds=59),
        timedelta(hours=1),
        timedelta(hours=3, minutes=12),
        timedelta(days=1, minutes=5),
        timedelta(days=6, hours=23),
        timedelta(days=8, hours=2),
        timedelta(days=13),
        timedelta(days=27, hours=23),
        timedelta(days=28),
        timedelta(days=30),
        timedelta(days=31),
        timedelta(days=59),
        timedelta(days=400),
    ],
)
@pytest.mark.parametrize(
    "now", [datetime(2026, 12, 31, 12, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)]
)
def test_the_queue_ages_read_as_djangos_timesince(waited, now):
    assert age(now - waited, now) == timesince(now - waited, now)


@pytest.mark.parametrize(("rate", "shown"), [(87.25, "87.3"), (80.39, "80.4"), (99.95, "100.0")])
def test_the_queue_rounds_rates_as_floatformat_does(reviewer_client, queued, rate, shown):
    image = queued(imm_rate=rate)

    html = reviewer_client.get(reverse("review_queue")).content.decode()

    at = html.index(f'alt="Image {image.pk} (blurred)"')
    row = html[html.rindex("<tr>", 0, at) :].split("</tr>")[0]
    assert f'<span class="muted">{shown}</span>' in row
    assert floatformat(rate, 1) == shown


def test_the_queue_shows_who_holds_an_item(reviewer_client, queued, other_reviewer):
    held = queued()
    hold(held, other_reviewer)

    html = reviewer_client.get(reverse("review_queue")).content.decode()

    row = html[html.index(f'alt="Image {held.pk} (blurred)"') :].split("</tr>")[0]
    assert "<td>rio</td>" in row


def test_the_queue_shows_the_reviewers_figures(reviewer_client, reviewer_user, queued):
    queued(age=timedelta(days=2, seconds=5))
    queued(age=timedelta(minutes=5))
    decided = queued(status=APPROVED)
    now = timezone.now()
    for seconds in (10, 20, 60):
        past_decision(decided, reviewer_user, seconds=seconds, when=now)
    # An undo is not a decision, and yesterday's decisions are not today's.
    past_decision(decided, reviewer_user, seconds=500, when=now, verdict=Decision.Verdict.UNDO)
    past_decision(decided, reviewer_user, seconds=500, when=now - timedelta(days=1, hours=1))

    html = reviewer_client.get(reverse("review_queue")).content.decode()

    figures = html[html.index('aria-label="Your figures"') :].split("</section>")[0]
    assert (
        '<span class="figure" id="waiting-count">2</span><span class="muted">waiting</span>'
        in figures
    )
    oldest = '<span class="figure">2\N{NO-BREAK SPACE}days</span><span class="muted">oldest'
    assert oldest in figures
    assert '<span class="figure">3</span><span class="muted">your decisions today</span>' in figures
    assert (
        '<span class="figure">20 s</span><span class="muted">your median per item</span>' in figures
    )


def test_the_median_of_an_even_count_is_the_mean_of_the_middle_two_and_untimed_ones_count_once(
    reviewer_client, reviewer_user, queued
):
    decided = queued(status=APPROVED)
    for seconds in (100, None, 10, 60, 20):  # None: decided without a claim (an admin's way)
        past_decision(decided, reviewer_user, seconds=seconds, when=timezone.now())

    html = reviewer_client.get(reverse("review_queue")).content.decode()

    assert '<span class="figure">5</span><span class="muted">your decisions today</span>' in html
    assert '<span class="figure">40 s</span><span class="muted">your median per item</span>' in html


def test_the_figures_of_an_empty_queue_show_dashes(reviewer_client):
    html = reviewer_client.get(reverse("review_queue")).content.decode()

    assert '<span class="figure" id="waiting-count">0</span>' in html
    assert '<span class="figure">—</span><span class="muted">oldest waiting</span>' in html
    assert "Nothing is waiting." in html
    assert "Start reviewing" in html


@pytest.fixture
def mixed_queue(queued, admin_user) -> dict[str, Image]:
    uploader = user("ulla", "admin")
    return {
        "old_sexy": queued(age=timedelta(days=2), categories=("sexy",), uploaded_by=uploader),
        "porn_and_sexy": queued(age=timedelta(hours=5), categories=("porn", "sexy")),
        "weapon": queued(age=timedelta(minutes=10), categories=("weapon",), uploaded_by=None),
        "politics": queued(age=timedelta(minutes=20), categories=("politics",)),
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"scene": "porn"}, ["old_sexy", "porn_and_sexy"]),
        ({"scene": "terrorism"}, ["politics", "weapon"]),
        ({"scene": "ad"}, ["porn_and_sexy", "politics"]),
        ({"category": "sexy"}, ["old_sexy", "porn_and_sexy"]),
        ({"category": "weapon"}, ["weapon"]),
        ({"age": "old"}, ["old_sexy"]),
        ({"age": "1d"}, ["porn_and_sexy"]),
        ({"age": "1h"}, ["politics", "weapon"]),
        ({"scene": "porn", "age": "1d"}, ["porn_and_sexy"]),
        ({"scene": "nonsense"}, ["old_sexy", "porn_and_sexy", "politics", "weapon"]),
        ({"category": "flag"}, []),
    ],
)
def test_the_queue_filters_by_scene_category_and_age(reviewer_client, mixed_queue, query, expected):
    response = reviewer_client.get(reverse("review_queue"), query)

    assert response.status_code == 200
    html = response.content.decode()
    assert listed(html) == [mixed_queue[name].pk for name in expected]
    assert f'<span class="figure" id="waiting-count">{len(expected)}</span>' in html
    if not expected:
        assert "Nothing is waiting with these filters." in html


def test_admins_filter_by_uploader_from_a_select_reviewers_do_not_get(
    admin_client, reviewer_client, mixed_queue, admin_user
):
    ulla = mixed_queue["old_sexy"].uploaded_by

    admin_html = admin_client.get(reverse("review_queue")).content.decode()
    reviewer_html = reviewer_client.get(reverse("review_queue")).content.decode()
    filtered = admin_client.get(reverse("review_queue"), {"uploader": ulla.pk}).content.decode()

    assert '<select name="uploader">' in admin_html
    assert f'<option value="{ulla.pk}" >ulla</option>' in admin_html
    assert f'<option value="{admin_user.pk}" >ada</option>' in admin_html
    assert '<select name="uploader">' not in reviewer_html
    assert listed(filtered) == [mixed_queue["old_sexy"].pk]
    assert f'<option value="{ulla.pk}" selected>ulla</option>' in filtered


def test_the_filter_bar_counts_images_per_scene_category_and_age(reviewer_client, mixed_queue):
    html = reviewer_client.get(reverse("review_queue")).content.decode()

    # porn_and_sexy has two porn-scene labels: it is one image, counted once.
    assert '<option value="porn" >porn (2)</option>' in html
    assert '<option value="terrorism" >terrorism (2)</option>' in html
    assert '<option value="ad" >ad (2)</option>' in html
    assert '<option value="sexy" >sexy (2)</option>' in html
    assert '<option value="porn" >porn (1)</option>' in html
    assert '<option value="weapon" >weapon (1)</option>' in html
    assert '<option value="old" >Over a day (1)</option>' in html
    assert '<option value="1d" >1 to 24 hours (1)</option>' in html
    assert '<option value="1h" >Under an hour (2)</option>' in html


def test_scene_counts_match_what_the_scene_filter_lists(reviewer_client, mixed_queue):
    for scene in ("porn", "terrorism", "ad"):
        html = reviewer_client.get(reverse("review_queue")).content.decode()
        shown = re.search(rf'<option value="{scene}" >{scene} \((\d+)\)</option>', html)
        filtered = reviewer_client.get(reverse("review_queue"), {"scene": scene}).content.decode()

        assert shown is not None
        assert int(shown.group(1)) == len(listed(filtered))


def test_the_queue_pages_by_keyset_without_overlap_or_gap(reviewer_client):
    ids = bare_waiting(PAGE_SIZE + 5)

    first = reviewer_client.get(reverse("review_queue"))
    first_html = first.content.decode()
    cursor = re.search(r'<a rel="next" href="\?&amp;after=([\d.]+)">Newer →</a>', first_html)
    assert cursor is not None
    second_html = reviewer_client.get(
        reverse("review_queue"), {"after": cursor.group(1)}
    ).content.decode()

    assert listed(first_html) == ids[:PAGE_SIZE]
    assert "← Oldest" not in first_html
    assert listed(second_html) == ids[PAGE_SIZE:]
    assert 'rel="next"' not in second_html
    assert '<a href="?">← Oldest</a>' in second_html


def test_the_next_page_keeps_the_filters(reviewer_client, queued):
    ids = bare_waiting(PAGE_SIZE + 2)
    queued(categories=("weapon",))

    html = reviewer_client.get(reverse("review_queue"), {"category": "sexy"}).content.decode()
    cursor = re.search(r'<a rel="next" href="\?category=sexy&amp;after=([\d.]+)">', html)
    assert cursor is not None
    second = reviewer_client.get(
        reverse("review_queue"), {"category": "sexy", "after": cursor.group(1)}
    ).content.decode()

    assert listed(second) == ids[PAGE_SIZE:]


def test_a_garbled_cursor_shows_the_first_page(reviewer_client):
    ids = bare_waiting(3)

    html = reviewer_client.get(reverse("review_queue"), {"after": "x.y"}).content.decode()

    assert listed(html) == ids


def test_the_queue_runs_the_same_number_of_queries_for_5_and_60_items(
    reviewer_client, admin_client, admin_user, other_reviewer
):
    bare_waiting(5, uploaded_by=admin_user)
    url = reverse("review_queue")
    reviewer_client.get(url)
    admin_client.get(url)

    def queries(client: Client, query: dict[str, str] | None = None) -> int:
        cache.clear()  # counts are cached; measure the uncached page
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url, query or {})
        assert response.status_code == 200
        return len(captured)

    small = queries(reviewer_client), queries(admin_client)
    ids = bare_waiting(55, oldest=timedelta(days=2), uploaded_by=admin_user)
    # Twenty items held by twenty reviewers (one item each): the page must not query per holder.
    for n, pk in enumerate(ids[:20]):
        holder = get_user_model().objects.create_user(username=f"holder{n}", password="x")
        hold(Image.objects.get(pk=pk), holder)
    big = queries(reviewer_client), queries(admin_client)
    html = reviewer_client.get(url).content.decode()
    cursor = re.search(r'after=([\d.]+)"', html)
    assert cursor is not None
    second_page = queries(reviewer_client, {"after": cursor.group(1)})

    assert len(listed(html)) == PAGE_SIZE
    assert small == big
    assert second_page == small[0]


def test_an_htmx_request_gets_only_the_rows(reviewer_client, queued):
    waiting = queued(categories=("sexy",))
    queued(categories=("weapon",))

    response = reviewer_client.get(reverse("review_queue"), {"category": "sexy"}, headers=HX)

    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.strip().startswith('<div id="queue-rows">')
    assert "Your figures" not in html
    assert listed(html) == [waiting.pk]
    assert varies_on_hx_request(response)


def test_a_boosted_htmx_request_gets_the_full_queue_page(reviewer_client, queued):
    queued()

    response = reviewer_client.get(reverse("review_queue"), headers={**HX, "HX-Boosted": "true"})

    assert "<html" in response.content.decode()
    assert varies_on_hx_request(response)


# ------------------------------------------------------------------------ next (Start reviewing)


def test_start_reviewing_claims_the_oldest_item_and_redirects_to_its_pane(
    reviewer_client, reviewer_user, queued
):
    queued(age=timedelta(hours=1))
    oldest = queued(age=timedelta(days=1))

    response = reviewer_client.post(reverse("review_next"))

    assert response.status_code == 302
    assert response["Location"] == reverse("review_item", args=[oldest.pk])
    claim = Claim.objects.get()
    assert claim.image_id == oldest.pk
    assert claim.reviewer == reviewer_user
    assert claim.expires_at > timezone.now() + timedelta(seconds=200)


def test_start_reviewing_with_htmx_returns_the_pane_and_pushes_its_url(
    reviewer_client, reviewer_user, queued
):
    oldest = queued(age=timedelta(days=1))
    queued(age=timedelta(hours=1))

    response = reviewer_client.post(reverse("review_next"), headers=HX)

    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert pane_image(html) == oldest.pk
    assert response["HX-Push-Url"] == reverse("review_item", args=[oldest.pk])
    assert varies_on_hx_request(response)
    assert Claim.objects.get().image_id == oldest.pk


def test_start_reviewing_twice_returns_the_item_already_held(reviewer_client, queued):
    oldest = queued(age=timedelta(days=1))
    queued(age=timedelta(hours=1))

    first = reviewer_client.post(reverse("review_next"))
    second = reviewer_client.post(reverse("review_next"))
    third = reviewer_client.post(reverse("review_next"), headers=HX)

    assert first["Location"] == second["Location"] == reverse("review_item", args=[oldest.pk])
    assert pane_image(third.content.decode()) == oldest.pk
    assert list(Claim.objects.values_list("image_id", flat=True)) == [oldest.pk]


def test_two_reviewers_starting_get_different_items(reviewer_client, other_client, queued):
    oldest = queued(age=timedelta(days=1))
    newer = queued(age=timedelta(hours=1))

    mine = reviewer_client.post(reverse("review_next"))
    theirs = other_client.post(reverse("review_next"))

    assert mine["Location"] == reverse("review_item", args=[oldest.pk])
    assert theirs["Location"] == reverse("review_item", args=[newer.pk])


def test_start_reviewing_follows_the_queue_filters(reviewer_client, queued):
    queued(age=timedelta(days=1), categories=("porn",))
    weapon = queued(age=timedelta(hours=1), categories=("weapon",))

    response = reviewer_client.post(reverse("review_next"), {"scene": "terrorism"})

    assert response["Location"] == reverse("review_item", args=[weapon.pk])


def test_start_reviewing_an_empty_queue_says_so_and_goes_back_to_the_queue(reviewer_client):
    response = reviewer_client.post(reverse("review_next"))
    followed = reviewer_client.post(reverse("review_next"), follow=True)

    assert response.status_code == 302
    assert response["Location"] == reverse("review_queue")
    assert "Nothing is waiting for review. Well done." in messages_of(followed)
    assert "Nothing is waiting for review. Well done." in followed.content.decode()
    assert not Claim.objects.exists()


def test_start_reviewing_an_empty_queue_with_htmx_returns_the_empty_pane(reviewer_client):
    response = reviewer_client.post(reverse("review_next"), headers=HX)

    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert "Nothing is waiting for review." in html
    assert pane_image(html) is None
    assert response["HX-Push-Url"] == reverse("review_next")


def test_opening_next_goes_to_the_held_item(reviewer_client, reviewer_user, queued):
    held = queued()
    hold(held, reviewer_user)

    response = reviewer_client.get(reverse("review_next"))

    assert response.status_code == 302
    assert response["Location"] == reverse("review_item", args=[held.pk])


def test_opening_next_without_a_held_item_shows_the_empty_pane_and_claims_nothing(
    reviewer_client, queued
):
    queued()

    response = reviewer_client.get(reverse("review_next"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    assert pane_image(html) is None
    assert '<span id="pane-waiting">1</span> waiting' in html
    assert "1 item still waiting." in html
    assert "Start reviewing" in html
    assert not Claim.objects.exists()


# -------------------------------------------------------------------------------- item pane


@pytest.fixture
def verdict_image(queued) -> Image:
    image = queued(suggestion="block", categories=("porn", "sexy"))
    ModerationResult.objects.create(
        imm_task_id="imm-task-1",
        image=image,
        fingerprint=f"fp-{image.pk}",
        source=ModerationResult.Source.POLL,
        status="Succeeded",
        suggestion="block",
        categories=["porn", "sexy"],
        frames_total=4,
        block_frames=[{"Label": "porn", "Offset": 2, "Rate": 99.1}],
        raw={"TaskId": "imm-task-1"},
        applied=True,
    )
    # An older result that did not set the status is not the one shown.
    ModerationResult.objects.create(
        imm_task_id="imm-task-0",
        image=image,
        fingerprint=f"fp-old-{image.pk}",
        source=ModerationResult.Source.POLL,
        status="Succeeded",
        frames_total=9,
        raw={},
        applied=False,
    )
    return image


def test_the_pane_shows_the_blurred_image_verdict_frames_details_history_and_buttons(
    reviewer_client, reviewer_user, verdict_image
):
    hold(verdict_image, reviewer_user)

    response = reviewer_client.get(reverse("review_item", args=[verdict_image.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    assert '<figure class="sensitive stage "' in html
    assert reverse("image_file", args=[verdict_image.pk, "preview"]) in html
    assert 'IMM says <span class="suggestion-block">block</span>' in html
    assert '<span class="chip">porn</span><span class="chip">sexy</span>' in html
    assert "4 frames checked, offending ones marked" in html
    frames = re.findall(r'<li class="(\w*)" title="frame (\d+):', html)
    assert frames == [("", "0"), ("", "1"), ("hit", "2"), ("", "3")]
    assert "<span>porn 99.1</span>" in html
    assert f"<dd>{verdict_image.pk} · PNG · 320 \N{MULTIPLICATION SIGN} 240" in html
    assert "<dt>Held by</dt><dd>rex until" in html
    assert "History (1)" in html
    assert "Uploaded" in html
    assert buttons(html) == {
        "approve": "Approve A",
        "skip": "Skip S",
        "reject": "Reject",
        "escalate": "Escalate",
    }
    assert f'action="{reverse("review_decide", args=[verdict_image.pk])}"' in html
    assert "csrfmiddlewaretoken" in html
    assert re.search(r'<dialog id="shortcuts"[^>]*>\s*<h2[^>]*>Keyboard shortcuts</h2>', html)
    assert "<dt><kbd>A</kbd></dt><dd>Approve</dd>" in html
    assert "<dt><kbd>V</kbd></dt><dd>Reveal or blur the image</dd>" in html
    assert f'data-renew-url="{reverse("review_renew", args=[verdict_image.pk])}"' in html
    # The pane loads the blurred rendition; the clear preview only on Reveal (tests/test_views.py).
    blurred = reverse("image_file", args=[verdict_image.pk, "preview-blurred"])
    clear = reverse("image_file", args=[verdict_image.pk, "preview"])
    assert f'<img src="{blurred}" data-clear-src="{clear}"' in html
    # IMM's own categories are offered first as reasons to reject.
    reasons = re.findall(r'<option value="([^"]+)">', html)
    assert reasons[:2] == ["porn", "sexy"]
    assert varies_on_hx_request(response)


def test_the_pane_as_an_htmx_fragment_is_the_pane_alone(
    reviewer_client, reviewer_user, verdict_image
):
    hold(verdict_image, reviewer_user)

    response = reviewer_client.get(reverse("review_item", args=[verdict_image.pk]), headers=HX)

    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.strip().startswith('<section id="pane"')
    assert pane_image(html) == verdict_image.pk
    assert 'class="hit"' in html
    assert set(buttons(html)) == {"approve", "skip", "reject", "escalate"}
    assert varies_on_hx_request(response)


def test_the_pane_in_greyscale_greys_the_stage(reviewer_client, reviewer_user, queued):
    image = queued()
    hold(image, reviewer_user)
    ReviewerPreference.objects.create(user=reviewer_user, greyscale=True)

    html = reviewer_client.get(reverse("review_item", args=[image.pk])).content.decode()

    assert '<figure class="sensitive stage grey"' in html


def test_the_pane_without_an_imm_result_shows_no_frames(reviewer_client, reviewer_user, queued):
    image = queued(categories=())
    hold(image, reviewer_user)

    html = reviewer_client.get(reverse("review_item", args=[image.pk])).content.decode()

    assert '<ol class="frames">' not in html
    assert "No categories." in html


def test_a_reviewer_who_does_not_hold_the_item_sees_who_does_and_no_decision_form(
    reviewer_client, other_reviewer, queued
):
    image = queued()
    hold(image, other_reviewer)

    response = reviewer_client.get(reverse("review_item", args=[image.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "rio is reviewing this image." in html
    assert reverse("review_decide", args=[image.pk]) not in html
    assert buttons(html) == {}
    assert "data-renew-url" not in html
    assert Claim.objects.get(image=image).reviewer == other_reviewer


def test_a_reviewer_opening_an_unheld_item_is_offered_the_next_item_not_a_decision(
    reviewer_client, queued
):
    image = queued()

    html = reviewer_client.get(reverse("review_item", args=[image.pk])).content.decode()

    assert buttons(html) == {}
    assert "Take the next item" in html
    assert not Claim.objects.exists()


@pytest.mark.parametrize(
    "status", [s for s in Image.Status.values if s != Image.Status.AWAITING_REVIEW]
)
def test_reviewers_get_404_for_images_not_awaiting_review(reviewer_client, queued, status):
    image = queued(status=status)

    assert reviewer_client.get(reverse("review_item", args=[image.pk])).status_code == 404
    assert (
        reviewer_client.get(reverse("review_item", args=[image.pk]), headers=HX).status_code == 404
    )


def test_unknown_images_are_404(reviewer_client, admin_client):
    assert reviewer_client.get(reverse("review_item", args=[999999])).status_code == 404
    assert admin_client.get(reverse("review_item", args=[999999])).status_code == 404


def test_admins_open_escalated_items_with_the_decision_form(admin_client, queued):
    image = queued(status=ESCALATED)

    response = admin_client.get(reverse("review_item", args=[image.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Escalated: an admin decides." in html
    # No escalating it again, and no Skip: the admin holds no claim to give back.
    assert set(buttons(html)) == {"approve", "reject"}


@pytest.mark.parametrize("status", [APPROVED, REJECTED])
def test_admins_open_decided_items_without_a_decision_form(admin_client, queued, status):
    image = queued(status=status)

    response = admin_client.get(reverse("review_item", args=[image.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert f"This image is {image.get_status_display().lower()}." in html
    assert buttons(html) == {}


@pytest.mark.parametrize("status", [Image.Status.RECEIVED, Image.Status.FAILED])
def test_admins_get_404_for_images_that_never_reached_review(admin_client, queued, status):
    image = queued(status=status)

    assert admin_client.get(reverse("review_item", args=[image.pk])).status_code == 404


# ----------------------------------------------------------------------------------- decide


@pytest.fixture
def two_waiting(queued) -> tuple[Image, Image]:
    return queued(age=timedelta(days=1)), queued(age=timedelta(hours=1))


def test_approving_without_javascript_redirects_to_the_next_item_and_records_it(
    reviewer_client, reviewer_user, two_waiting
):
    first, second = two_waiting
    reviewer_client.post(reverse("review_next"))

    response = decide(reviewer_client, first, "approve")

    assert response.status_code == 302
    assert response["Location"] == reverse("review_item", args=[second.pk])
    first.refresh_from_db()
    assert first.status == APPROVED
    assert first.human_decided_at is not None
    decision = Decision.objects.get(image=first)
    assert decision.verdict == Decision.Verdict.APPROVE
    assert decision.reviewer == reviewer_user
    assert (decision.status_before, decision.status_after) == (WAITING, APPROVED)
    assert decision.seconds is not None
    assert decision.seconds >= 0
    entry = AuditEntry.objects.get(image=first, action="review.approved")
    assert entry.actor == reviewer_user
    assert (entry.state_before, entry.state_after) == (WAITING, APPROVED)
    assert entry.ip_address == "127.0.0.1"
    assert entry.detail["decision"] == decision.pk
    assert entry.detail["imm_suggestion"] == "review"
    assert not Claim.objects.filter(image=first).exists()
    assert Claim.objects.get(image=second).reviewer == reviewer_user
    followed = reviewer_client.get(response["Location"])
    assert f"Image {first.pk} approved." in followed.content.decode()
    assert pane_image(followed.content.decode()) == second.pk


def test_approving_with_htmx_returns_the_next_pane_with_an_undo(
    reviewer_client, reviewer_user, two_waiting
):
    first, second = two_waiting
    reviewer_client.post(reverse("review_next"))

    response = decide(reviewer_client, first, "approve", htmx=True)

    html = response.content.decode()
    decision = Decision.objects.get(image=first)
    assert response.status_code == 200
    assert "<html" not in html
    assert pane_image(html) == second.pk
    assert f"Image {first.pk} approved." in html
    assert f'action="{reverse("review_undo", args=[decision.pk])}"' in html
    assert "queue-changed" in response["HX-Trigger"]
    assert response["HX-Push-Url"] == reverse("review_item", args=[second.pk])
    assert varies_on_hx_request(response)
    first.refresh_from_db()
    assert first.status == APPROVED
    assert actions(first)[-1] == "review.approved"
    assert Claim.objects.get(image=second).reviewer == reviewer_user


def test_rejecting_without_a_reason_is_refused_and_changes_nothing(
    reviewer_client, reviewer_user, two_waiting
):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))
    before = snapshot(first)

    response = decide(reviewer_client, first, "reject", htmx=True, reject_category="", reason="  ")

    html = response.content.decode()
    assert response.status_code == 400
    assert "Say why: pick a category or write a reason." in html
    assert pane_image(html) == first.pk  # still the same item, still theirs to decide
    assert "queue-changed" not in response.get("HX-Trigger", "")
    assert snapshot(first) == before
    assert Claim.objects.get(image=first).reviewer == reviewer_user


def test_rejecting_without_a_reason_and_without_javascript_shows_the_pane_with_the_message(
    reviewer_client, two_waiting
):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))
    before = snapshot(first)

    response = decide(reviewer_client, first, "reject")

    html = response.content.decode()
    assert response.status_code == 400
    assert "<html" in html
    assert "Say why: pick a category or write a reason." in html
    assert pane_image(html) == first.pk
    assert snapshot(first) == before


def test_rejecting_with_a_category_stores_it_as_the_reason(
    reviewer_client, reviewer_user, two_waiting
):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))

    response = decide(
        reviewer_client, first, "reject", htmx=True, reject_category="porn", reason=""
    )

    assert response.status_code == 200
    assert f"Image {first.pk} rejected." in response.content.decode()
    first.refresh_from_db()
    assert first.status == REJECTED
    decision = Decision.objects.get(image=first)
    assert (decision.verdict, decision.reason) == (Decision.Verdict.REJECT, "porn")
    entry = AuditEntry.objects.get(image=first, action="review.rejected")
    assert (entry.reason, entry.actor) == ("porn", reviewer_user)


def test_rejecting_with_a_category_and_words_keeps_both(reviewer_client, two_waiting):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))

    decide(reviewer_client, first, "reject", reject_category=" sexy ", reason="  nude on a beach  ")

    assert Decision.objects.get(image=first).reason == "sexy — nude on a beach"


def test_escalating_with_a_note_sends_the_item_to_the_admins(
    reviewer_client, reviewer_user, two_waiting
):
    first, second = two_waiting
    reviewer_client.post(reverse("review_next"))

    response = decide(reviewer_client, first, "escalate", htmx=True, note="a flag I do not know")

    assert response.status_code == 200
    assert f"Image {first.pk} escalated." in response.content.decode()
    assert pane_image(response.content.decode()) == second.pk
    first.refresh_from_db()
    assert first.status == ESCALATED
    assert first.human_decided_at is None
    decision = Decision.objects.get(image=first)
    assert (decision.verdict, decision.reason) == (
        Decision.Verdict.ESCALATE,
        "a flag I do not know",
    )
    entry = AuditEntry.objects.get(image=first, action="review.escalated")
    assert (entry.state_after, entry.reason) == (ESCALATED, "a flag I do not know")
    assert entry.actor == reviewer_user


def test_escalating_without_a_note_is_refused(reviewer_client, two_waiting):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))
    before = snapshot(first)

    response = decide(reviewer_client, first, "escalate", htmx=True, note="")

    assert response.status_code == 400
    assert "Add a note for the admin who will look at it." in response.content.decode()
    assert snapshot(first) == before


def test_skipping_releases_the_item_and_serves_a_different_one(
    reviewer_client, reviewer_user, two_waiting
):
    first, second = two_waiting
    reviewer_client.post(reverse("review_next"))

    response = decide(reviewer_client, first, "skip", htmx=True)

    html = response.content.decode()
    assert response.status_code == 200
    assert pane_image(html) == second.pk
    assert "Skipped; it stays in the queue." in html
    assert "queue-changed" in response["HX-Trigger"]
    first.refresh_from_db()
    assert first.status == WAITING
    assert not Claim.objects.filter(image=first).exists()
    assert Claim.objects.get(image=second).reviewer == reviewer_user
    assert not Decision.objects.exists()
    entry = AuditEntry.objects.get(image=first, action="review.released")
    assert (entry.actor, entry.state_before, entry.state_after) == (reviewer_user, WAITING, WAITING)


def test_skipping_without_javascript_redirects_to_a_different_item(reviewer_client, two_waiting):
    first, second = two_waiting
    reviewer_client.post(reverse("review_next"))

    response = decide(reviewer_client, first, "skip")

    assert response["Location"] == reverse("review_item", args=[second.pk])
    assert actions(first)[-1] == "review.released"


def test_skipping_the_only_item_leaves_the_empty_pane_and_it_waits_for_others(
    reviewer_client, other_client, queued
):
    only = queued()
    reviewer_client.post(reverse("review_next"))

    response = decide(reviewer_client, only, "skip", htmx=True)
    theirs = other_client.post(reverse("review_next"))

    assert "1 item still waiting." in response.content.decode()
    assert theirs["Location"] == reverse("review_item", args=[only.pk])


def test_a_reviewer_deciding_an_item_an_admin_decided_meanwhile_gets_a_404_that_says_no_more(
    reviewer_client, admin_client, reviewer_user, two_waiting
):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))
    decide(admin_client, first, "approve")
    before = snapshot(first)
    assert before[:2] == (APPROVED, 1)

    response = decide(reviewer_client, first, "reject", htmx=True, reject_category="porn")

    html = response.content.decode()
    assert response.status_code == 404
    assert f"Image {first.pk} is no longer waiting for review. Nothing was changed." in html
    assert "approved" not in html.lower()
    assert "by ada" not in html
    assert pane_image(html) is None
    assert "queue-changed" not in response.get("HX-Trigger", "")
    assert snapshot(first) == before
    assert Decision.objects.get(image=first).reviewer.username == "ada"


def test_deciding_an_item_already_decided_without_javascript_is_a_404_page_that_says_why(
    reviewer_client, admin_client, two_waiting
):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))
    decide(admin_client, first, "reject", reason="spam")
    before = snapshot(first)

    response = decide(reviewer_client, first, "approve")

    html = response.content.decode()
    assert response.status_code == 404
    assert "<html" in html
    assert f"Image {first.pk} is no longer waiting for review. Nothing was changed." in html
    assert "rejected" not in html.lower()
    assert "spam" not in html
    assert snapshot(first) == before


def test_an_admin_deciding_an_item_already_decided_gets_a_409_with_its_status(
    admin_client, reviewer_client, two_waiting
):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))
    decide(reviewer_client, first, "reject", reason="spam")
    before = snapshot(first)

    response = decide(admin_client, first, "approve", htmx=True)

    html = response.content.decode()
    assert response.status_code == 409
    assert f"Image {first.pk} was already decided by rex: it is rejected." in html
    assert "Nothing was changed." in html
    assert snapshot(first) == before


def test_deciding_an_item_held_by_another_reviewer_is_a_403_naming_the_holder(
    reviewer_client, other_reviewer, queued
):
    image = queued()
    hold(image, other_reviewer)
    before = snapshot(image)

    response = decide(reviewer_client, image, "approve", htmx=True)

    html = response.content.decode()
    assert response.status_code == 403
    assert f"You can no longer decide image {image.pk}: rio holds it now." in html
    assert snapshot(image) == before
    assert Claim.objects.get(image=image).reviewer == other_reviewer


def test_deciding_after_the_claim_expired_is_a_403(reviewer_client, reviewer_user, queued):
    image = queued()
    claim = hold(image, reviewer_user)
    Claim.objects.filter(pk=claim.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    before = snapshot(image)

    response = decide(reviewer_client, image, "approve", htmx=True)

    assert response.status_code == 403
    assert "your claim on it has expired" in response.content.decode()
    assert snapshot(image) == before


@pytest.mark.parametrize("htmx", [True, False])
def test_an_unknown_action_is_a_400(reviewer_client, reviewer_user, queued, htmx):
    image = queued()
    hold(image, reviewer_user)
    before = snapshot(image)

    response = decide(reviewer_client, image, "delete", htmx=htmx)

    assert response.status_code == 400
    assert "Choose Approve, Reject, Escalate or Skip." in response.content.decode()
    assert snapshot(image) == before


def test_deciding_is_post_only(reviewer_client, reviewer_user, queued):
    image = queued()
    hold(image, reviewer_user)

    response = reviewer_client.get(reverse("review_decide", args=[image.pk]), {"action": "approve"})

    assert response.status_code == 405
    image.refresh_from_db()
    assert image.status == WAITING


def test_an_admin_decides_without_a_claim(admin_client, admin_user, queued):
    image = queued()

    response = decide(admin_client, image, "approve", htmx=True)

    assert response.status_code == 200
    image.refresh_from_db()
    assert image.status == APPROVED
    decision = Decision.objects.get(image=image)
    assert decision.reviewer == admin_user
    assert decision.seconds is None
    assert AuditEntry.objects.get(image=image, action="review.approved").actor == admin_user


def test_an_admin_decides_an_item_a_reviewer_holds(admin_client, reviewer_user, queued):
    image = queued()
    hold(image, reviewer_user)

    decide(admin_client, image, "reject", reject_category="sexy")

    image.refresh_from_db()
    assert image.status == REJECTED
    assert not Claim.objects.filter(image=image).exists()


def test_an_admin_decides_an_escalated_item(admin_client, admin_user, queued):
    image = queued(status=ESCALATED)

    response = decide(admin_client, image, "approve")

    assert response.status_code == 302
    image.refresh_from_db()
    assert image.status == APPROVED
    entry = AuditEntry.objects.get(image=image, action="review.approved")
    assert (entry.state_before, entry.actor) == (ESCALATED, admin_user)


def test_a_reviewer_cannot_decide_an_escalated_item(reviewer_client, reviewer_user, queued):
    image = queued(status=ESCALATED)
    hold(image, reviewer_user)
    before = snapshot(image)

    response = decide(reviewer_client, image, "approve", htmx=True)

    assert response.status_code == 404
    assert "Escalated" not in response.content.decode()
    assert snapshot(image) == before


def test_the_last_decision_leaves_the_empty_pane(reviewer_client, queued):
    only = queued()
    reviewer_client.post(reverse("review_next"))

    response = decide(reviewer_client, only, "approve", htmx=True)

    html = response.content.decode()
    assert response.status_code == 200
    assert pane_image(html) is None
    assert "Nothing is waiting for review." in html
    assert f"Image {only.pk} approved." in html
    assert reverse("review_undo", args=[Decision.objects.get().pk]) in html
    assert response["HX-Push-Url"] == reverse("review_next")
    assert "queue-changed" in response["HX-Trigger"]


def test_the_last_decision_without_javascript_goes_back_to_the_queue(reviewer_client, queued):
    only = queued()
    reviewer_client.post(reverse("review_next"))

    response = decide(reviewer_client, only, "approve")
    followed = reviewer_client.get(response["Location"])

    assert response["Location"] == reverse("review_queue")
    assert f"Image {only.pk} approved." in followed.content.decode()


def test_the_next_item_after_a_decision_is_one_nobody_else_holds(
    reviewer_client, reviewer_user, other_reviewer, queued
):
    first = queued(age=timedelta(days=2))
    taken = queued(age=timedelta(days=1))
    free = queued(age=timedelta(hours=1))
    hold(taken, other_reviewer)
    reviewer_client.post(reverse("review_next"))

    response = decide(reviewer_client, first, "approve", htmx=True)

    assert pane_image(response.content.decode()) == free.pk
    assert Claim.objects.get(image=taken).reviewer == other_reviewer


# ------------------------------------------------------------------------------------- undo


@pytest.fixture
def approved_by_reviewer(reviewer_client, two_waiting) -> tuple[Image, Image, Decision]:
    first, second = two_waiting
    reviewer_client.post(reverse("review_next"))
    decide(reviewer_client, first, "approve", htmx=True)
    return first, second, Decision.objects.get(image=first)


def test_undo_within_the_window_puts_the_item_back_with_the_reviewer(
    reviewer_client, reviewer_user, approved_by_reviewer
):
    first, _, decision = approved_by_reviewer

    response = reviewer_client.post(reverse("review_undo", args=[decision.pk]), headers=HX)

    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert pane_image(html) == first.pk
    assert "Undone" in html
    assert set(buttons(html)) == {"approve", "skip", "reject", "escalate"}
    assert "queue-changed" in response["HX-Trigger"]
    assert response["HX-Push-Url"] == reverse("review_item", args=[first.pk])
    first.refresh_from_db()
    assert first.status == WAITING
    assert first.human_decided_at is None
    claim = Claim.objects.get(image=first)
    assert claim.reviewer == reviewer_user
    assert claim.expires_at > timezone.now()
    undo = Decision.objects.get(undoes=decision)
    assert (undo.verdict, undo.reviewer) == (Decision.Verdict.UNDO, reviewer_user)
    assert actions(first)[-2:] == ["review.approved", "review.undone"]
    entry = AuditEntry.objects.get(image=first, action="review.undone")
    assert (entry.state_before, entry.state_after) == (APPROVED, WAITING)


def test_undo_without_javascript_redirects_to_the_item(reviewer_client, approved_by_reviewer):
    first, _, decision = approved_by_reviewer

    response = reviewer_client.post(reverse("review_undo", args=[decision.pk]))
    followed = reviewer_client.get(response["Location"])

    assert response.status_code == 302
    assert response["Location"] == reverse("review_item", args=[first.pk])
    assert f"Undone: image {first.pk} is back with you." in followed.content.decode()
    assert set(buttons(followed.content.decode())) == {"approve", "skip", "reject", "escalate"}
    first.refresh_from_db()
    assert first.status == WAITING


def test_a_second_undo_is_refused_with_409(reviewer_client, approved_by_reviewer):
    first, _, decision = approved_by_reviewer
    reviewer_client.post(reverse("review_undo", args=[decision.pk]), headers=HX)
    before = snapshot(first)

    response = reviewer_client.post(reverse("review_undo", args=[decision.pk]), headers=HX)

    assert response.status_code == 409
    assert "That decision was already undone." in response.content.decode()
    assert snapshot(first) == before
    assert Decision.objects.filter(verdict=Decision.Verdict.UNDO).count() == 1


def test_undo_after_the_window_is_refused_with_409(reviewer_client, approved_by_reviewer, settings):
    first, _, decision = approved_by_reviewer
    before = snapshot(first)

    later = timezone.now() + timedelta(seconds=settings.REVIEW_UNDO_SECONDS + 1)
    with time_machine.travel(later, tick=False):
        response = reviewer_client.post(reverse("review_undo", args=[decision.pk]), headers=HX)

    assert response.status_code == 409
    assert "Too late to undo" in response.content.decode()
    assert snapshot(first) == before


def test_undo_with_a_zero_window_is_refused_without_javascript_with_a_message(
    reviewer_client, approved_by_reviewer, settings
):
    first, _, decision = approved_by_reviewer
    settings.REVIEW_UNDO_SECONDS = 0
    before = snapshot(first)

    response = reviewer_client.post(reverse("review_undo", args=[decision.pk]), follow=True)

    assert response.redirect_chain[0] == (reverse("review_next"), 302)
    assert any("Too late to undo" in m for m in messages_of(response))
    assert snapshot(first) == before


def test_nobody_undoes_someone_elses_decision(other_client, approved_by_reviewer):
    first, _, decision = approved_by_reviewer
    before = snapshot(first)

    response = other_client.post(reverse("review_undo", args=[decision.pk]), headers=HX)

    assert response.status_code == 404
    assert "There is no decision of yours to undo." in response.content.decode()
    assert snapshot(first) == before


# ------------------------------------------------------------------------------------ renew


def test_renewing_extends_the_lease_of_the_claimant(reviewer_client, reviewer_user, queued):
    image = queued()
    claim = hold(image, reviewer_user, seconds=30)

    response = reviewer_client.post(reverse("review_renew", args=[image.pk]), headers=HX)

    assert response.status_code == 204
    renewed = Claim.objects.get(image=image)
    assert renewed.expires_at > claim.expires_at + timedelta(seconds=200)
    assert renewed.reviewer == reviewer_user


def test_renewing_an_item_someone_else_holds_is_a_409(reviewer_client, other_reviewer, queued):
    image = queued()
    claim = hold(image, other_reviewer, seconds=30)

    response = reviewer_client.post(reverse("review_renew", args=[image.pk]), headers=HX)

    assert response.status_code == 409
    assert "Your claim on this image has expired" in response.content.decode()
    assert Claim.objects.get(image=image).expires_at == claim.expires_at
    assert Claim.objects.get(image=image).reviewer == other_reviewer


def test_renewing_an_expired_claim_is_a_409(reviewer_client, reviewer_user, queued):
    image = queued()
    claim = hold(image, reviewer_user, seconds=-1)

    response = reviewer_client.post(reverse("review_renew", args=[image.pk]))

    assert response.status_code == 409
    assert Claim.objects.get(image=image).expires_at == claim.expires_at


def test_renewing_a_claim_on_an_image_settled_meanwhile_is_a_404_that_says_so_without_how(
    reviewer_client, reviewer_user, queued
):
    image = queued()
    claim = hold(image, reviewer_user, seconds=30)
    # IMM's own manual review passes it while the reviewer is looking at it.
    Image.objects.filter(pk=image.pk).update(status=Image.Status.APPROVED)

    response = reviewer_client.post(reverse("review_renew", args=[image.pk]), headers=HX)

    assert response.status_code == 404
    assert response.content.decode() == (
        f"Image {image.pk} is no longer waiting for review. Nothing was changed. "
        "Take the next item from the queue."
    )
    assert Claim.objects.get(image=image).expires_at == claim.expires_at


def test_an_admin_renewing_a_claim_on_an_image_settled_meanwhile_is_told_how(
    admin_client, admin_user, queued
):
    image = queued()
    claim = hold(image, admin_user, seconds=30)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.APPROVED)

    response = admin_client.post(reverse("review_renew", args=[image.pk]), headers=HX)

    assert response.status_code == 409
    assert response.content.decode() == (
        f"Image {image.pk} was settled meanwhile: it is approved. "
        "Take the next item from the queue."
    )
    assert Claim.objects.get(image=image).expires_at == claim.expires_at


# ------------------------------------------------------------------------------ preferences


def test_greyscale_is_saved_and_the_queue_renders_grey_thumbnails(
    reviewer_client, reviewer_user, queued
):
    queued()
    url = reverse("review_preferences")

    on = reviewer_client.post(url, {"greyscale": "on", "next": "/reviews/?scene=porn"})
    grey = reviewer_client.get(reverse("review_queue")).content.decode()
    off = reviewer_client.post(url, {"next": "/reviews/"})
    colour = reviewer_client.get(reverse("review_queue")).content.decode()

    assert on.status_code == 302
    assert on["Location"] == "/reviews/?scene=porn"
    assert 'class="sensitive mini grey"' in grey
    assert 'name="greyscale" checked' in grey
    assert off["Location"] == "/reviews/"
    assert 'class="sensitive mini grey"' not in colour
    assert 'name="greyscale" checked' not in colour
    assert ReviewerPreference.objects.get(user=reviewer_user).greyscale is False


def test_greyscale_is_per_reviewer(reviewer_client, other_client, queued):
    queued()

    reviewer_client.post(reverse("review_preferences"), {"greyscale": "on"})

    assert (
        'class="sensitive mini grey"'
        in reviewer_client.get(reverse("review_queue")).content.decode()
    )
    assert (
        'class="sensitive mini grey"'
        not in other_client.get(reverse("review_queue")).content.decode()
    )


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/phish",
        "//evil.example/phish",
        "/\\evil.example/phish",
        "javascript:alert(1)",
        "reviews/",
        "",
    ],
)
def test_preferences_go_back_only_to_local_paths(reviewer_client, reviewer_user, target):
    response = reviewer_client.post(
        reverse("review_preferences"), {"greyscale": "on", "next": target}
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("review_queue")
    assert ReviewerPreference.objects.get(user=reviewer_user).greyscale is True


def test_preferences_with_htmx_redirect_the_client(reviewer_client, reviewer_user):
    response = reviewer_client.post(
        reverse("review_preferences"), {"greyscale": "on", "next": "/reviews/?age=old"}, headers=HX
    )
    refused = reviewer_client.post(
        reverse("review_preferences"), {"next": "//evil.example/"}, headers=HX
    )

    assert response["HX-Redirect"] == "/reviews/?age=old"
    assert refused["HX-Redirect"] == reverse("review_queue")
    assert ReviewerPreference.objects.get(user=reviewer_user).greyscale is False


# -------------------------------------------------------------------------------- escalated


@pytest.fixture
def escalated_by_reviewer(reviewer_client, queued) -> Image:
    image = queued(age=timedelta(hours=1))
    reviewer_client.post(reverse("review_next"))
    decide(reviewer_client, image, "escalate", note="is that a real weapon?")
    image.refresh_from_db()
    assert image.status == ESCALATED
    return image


def test_the_escalated_list_shows_escalated_items_first_with_their_note(
    admin_client, escalated_by_reviewer, queued
):
    waiting_old = queued(age=timedelta(days=3))
    queued(status=APPROVED)

    response = admin_client.get(reverse("review_escalated"))

    html = response.content.decode()
    assert response.status_code == 200
    assert listed(html) == [escalated_by_reviewer.pk, waiting_old.pk]
    row = html[html.index(f'value="{escalated_by_reviewer.pk}"') :].split("</tr>")[0]
    assert "is that a real weapon?" in row
    assert "— rex" in row
    assert "Escalated to an admin" in row
    other = html[html.index(f'value="{waiting_old.pk}"') :].split("</tr>")[0]
    assert "Awaiting review" in other
    assert "weapon" not in other


def test_the_escalated_list_shows_the_latest_escalation_note_only(
    reviewer_client, admin_client, escalated_by_reviewer
):
    image = escalated_by_reviewer
    decision = Decision.objects.get(image=image)
    reviewer_client.post(reverse("review_undo", args=[decision.pk]))
    decide(reviewer_client, image, "escalate", note="second look: a toy")

    html = admin_client.get(reverse("review_escalated")).content.decode()

    assert "second look: a toy" in html
    assert "is that a real weapon?" not in html


def test_an_undone_escalation_leaves_no_note_behind(
    reviewer_client, admin_client, escalated_by_reviewer
):
    decision = Decision.objects.get(image=escalated_by_reviewer)
    reviewer_client.post(reverse("review_undo", args=[decision.pk]))

    html = admin_client.get(reverse("review_escalated")).content.decode()

    assert listed(html) == [escalated_by_reviewer.pk]
    assert "is that a real weapon?" not in html


def test_reviewers_cannot_open_the_escalated_list_or_decide_in_bulk(reviewer_client, queued):
    image = queued()
    before = snapshot(image)

    assert reviewer_client.get(reverse("review_escalated")).status_code == 403
    response = reviewer_client.post(
        reverse("review_bulk"), {"action": "approve", "images": [image.pk]}
    )

    assert response.status_code == 403
    assert snapshot(image) == before


def test_bulk_approve_decides_each_item_with_its_own_decision_and_audit_entry(
    admin_client, admin_user, escalated_by_reviewer, queued
):
    chosen = [escalated_by_reviewer, queued(), queued()]
    untouched = queued()

    response = admin_client.post(
        reverse("review_bulk"),
        {"action": "approve", "images": [image.pk for image in chosen]},
        follow=True,
    )

    assert response.redirect_chain == [(reverse("review_escalated"), 302)]
    assert "3 image(s) approved, each on the audit log." in messages_of(response)
    for image in chosen:
        image.refresh_from_db()
        assert image.status == APPROVED
        decision = Decision.objects.get(image=image, verdict=Decision.Verdict.APPROVE)
        assert decision.reviewer == admin_user
        entry = AuditEntry.objects.get(image=image, action="review.approved")
        assert entry.actor == admin_user
        assert entry.detail["decision"] == decision.pk
    untouched.refresh_from_db()
    assert untouched.status == WAITING
    assert listed(response.content.decode()) == [untouched.pk]


def test_bulk_reject_with_a_reason_stores_it_on_each(admin_client, queued):
    chosen = [queued(), queued()]

    admin_client.post(
        reverse("review_bulk"),
        {"action": "reject", "reason": "spam wave", "images": [i.pk for i in chosen]},
    )

    for image in chosen:
        image.refresh_from_db()
        assert image.status == REJECTED
        assert AuditEntry.objects.get(image=image, action="review.rejected").reason == "spam wave"
    assert set(Decision.objects.values_list("reason", flat=True)) == {"spam wave"}


def test_bulk_reject_without_a_reason_changes_nothing(admin_client, queued):
    chosen = [queued(), queued()]
    before = [snapshot(image) for image in chosen]

    response = admin_client.post(
        reverse("review_bulk"),
        {"action": "reject", "reason": "   ", "images": [i.pk for i in chosen]},
        follow=True,
    )

    assert "Rejecting needs a reason." in messages_of(response)
    assert [snapshot(image) for image in chosen] == before


def test_bulk_with_an_unknown_action_changes_nothing(admin_client, queued):
    image = queued()
    before = snapshot(image)

    response = admin_client.post(
        reverse("review_bulk"), {"action": "escalate", "images": [image.pk]}, follow=True
    )

    assert "Choose Approve or Reject." in messages_of(response)
    assert snapshot(image) == before


def test_bulk_with_an_already_decided_item_decides_the_others_and_names_the_refused_one(
    admin_client, reviewer_client, reviewer_user, queued
):
    decided, fresh, other = queued(age=timedelta(days=1)), queued(), queued()
    reviewer_client.post(reverse("review_next"))
    decide(reviewer_client, decided, "reject", reject_category="porn")
    before = snapshot(decided)

    response = admin_client.post(
        reverse("review_bulk"),
        {"action": "approve", "images": [decided.pk, fresh.pk, other.pk, 999999]},
        follow=True,
    )

    lines = messages_of(response)
    assert "2 image(s) approved, each on the audit log." in lines
    assert (
        f"{decided.pk}: Image {decided.pk} was already decided by rex: it is rejected. "
        "Nothing was changed."
    ) in lines
    assert "999999: not found" in lines
    assert snapshot(decided) == before
    for image in (fresh, other):
        image.refresh_from_db()
        assert image.status == APPROVED
        assert AuditEntry.objects.filter(image=image, action="review.approved").count() == 1


def test_rejecting_with_a_category_does_not_filter_the_next_item(reviewer_client, make_image):
    first = make_image(status=Image.Status.AWAITING_REVIEW)
    second = make_image(status=Image.Status.AWAITING_REVIEW)
    reviewer_client.post(reverse("review_next"))
    response = decide(reviewer_client, first, "reject", htmx=True, reject_category="bloody")
    assert response.status_code == 200
    assert f'data-image="{second.pk}"' in response.content.decode()


# ------------------------------------------------------------- escalated items, for the admin


def test_the_admin_deciding_an_escalated_item_sees_the_note_who_and_when_at_the_top(
    admin_client, escalated_by_reviewer
):
    image = escalated_by_reviewer
    escalation = Decision.objects.get(image=image, verdict=Decision.Verdict.ESCALATE)

    for headers in ({}, HX):
        html = admin_client.get(reverse("review_item", args=[image.pk]), headers=headers)
        html = html.content.decode()

        top = html[html.index('<section id="pane"') : html.index('class="pane-body"')]
        assert "Escalated by rex" in top
        assert "is that a real weapon?" in top
        assert f'datetime="{escalation.created_at.isoformat()}"' in top
        # Its way back is the escalated list it came from, not the general queue.
        assert f'<a href="{reverse("review_escalated")}">← Escalated</a>' in top
        assert f'href="{reverse("review_queue")}"' not in top


def test_the_note_shown_is_the_escalation_that_stands_not_an_undone_one(
    reviewer_client, admin_client, two_waiting
):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))
    decide(reviewer_client, first, "escalate", note="first thought")
    undone = Decision.objects.get(image=first)
    reviewer_client.post(reverse("review_undo", args=[undone.pk]))
    decide(reviewer_client, first, "escalate", note="second thought")

    html = admin_client.get(reverse("review_item", args=[first.pk])).content.decode()

    top = html[html.index('<section id="pane"') : html.index('class="pane-body"')]
    assert "second thought" in top
    assert "first thought" not in top  # only in the history below


def test_an_escalated_item_without_a_note_shows_no_escalation_box(admin_client, queued):
    image = queued(status=ESCALATED)

    html = admin_client.get(reverse("review_item", args=[image.pk])).content.decode()

    assert "Escalated by" not in html


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_after_deciding_an_escalated_item_the_admin_returns_to_the_escalated_list(
    admin_client, escalated_by_reviewer, queued, action
):
    image = escalated_by_reviewer
    queued(age=timedelta(days=2))  # waiting in the general queue: not where the admin goes

    with_htmx = decide(admin_client, image, action, htmx=True, reason="weapon")
    image.refresh_from_db()

    assert with_htmx.status_code == 200
    decision = Decision.objects.get(image=image, reviewer__username="ada")
    assert with_htmx["HX-Redirect"] == f"{reverse('review_escalated')}?undo={decision.pk}"
    assert image.status == (APPROVED if action == "approve" else REJECTED)
    assert not Claim.objects.exists()  # the admin was not handed a queue item
    listed_page = admin_client.get(reverse("review_escalated"))
    assert f"Image {image.pk} {image.get_status_display().lower()}." in messages_of(listed_page)


def test_without_javascript_the_admin_is_redirected_to_the_escalated_list(
    admin_client, escalated_by_reviewer
):
    response = decide(admin_client, escalated_by_reviewer, "approve")

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("review_escalated") + "?undo=")


def test_the_escalated_list_offers_the_admin_the_undo_of_their_decision(
    admin_client, escalated_by_reviewer, settings
):
    image = escalated_by_reviewer
    listing = admin_client.get(decide(admin_client, image, "approve")["Location"])
    decision = Decision.objects.get(image=image, verdict=Decision.Verdict.APPROVE)
    undo_url = reverse("review_undo", args=[decision.pk])
    assert f'action="{undo_url}"' in listing.content.decode()

    undone = admin_client.post(undo_url)

    image.refresh_from_db()
    assert undone["Location"] == reverse("review_item", args=[image.pk])
    assert image.status == ESCALATED
    # Someone else's decision, or one past the window, offers no button.
    other = client_for(user("ana", "admin")).get(
        f"{reverse('review_escalated')}?undo={decision.pk}"
    )
    assert 'action="/reviews/decisions/' not in other.content.decode()


def test_an_admin_deciding_a_waiting_item_still_gets_the_next_one(admin_client, two_waiting):
    first, second = two_waiting

    response = decide(admin_client, first, "approve")

    assert response["Location"] == reverse("review_item", args=[second.pk])


# ------------------------------------------------------------------------------ waiting age


@pytest.mark.parametrize(
    ("action", "data"), [("approve", {}), ("reject", {"reason": "no"}), ("escalate", {"note": "?"})]
)
def test_undo_gives_the_item_back_its_waiting_age_and_its_place_in_the_queue(
    reviewer_client, two_waiting, action, data
):
    first, second = two_waiting
    waited_since = first.status_changed_at
    reviewer_client.post(reverse("review_next"))
    decide(reviewer_client, first, action, **data)
    decision = Decision.objects.get(image=first)

    reviewer_client.post(reverse("review_undo", args=[decision.pk]))

    first.refresh_from_db()
    assert first.status == WAITING
    assert first.status_changed_at == waited_since
    assert decision.status_changed_before == waited_since
    assert listed(reviewer_client.get(reverse("review_queue")).content.decode()) == [
        first.pk,
        second.pk,
    ]


def test_skip_keeps_the_items_waiting_age(reviewer_client, two_waiting):
    first, _ = two_waiting
    waited_since = first.status_changed_at
    reviewer_client.post(reverse("review_next"))

    decide(reviewer_client, first, "skip", htmx=True)

    first.refresh_from_db()
    assert (first.status, first.status_changed_at) == (WAITING, waited_since)


# ----------------------------------------------------------------------------- text limits


def test_the_forms_offer_exactly_the_limit_the_service_accepts(
    reviewer_client, admin_client, two_waiting
):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))

    pane = reviewer_client.get(reverse("review_item", args=[first.pk])).content.decode()
    listing = admin_client.get(reverse("review_escalated")).content.decode()
    rules = admin_client.get(reverse("routing_rules")).content.decode()

    assert f'name="reason" maxlength="{limits.WORDS_MAX}"' in pane
    assert f'name="note" maxlength="{limits.WORDS_MAX}"' in pane
    assert f'name="reason" maxlength="{limits.WORDS_MAX}"' in listing
    assert f'name="note" maxlength="{limits.RULE_NOTE_MAX}"' in rules
    assert f'maxlength="{limits.CATEGORY_MAX}"' in rules


@pytest.mark.parametrize("category", ["", "sexy"])
def test_a_reason_of_exactly_the_limit_is_stored_whole_in_the_decision_and_the_audit_entry(
    reviewer_client, two_waiting, category
):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))
    words = "é" * (limits.WORDS_MAX - 1) + "!"

    response = decide(reviewer_client, first, "reject", reject_category=category, reason=words)

    assert response.status_code == 302
    expected = f"{category} — {words}" if category else words
    assert Decision.objects.get(image=first).reason == expected
    assert AuditEntry.objects.get(image=first, action="review.rejected").reason == expected


def test_an_escalation_note_of_exactly_the_limit_is_stored_whole(reviewer_client, two_waiting):
    first, _ = two_waiting
    reviewer_client.post(reverse("review_next"))
    note = "n" * limits.WORDS_MAX

    decide(reviewer_client, first, "escalate", note=note)

    assert Decision.objects.get(image=first).reason == note
    assert AuditEntry.objects.get(image=first, action="review.escalated").reason == note


def test_a_bulk_reason_of_exactly_the_limit_is_stored_whole(admin_client, queued):
    chosen = [queued(), queued()]
    reason = "b" * limits.WORDS_MAX

    admin_client.post(
        reverse("review_bulk"),
        {"action": "reject", "reason": reason, "images": [i.pk for i in chosen]},
    )

    for image in chosen:
        assert Decision.objects.get(image=image).reason == reason
        assert AuditEntry.objects.get(image=image, action="review.rejected").reason == reason


def test_bulk_reject_without_a_reason_is_a_400_on_the_list(admin_client, queued):
    image = queued()
    before = snapshot(image)

    response = admin_client.post(
        reverse("review_bulk"), {"action": "reject", "reason": " ", "images": [image.pk]}
    )

    assert response.status_code == 400
    assert "Rejecting needs a reason." in messages_of(response)
    assert snapshot(image) == before


# -------------------------------------------------------------------------- counts vs the list


def waiting_figure(html: str) -> str:
    found = re.search(r'<span class="figure" id="waiting-count">([^<]*)</span>', html)
    assert found is not None
    return found.group(1)


def approve(admin_user: Any, image_ids: list[int]) -> None:
    from reviews import services

    for pk in image_ids:
        services.decide(image_id=pk, reviewer=admin_user, verdict=Decision.Verdict.APPROVE)


def test_counts_cached_above_a_list_that_shrank_agree_with_its_rows(
    reviewer_client, admin_user, mixed_queue
):
    url = reverse("review_queue")
    first = reviewer_client.get(url, {"scene": "porn"}).content.decode()
    assert waiting_figure(first) == "2"

    approve(admin_user, [mixed_queue["old_sexy"].pk, mixed_queue["weapon"].pk])
    html = reviewer_client.get(url, {"scene": "porn"}).content.decode()
    everything = reviewer_client.get(url).content.decode()

    assert listed(html) == [mixed_queue["porn_and_sexy"].pk]
    assert waiting_figure(html) == "1"
    assert '<option value="sexy" selected>sexy (1)</option>' not in html  # the filter is a scene
    assert '<option value="sexy" >sexy (1)</option>' in html
    assert '<option value="1d" >1 to 24 hours (1)</option>' in html
    assert '<option value="old" >Over a day (0)</option>' in html
    assert len(listed(everything)) == 2
    assert waiting_figure(everything) == "2"
    assert '<option value="terrorism" >terrorism (1)</option>' in everything


def test_a_queue_that_shrank_to_one_page_is_counted_afresh(reviewer_client, admin_user):
    ids = bare_waiting(PAGE_SIZE + 2)
    url = reverse("review_queue")
    assert waiting_figure(reviewer_client.get(url).content.decode()) == str(PAGE_SIZE + 2)

    approve(admin_user, ids[:10])
    html = reviewer_client.get(url).content.decode()

    assert len(listed(html)) == PAGE_SIZE - 8
    assert 'rel="next"' not in html
    assert waiting_figure(html) == str(PAGE_SIZE - 8)
    assert '<option value="sexy" >sexy (42)</option>' in html


def test_a_cached_count_a_longer_list_disproves_is_taken_again(reviewer_client):
    bare_waiting(3)
    url = reverse("review_queue")
    assert waiting_figure(reviewer_client.get(url).content.decode()) == "3"

    bare_waiting(PAGE_SIZE + 7)
    html = reviewer_client.get(url).content.decode()

    assert len(listed(html)) == PAGE_SIZE
    assert 'rel="next"' in html
    assert waiting_figure(html) == str(PAGE_SIZE + 10)


def test_a_deeper_page_never_shows_fewer_waiting_than_its_own_rows(reviewer_client):
    first_three = bare_waiting(3, oldest=timedelta(days=5))
    url = reverse("review_queue")
    assert waiting_figure(reviewer_client.get(url).content.decode()) == "3"
    bare_waiting(2 * PAGE_SIZE, oldest=timedelta(days=1))
    # A bookmarked page after the first three rows, while the count of 3 is still cached.
    third = Image.objects.get(pk=first_three[-1])
    after = f"{int(third.status_changed_at.timestamp() * 1_000_000)}.{third.pk}"

    deep = reviewer_client.get(url, {"after": after}).content.decode()

    assert len(listed(deep)) == PAGE_SIZE
    assert waiting_figure(deep) == str(2 * PAGE_SIZE + 3)


def test_the_oldest_waiting_figure_follows_the_first_row_of_the_queue(reviewer_client, admin_user):
    ids = bare_waiting(PAGE_SIZE + 2, oldest=timedelta(days=3))
    url = reverse("review_queue")
    reviewer_client.get(url)

    approve(admin_user, ids[:2])  # the oldest pair (pairs share a status time)
    html = reviewer_client.get(url).content.decode()

    third = Image.objects.get(pk=ids[2]).status_changed_at
    figures = html[html.index('aria-label="Your figures"') :].split("</section>")[0]
    assert f'<span class="figure">{timesince(third)}</span><span class="muted">oldest' in figures
    assert listed(html)[0] == ids[2]


def test_a_large_queue_page_still_reads_its_counts_from_the_cache(reviewer_client):
    bare_waiting(PAGE_SIZE + 5)
    url = reverse("review_queue")
    with CaptureQueriesContext(connection) as cold:
        reviewer_client.get(url)

    with CaptureQueriesContext(connection) as warm:
        html = reviewer_client.get(url).content.decode()

    counting = [
        q["sql"]
        for q in warm.captured_queries
        if "COUNT(" in q["sql"].upper() and "reviews_decision" not in q["sql"]
    ]
    assert counting == []  # the reviewer's own figures aside
    assert len(cold) - len(warm) >= 6  # total, oldest, categories, scenes and the ages: cached
    assert waiting_figure(html) == str(PAGE_SIZE + 5)


def test_a_small_queue_s_fresh_counts_cost_the_same_queries_whatever_its_size(reviewer_client):
    url = reverse("review_queue")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert reviewer_client.get(url).status_code == 200
        return len(captured)

    bare_waiting(2)
    reviewer_client.get(url)
    two = queries()
    bare_waiting(PAGE_SIZE - 2)
    reviewer_client.get(url)
    fifty = queries()

    assert two == fifty


def test_an_age_filtered_page_counts_its_own_rows_afresh_and_the_other_ages_expire(
    reviewer_client, admin_user, mixed_queue
):
    url = reverse("review_queue")
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        html = reviewer_client.get(url, {"age": "1h"}).content.decode()
        assert waiting_figure(html) == "2"
        assert '<option value="old" >Over a day (1)</option>' in html

        approve(admin_user, [mixed_queue["weapon"].pk, mixed_queue["old_sexy"].pk])
        soon = reviewer_client.get(url, {"age": "1h"}).content.decode()
        traveller.shift(timedelta(seconds=31))
        later = reviewer_client.get(url, {"age": "1h"}).content.decode()

    assert listed(soon) == [mixed_queue["politics"].pk]
    assert waiting_figure(soon) == "1"
    assert '<option value="1h" selected>Under an hour (1)</option>' in soon
    # The other ages are what the cache held (no scan of the whole queue for a one-row page)
    # until the cache expires.
    assert '<option value="old" >Over a day (1)</option>' in soon
    assert '<option value="old" >Over a day (0)</option>' in later
    assert waiting_figure(later) == "1"
