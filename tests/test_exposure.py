"""Reviewer exposure: every showing of clear pixels counted per reviewer, day, category and
variant; the admins' page and daily caps; opt-outs; the break reminder."""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from django.http import Http404
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from moderation.accounts import create_user
from moderation.models import AuditEntry, Image, ImageCategory
from reviews import services
from reviews.exposure import breaks, counting, limits
from reviews.exposure.models import ExposureCap, ExposureCount, OptOut
from reviews.models import Claim, Decision, Reveal, record_reveal

from .conftest import PASSWORD, postgres_only

WAITING = Image.Status.AWAITING_REVIEW


def user(username: str, role: str = "reviewer") -> Any:
    return create_user(username=username, role=role, password=PASSWORD, validate=False)


def web(someone: Any) -> Client:
    client = Client()
    client.force_login(someone)
    return client


@pytest.fixture
def queued(make_image) -> Callable[..., Image]:
    def make(*categories: str, age: timedelta = timedelta(minutes=10)) -> Image:
        image = make_image(status=WAITING)
        Image.objects.filter(pk=image.pk).update(
            status_changed_at=timezone.now() - age,
            imm_suggestion="review",
            imm_categories=list(categories),
        )
        ImageCategory.objects.bulk_create(
            ImageCategory(image=image, category=c) for c in categories
        )
        image.refresh_from_db()
        return image

    return make


def shown(reviewer: Any) -> dict[tuple[str, str], int]:
    """(category, rendition) -> times shown, for the counts that are not zero."""
    out = {}
    for row in ExposureCount.objects.filter(reviewer=reviewer):
        for variant, n in (
            ("preview", row.previews),
            ("thumbnail", row.thumbnails),
            ("original", row.originals),
        ):
            if n:
                out[(row.category, variant)] = n
    return out


# ------------------------------------------------------------------------------ counting


@pytest.mark.django_db
def test_each_clear_variant_served_is_counted_per_category_and_blurred_ones_are_not(
    queued, admin_client, admin_user
):
    image = queued("porn", "sexy")
    for variant in ("preview-blurred", "thumbnail-blurred"):
        assert admin_client.get(reverse("image_file", args=[image.pk, variant])).status_code == 200
    assert shown(admin_user) == {}
    assert admin_client.head(reverse("image_file", args=[image.pk, "preview"])).status_code == 200
    assert shown(admin_user) == {}  # a HEAD carries no pixels

    for variant in ("preview", "preview", "thumbnail", "original"):
        response = admin_client.get(reverse("image_file", args=[image.pk, variant]))
        assert response.status_code == 200
        b"".join(response.streaming_content)

    assert shown(admin_user) == {
        ("porn", "preview"): 2,
        ("sexy", "preview"): 2,
        ("porn", "thumbnail"): 1,
        ("sexy", "thumbnail"): 1,
        ("porn", "original"): 1,
        ("sexy", "original"): 1,
    }
    assert Reveal.objects.filter(reviewer=admin_user).count() == 4
    assert counting.today(admin_user.pk) == {"porn": 4, "sexy": 4}
    assert ExposureCount.objects.first().day == timezone.localdate()


@pytest.mark.django_db
def test_a_reviewer_s_reveal_in_the_pane_counts_and_an_image_with_no_category_counts_as_none(
    queued, reviewer_client, reviewer_user
):
    image = queued()
    response = reviewer_client.get(reverse("image_file", args=[image.pk, "preview"]))
    b"".join(response.streaming_content)
    assert shown(reviewer_user) == {("", "preview"): 1}


@pytest.mark.django_db
def test_the_day_is_the_server_s_calendar_day(queued, reviewer_user, settings):
    settings.TIME_ZONE = "Asia/Shanghai"
    image = queued("porn")
    # 23:30 UTC on 1 December is 07:30 on 2 December in Shanghai.
    counting.count(
        image=image,
        user=reviewer_user,
        variant="preview",
        now=datetime(2026, 12, 1, 23, 30, tzinfo=UTC),
    )
    assert ExposureCount.objects.get().day.isoformat() == "2026-12-02"


# ------------------------------------------------------------------------------ caps


def reveal(image: Image, reviewer: Any) -> None:
    counting.count(image=image, user=reviewer, variant="preview")


@pytest.mark.django_db
def test_at_the_cap_start_reviewing_hands_other_categories_and_the_queue_says_why(queued):
    ExposureCap.objects.create(category="porn", images=2)
    porn_old = queued("porn", age=timedelta(hours=2))
    other = queued("bloody", age=timedelta(hours=1))
    seen = [queued("porn"), queued("porn")]
    reviewer = user("rex")
    colleague = user("rio")
    for image in seen:
        reveal(image, reviewer)

    client = web(reviewer)
    client.post(reverse("review_next"))
    assert Claim.objects.get(reviewer=reviewer).image_id == other.pk
    # Others still get the category.
    web(colleague).post(reverse("review_next"))
    assert Claim.objects.get(reviewer=colleague).image_id == porn_old.pk

    page = client.get(reverse("review_queue")).content.decode()
    assert (
        "You have reached today's limit for <strong>porn</strong> (2 images); "
        "other categories continue." in page
    )


@pytest.mark.django_db
def test_the_default_cap_applies_to_categories_without_their_own(queued):
    ExposureCap.objects.create(category="", images=1)
    ExposureCap.objects.create(category="sexy", images=5)
    reviewer = user("rex")
    reveal(queued("bloody"), reviewer)
    reveal(queued("sexy"), reviewer)
    assert list(limits.standing(reviewer.pk, now=timezone.now()).reached) == [
        limits.Reached("bloody", 1)
    ]


@pytest.mark.django_db
def test_caps_start_again_the_next_day(queued):
    ExposureCap.objects.create(category="porn", images=1)
    reviewer = user("rex")
    image = queued("porn")
    with time_machine.travel(datetime(2026, 12, 1, 10, 0, tzinfo=UTC), tick=False):
        reveal(image, reviewer)
        assert list(limits.standing(reviewer.pk, now=timezone.now()).reached) == [
            limits.Reached("porn", 1)
        ]
    with time_machine.travel(datetime(2026, 12, 2, 10, 0, tzinfo=UTC), tick=False):
        assert list(limits.standing(reviewer.pk, now=timezone.now()).reached) == []


@pytest.mark.django_db
def test_a_claim_made_with_limits_seen_before_another_tab_s_reveal_still_respects_the_cap(
    queued,
):
    """This process last saw the reviewer one below the porn cap; another tab (another worker)
    then reveals and decides a porn image. The next claim starts from what was last seen and
    picks porn, but its own read of the limits, the last step of its transaction, finds the cap
    reached: the claim is undone and another category handed out."""
    ExposureCap.objects.create(category="porn", images=2)
    reviewer = user("rex")
    reveal(queued("porn"), reviewer)
    first, second = queued("porn", age=timedelta(hours=2)), queued("porn", age=timedelta(hours=1))
    other = queued("bloody")

    claim = limits.claim_next(reviewer=reviewer, images=services.waiting())
    assert claim is not None
    assert claim.image_id == first.pk
    counting.count(image=first, user=reviewer, variant="preview")  # in the other worker
    services.decide(image_id=first.pk, reviewer=reviewer, verdict="approve")
    assert last_seen(reviewer) == frozenset()

    claim = limits.claim_next(reviewer=reviewer, images=services.waiting(), exclude=[first.pk])
    assert claim is not None
    assert claim.image_id == other.pk
    assert list(Claim.objects.filter(reviewer=reviewer).values_list("image_id", flat=True)) == [
        other.pk
    ]
    assert Image.objects.get(pk=second.pk).status == WAITING
    assert last_seen(reviewer) == {"porn"}


def last_seen(reviewer: Any) -> frozenset[str]:
    """The categories this process last saw the reviewer blocked from today (the hint)."""
    return limits._last_blocked[(reviewer.pk, counting.day_of(timezone.now()))][1]


def opted_out_then_back(reviewer: Any, *, first: Image, here: bool, committed: Any) -> None:
    """The reviewer opts out of porn, is handed `first` and decides it, then withdraws the
    opt-out, on their own page in this process (`here`) or in another worker."""
    web(reviewer).post(reverse("exposure_mine"), {"opt_out": ["porn"]})
    claim = limits.claim_next(reviewer=reviewer, images=services.waiting())
    assert claim is not None
    assert claim.image_id == first.pk
    services.decide(image_id=first.pk, reviewer=reviewer, verdict="approve")
    assert last_seen(reviewer) == {"porn"}
    if here:
        with committed(execute=True):
            web(reviewer).post(reverse("exposure_mine"), {"opt_out": []})
    else:
        OptOut.objects.filter(reviewer=reviewer).delete()
    assert not OptOut.objects.filter(reviewer=reviewer).exists()


@pytest.mark.django_db
def test_a_limit_let_go_puts_the_oldest_item_first_again(
    queued, monkeypatch, django_capture_on_commit_callbacks
):
    """Withdrawn on the reviewer's page in this process: the next claim reads the limits again
    and the older porn item comes first. Withdrawn in another worker: this process sees it once
    what it last saw is HINT_SECONDS old (until then the claim leaves porn out: later, never
    wrongly)."""
    porn = queued("porn", age=timedelta(hours=3))
    first = queued("ad", age=timedelta(hours=2))
    newer = queued("ad", age=timedelta(hours=1))
    reviewer = user("rex")
    opted_out_then_back(
        reviewer, first=first, here=True, committed=django_capture_on_commit_callbacks
    )
    claim = limits.claim_next(reviewer=reviewer, images=services.waiting(), exclude=[first.pk])
    assert claim is not None
    assert claim.image_id == porn.pk

    other = user("rio")
    porn = queued("porn", age=timedelta(hours=3))
    first = queued("ad", age=timedelta(hours=2))
    opted_out_then_back(
        other, first=first, here=False, committed=django_capture_on_commit_callbacks
    )
    claim = limits.claim_next(reviewer=other, images=services.waiting(), exclude=[first.pk])
    assert claim is not None
    assert claim.image_id == newer.pk
    services.release(image=claim.image, reviewer=other)
    monkeypatch.setattr(limits, "HINT_SECONDS", 0.0)
    claim = limits.claim_next(reviewer=other, images=services.waiting(), exclude=[newer.pk])
    assert claim is not None
    assert claim.image_id == porn.pk


@pytest.mark.django_db
def test_when_the_limits_last_seen_leave_nothing_the_claim_reads_them_again(
    queued, django_capture_on_commit_callbacks
):
    porn = queued("porn", age=timedelta(hours=3))
    first = queued("ad", age=timedelta(hours=2))
    reviewer = user("rex")
    opted_out_then_back(
        reviewer, first=first, here=False, committed=django_capture_on_commit_callbacks
    )

    claim = limits.claim_next(reviewer=reviewer, images=services.waiting(), exclude=[first.pk])
    assert claim is not None
    assert claim.image_id == porn.pk


@pytest.mark.django_db
def test_the_database_refuses_a_claim_over_the_limits_of_its_day(queued):
    """The trigger behind Claim.limits_day: opted-out categories and categories at their cap (own,
    else the default) are refused, nothing claimed; other categories, images without one, and
    claims without a day are not."""
    ExposureCap.objects.create(category="", images=2)
    ExposureCap.objects.create(category="sexy", images=5)
    reviewer = user("rex")
    today = counting.day_of(timezone.now())
    OptOut.objects.create(reviewer=reviewer, category="bloody")
    for category, n in [("porn", 2), ("sexy", 4), ("ad", 1)]:
        ExposureCount.objects.create(reviewer=reviewer, day=today, category=category, previews=n)
    yesterday = today - timedelta(days=1)
    ExposureCount.objects.create(reviewer=reviewer, day=yesterday, category="ad", previews=9)

    def claim(*categories: str, day: Any = today) -> int | None:
        image = queued(*categories)
        try:
            made = services.claim_next(
                reviewer=reviewer, queryset=services.waiting().filter(pk=image.pk), limits_day=day
            )
        except services.OverLimit:
            assert not Claim.objects.filter(reviewer=reviewer).exists()
            return None
        assert made is not None
        Claim.objects.filter(reviewer=reviewer).delete()
        return made.image_id

    assert claim("porn") is None  # at the default cap
    assert claim("ad", "porn") is None  # one of its categories is
    assert claim("bloody") is None  # opted out
    assert claim("sexy") is not None  # its own cap, not reached
    assert claim("ad") is not None  # yesterday's counts are not today's
    assert claim() is not None  # no category
    assert claim("porn", day=yesterday) is not None
    image = queued("porn")
    assert services.claim_next(reviewer=reviewer, queryset=services.waiting().filter(pk=image.pk))


@pytest.mark.django_db
def test_the_database_and_python_agree_on_what_is_blocked(queued):
    """limits.standing (what a claim leaves out) and the trigger (what the database refuses)
    are one rule written twice: on random caps, opt-outs and counts they must agree."""
    rng = random.Random(20261201)
    names = ["porn", "sexy", "bloody", "ad"]
    today = counting.day_of(timezone.now())
    for round_ in range(25):
        ExposureCap.objects.all().delete()
        OptOut.objects.all().delete()
        ExposureCount.objects.all().delete()
        reviewer = user(f"r{round_}")
        if rng.random() < 0.7:
            ExposureCap.objects.create(category="", images=rng.randint(1, 4))
        for name in rng.sample(names, rng.randint(0, 3)):
            ExposureCap.objects.create(category=name, images=rng.randint(1, 4))
        for name in rng.sample(names, rng.randint(0, 2)):
            OptOut.objects.create(reviewer=reviewer, category=name)
        for name in rng.sample(names, rng.randint(0, 4)):
            ExposureCount.objects.create(
                reviewer=reviewer, day=today, category=name, thumbnails=rng.randint(0, 5)
            )
        blocked = limits.standing(reviewer.pk, now=timezone.now()).blocked
        for name in names:
            image = queued(name)
            try:
                services.claim_next(
                    reviewer=reviewer,
                    queryset=services.waiting().filter(pk=image.pk),
                    limits_day=today,
                )
                refused = False
            except services.OverLimit:
                refused = True
            Claim.objects.filter(reviewer=reviewer).delete()
            assert refused == (name in blocked), (round_, name, blocked)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_tabs_of_one_reviewer_at_cap_minus_one_get_one_more_item_of_that_category(make_image):
    """Two connections of one reviewer claim, reveal and decide at once, in a loop, with one
    image of porn left before the cap: only one more porn image reaches them."""
    ExposureCap.objects.create(category="porn", images=3)
    reviewer = user("rex")
    images = []
    for i, category in enumerate(["porn"] * 6 + ["bloody"] * 4):
        image = make_image(status=WAITING)
        Image.objects.filter(pk=image.pk).update(
            imm_categories=[category],
            status_changed_at=timezone.now() - timedelta(minutes=60 - i),
        )
        ImageCategory.objects.create(image=image, category=category)
        image.refresh_from_db()
        images.append(image)
    for image in images[:2]:
        counting.count(image=image, user=reviewer, variant="preview")
    assert counting.today(reviewer.pk) == {"porn": 2}
    Image.objects.filter(pk__in=[i.pk for i in images[:2]]).update(status=Image.Status.APPROVED)
    barrier = threading.Barrier(2, timeout=30)
    revealed: list[tuple[int, str]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def tab() -> None:
        try:
            barrier.wait()
            for _ in range(6):
                claim = limits.claim_next(reviewer=reviewer, images=services.waiting())
                if claim is None:
                    return
                image = Image.objects.get(pk=claim.image_id)
                counting.count(image=image, user=reviewer, variant="preview")
                with lock:
                    revealed.append((image.pk, image.imm_categories[0]))
                # The other tab may have decided it first.
                with contextlib.suppress(services.ReviewError):
                    services.decide(image_id=image.pk, reviewer=reviewer, verdict="approve")
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=tab) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    porn_seen = {pk for pk, category in revealed if category == "porn"}
    assert len(porn_seen) == 1
    assert {pk for pk, category in revealed if category == "bloody"}  # others still handed


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_reveals_at_the_same_moment_are_all_counted(make_image):
    """The first reveal of the day inserts the row: two at once must both count."""
    reviewer = user("rex")
    image = make_image(status=WAITING)
    Image.objects.filter(pk=image.pk).update(imm_categories=["porn"])
    image.refresh_from_db()
    barrier = threading.Barrier(4, timeout=30)
    errors: list[str] = []

    def show() -> None:
        try:
            barrier.wait()
            counting.count(image=image, user=reviewer, variant="preview")
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=show) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert ExposureCount.objects.get(reviewer=reviewer).previews == 4


# ------------------------------------------------------------------------------ opt-outs


@pytest.mark.django_db
def test_opted_out_categories_are_never_handed_out_and_the_change_is_audited(queued):
    porn = queued("porn", age=timedelta(hours=2))
    mixed = queued("bloody", "sexy", age=timedelta(hours=1))
    fine = queued("ad")
    reviewer = user("rex")
    client = web(reviewer)

    page = client.get(reverse("exposure_mine"))
    assert page.status_code == 200
    assert 'name="opt_out" value="porn"' in page.content.decode()
    response = client.post(reverse("exposure_mine"), {"opt_out": ["porn", "sexy"]})
    assert response.status_code == 302
    assert set(OptOut.objects.values_list("category", flat=True)) == {"porn", "sexy"}
    entry = AuditEntry.objects.get(action="exposure.opt_outs_changed")
    assert (entry.actor_id, entry.state_after) == (reviewer.pk, "porn, sexy")

    client.post(reverse("review_next"))
    assert Claim.objects.get(reviewer=reviewer).image_id == fine.pk
    services.decide(image_id=fine.pk, reviewer=reviewer, verdict="approve")
    assert (
        services.claim_next(
            reviewer=reviewer,
            queryset=limits.without(
                services.waiting(), limits.standing(reviewer.pk, now=timezone.now()).blocked
            ),
        )
        is None
    )
    assert set(services.waiting().values_list("pk", flat=True)) == {porn.pk, mixed.pk}
    assert (
        "You have opted out of porn, sexy" in client.get(reverse("review_queue")).content.decode()
    )

    client.post(reverse("exposure_mine"), {"opt_out": ["sexy"]})
    assert list(OptOut.objects.values_list("category", flat=True)) == ["sexy"]
    assert AuditEntry.objects.filter(action="exposure.opt_outs_changed").count() == 2


@pytest.mark.django_db
def test_a_bad_opt_out_is_refused_with_a_400(reviewer_client, reviewer_user):
    response = reviewer_client.post(reverse("exposure_mine"), {"opt_out": ["two words"]})
    assert response.status_code == 400
    assert "one word" in response.content.decode()
    assert not OptOut.objects.exists()


# ------------------------------------------------------------------------------ admin page


@pytest.mark.django_db
def test_only_admins_see_exposure_and_set_caps(client, reviewer_client):
    url = reverse("exposure")
    assert client.get(url).status_code == 302
    assert reviewer_client.get(url).status_code == 403
    assert reviewer_client.post(url, {"category": "", "images": "5"}).status_code == 403
    assert not ExposureCap.objects.exists()


@pytest.mark.django_db
def test_the_admin_page_shows_exposure_per_reviewer_day_and_category(
    queued, admin_client, admin_user
):
    rex, rio = user("rex"), user("rio")
    porn, bloody = queued("porn"), queued("bloody")
    with time_machine.travel(timezone.now() - timedelta(days=3), tick=False):
        reveal(porn, rio)
    reveal(porn, rex)
    reveal(porn, rex)
    counting.count(image=bloody, user=rex, variant="thumbnail")

    week = admin_client.get(reverse("exposure"), {"days": "7"}).content.decode()
    today = admin_client.get(reverse("exposure"), {"days": "1"}).content.decode()

    day = timezone.localdate().isoformat()
    assert f"<td>{day}</td><td>rex</td><td>porn</td>" in week
    assert "<td>2</td><td>0</td><td>0</td><td><strong>2</strong></td>" in week
    assert "<td>rio</td><td>porn</td>" in week
    assert "<td>rio</td>" not in today
    assert "<tr><td>rex</td><td>3</td></tr>" in today
    assert admin_client.get(reverse("exposure"), {"days": "365"}).status_code == 400


@pytest.mark.django_db
def test_an_admin_sets_and_removes_caps_each_audited(admin_client, admin_user):
    url = reverse("exposure")
    assert admin_client.post(url, {"category": "", "images": "300"}).status_code == 302
    assert admin_client.post(url, {"category": "porn", "images": "200"}).status_code == 302
    assert admin_client.post(url, {"category": "porn", "images": "150"}).status_code == 302
    assert admin_client.post(url, {"remove": ""}).status_code == 302
    assert dict(ExposureCap.objects.values_list("category", "images")) == {"porn": 150}
    actions = list(
        AuditEntry.objects.filter(action__startswith="exposure.cap")
        .order_by("id")
        .values_list("action", "state_before", "state_after")
    )
    assert actions == [
        ("exposure.cap_set", "", "300"),
        ("exposure.cap_set", "", "200"),
        ("exposure.cap_set", "200", "150"),
        ("exposure.cap_removed", "300", ""),
    ]
    bad_forms = [
        {"category": "", "images": "0"},
        {"category": "", "images": "x"},
        {"category": "a b", "images": "5"},
        {"category": "", "images": "10001"},
    ]
    for bad in bad_forms:
        response = admin_client.post(url, bad)
        assert response.status_code == 400
    assert admin_client.post(url, {"remove": "nothing"}).status_code == 404
    assert ExposureCap.objects.count() == 1


# ------------------------------------------------------------------------------ breaks


def decisions_every(reviewer: Any, image: Image, *, start: datetime, minutes: list[int]) -> None:
    for m in minutes:
        Decision.objects.create(
            image=image,
            reviewer=reviewer,
            verdict=Decision.Verdict.APPROVE,
            status_before=WAITING,
            status_after=Image.Status.APPROVED,
            created_at=start + timedelta(minutes=m),
        )


NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.django_db
def test_the_break_reminder_comes_after_the_stretch_and_not_after_a_pause(queued, settings):
    settings.REVIEW_BREAK_AFTER_MINUTES = 50
    settings.REVIEW_BREAK_GAP_MINUTES = 10
    reviewer = user("rex")
    image = queued("porn")
    decisions_every(reviewer, image, start=NOON, minutes=list(range(0, 56, 5)))
    assert breaks.due(reviewer.pk, now=NOON + timedelta(minutes=56))
    assert not breaks.due(reviewer.pk, now=NOON + timedelta(minutes=45))  # not long enough
    assert not breaks.due(reviewer.pk, now=NOON + timedelta(minutes=70))  # pausing now
    # Dismissed at minute 40: due again only 50 minutes after that.
    dismissed = NOON + timedelta(minutes=40)
    assert not breaks.due(reviewer.pk, now=NOON + timedelta(minutes=56), dismissed_at=dismissed)

    other = user("rio")
    # A 12-minute pause at minute 20 starts a new stretch.
    decisions_every(other, image, start=NOON, minutes=[0, 5, 10, 15, 20, 32, 37, 42, 47, 52, 57])
    assert not breaks.due(other.pk, now=NOON + timedelta(minutes=58))


@pytest.mark.django_db
def test_clear_images_shown_count_as_reviewing_for_the_break_reminder(queued, settings):
    """QA work (blind items, the QA queue) and long looks are reveals, not queue decisions: a
    stretch of them, or of reveals between decisions, is a stretch of reviewing all the same."""
    settings.REVIEW_BREAK_AFTER_MINUTES = 50
    settings.REVIEW_BREAK_GAP_MINUTES = 10
    reviewer = user("rex")
    image = queued("porn")
    for m in range(0, 56, 6):
        Reveal.objects.filter(pk=Reveal.objects.create(image=image, reviewer=reviewer).pk).update(
            revealed_at=NOON + timedelta(minutes=m)
        )
    assert breaks.due(reviewer.pk, now=NOON + timedelta(minutes=56))
    assert not breaks.due(reviewer.pk, now=NOON + timedelta(minutes=70))

    other = user("rio")
    # Decisions 16 minutes apart, each after a reveal 8 minutes before: no 10-minute pause.
    decisions_every(other, image, start=NOON, minutes=[0, 16, 32, 48, 56])
    for m in (8, 24, 40):
        Reveal.objects.filter(pk=Reveal.objects.create(image=image, reviewer=other).pk).update(
            revealed_at=NOON + timedelta(minutes=m)
        )
    assert breaks.due(other.pk, now=NOON + timedelta(minutes=57))
    Reveal.objects.filter(reviewer=other).delete()
    assert not breaks.due(other.pk, now=NOON + timedelta(minutes=57))


@pytest.mark.django_db
def test_the_queue_and_pane_show_the_reminder_and_dismissing_it_hides_it(queued, settings):
    settings.REVIEW_BREAK_AFTER_MINUTES = 50
    reviewer = user("rex")
    image = queued("porn")
    now = timezone.now()
    decisions_every(
        reviewer, image, start=now - timedelta(minutes=55), minutes=list(range(0, 56, 5))
    )
    client = web(reviewer)

    page = client.get(reverse("review_queue")).content.decode()
    assert "Time for a short break?" in page
    services.claim_next(reviewer=reviewer)
    pane = client.get(reverse("review_item", args=[image.pk])).content.decode()
    assert "Time for a short break?" in pane

    response = client.post(reverse("exposure_break"), headers={"HX-Request": "true"})
    assert (response.status_code, response.content) == (200, b"")
    assert "Time for a short break?" not in client.get(reverse("review_queue")).content.decode()
    response = client.post(reverse("exposure_break"), {"next": "//evil.example/"})
    assert response["Location"] == reverse("review_queue")


# ------------------------------------------------------------------------------ found in review


def test_forgetting_limits_while_another_thread_remembers_some_does_not_fail():
    """gthread workers: one thread saves an opt-out (forget, on commit) while others claim
    (remember what they read). Forgetting must not trip over the dict changing under it: that
    was a RuntimeError, a 500 answered to a change already saved."""
    errors: list[str] = []
    stop = threading.Event()

    def remember() -> None:
        i = 0
        while not stop.is_set():
            limits._remember((i, date(2026, 12, 1)), frozenset())
            i += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=remember)
    thread.start()
    try:
        until = time.monotonic() + 1.0
        while time.monotonic() < until and not errors:
            try:
                limits.forget(3)
            except RuntimeError as exc:
                errors.append(repr(exc))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
        limits.forget()
    assert errors == []


@pytest.mark.django_db
def test_opting_out_of_the_category_of_the_item_one_holds_lets_it_go(queued):
    """Start reviewing first hands back the item the reviewer holds: one of a category they
    have just opted out of must not come back (another tab, a reload, the next morning's
    first click within the lease); it returns to the queue for others."""
    porn = queued("porn", "sexy", age=timedelta(hours=2))
    fine = queued("ad", age=timedelta(hours=1))
    reviewer = user("rex")
    client = web(reviewer)
    client.post(reverse("review_next"))
    assert Claim.objects.get(reviewer=reviewer).image_id == porn.pk

    assert client.post(reverse("exposure_mine"), {"opt_out": ["porn"]}).status_code == 302
    assert not Claim.objects.filter(reviewer=reviewer).exists()
    entry = AuditEntry.objects.get(action="exposure.opt_outs_changed")
    assert entry.detail["released"] == porn.pk
    response = client.post(reverse("review_next"))
    assert response.status_code == 302
    assert Claim.objects.get(reviewer=reviewer).image_id == fine.pk
    # The pane left open on it is told at its next renewal.
    assert client.post(reverse("review_renew", args=[porn.pk])).status_code == 409
    # An opt-out of another category keeps the item held.
    client.post(reverse("exposure_mine"), {"opt_out": ["porn", "bloody"]})
    assert Claim.objects.get(reviewer=reviewer).image_id == fine.pk


@pytest.mark.django_db
def test_imm_s_later_word_adding_a_blocked_category_to_a_held_item_lets_it_go(make_image):
    """The trigger checks a claim when it is made. IMM's second word may add a category to an
    item already held (a routing rule keeps it in review): one the reviewer opted out of, or
    whose cap they reached, and they have not seen it clear yet, must not stay in their hands
    (Start reviewing hands a held item back first)."""
    from .test_calibration_routing import deliver, running_image

    ExposureCap.objects.create(category="sexy", images=1)
    ada, rex, rio = user("ada2"), user("rex"), user("rio")
    OptOut.objects.create(reviewer=ada, category="porn")
    today = counting.day_of(timezone.now())
    for someone in (rex, rio):
        ExposureCount.objects.create(reviewer=someone, day=today, category="sexy", previews=1)
    held = {}
    for someone in (ada, rex, rio):
        image, task = running_image(make_image)
        deliver(task, "review", {"ad": 50})
        claim = limits.claim_next(reviewer=someone, images=services.waiting())
        assert claim is not None
        assert claim.image_id == image.pk
        held[someone.pk] = (image, task)
    image, _ = held[rio.pk]
    record_reveal(None, image=Image.objects.get(pk=image.pk), user=rio, variant="preview")

    deliver(held[ada.pk][1], "review", {"porn": 60, "ad": 50}, end="2026-11-20T08:00:09.000Z")
    deliver(held[rex.pk][1], "review", {"sexy": 60, "ad": 50}, end="2026-11-20T08:00:09.000Z")
    deliver(held[rio.pk][1], "review", {"sexy": 60, "ad": 50}, end="2026-11-20T08:00:09.000Z")

    assert Image.objects.get(pk=held[ada.pk][0].pk).status == WAITING
    assert not Claim.objects.filter(reviewer=ada).exists()  # opted out
    assert not Claim.objects.filter(reviewer=rex).exists()  # at the cap, not seen yet
    assert Claim.objects.get(reviewer=rio).image_id == held[rio.pk][0].pk  # already seen
    claim = limits.claim_next(reviewer=ada, images=services.waiting())
    assert claim is not None
    assert claim.image_id == held[rex.pk][0].pk  # not the porn one, let go just now


@pytest.mark.django_db
def test_a_reveal_of_an_item_decided_since_the_page_read_it_is_refused_and_not_counted(
    queued,
):
    image = queued("porn")
    reviewer = user("rex")
    claim = limits.claim_next(reviewer=reviewer, images=services.waiting())
    assert claim is not None
    as_read = Image.objects.get(pk=image.pk)  # what image_file read, a moment before
    services.decide(image_id=image.pk, reviewer=reviewer, verdict="approve")  # another tab
    with pytest.raises(Http404):
        record_reveal(None, image=as_read, user=reviewer, variant="preview")
    assert not Reveal.objects.exists()
    assert counting.today(reviewer.pk) == {}


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_decision_taken_while_the_item_s_reveal_is_under_way_waits_for_it_to_count(
    make_image,
):
    """Tab A reveals the item (one below the porn cap) while tab B approves it and is handed
    the next: that claim must see the reveal's count, or the reviewer is shown one porn image
    over the cap. The reveal checked the image and is counting, not yet committed; the
    decision used to go ahead and the claim read the count without it."""
    ExposureCap.objects.create(category="porn", images=2)
    reviewer = user("rex")
    images = []
    for i, category in enumerate(["porn", "porn", "porn", "ad"]):
        image = make_image(status=WAITING)
        Image.objects.filter(pk=image.pk).update(
            imm_categories=[category],
            status_changed_at=timezone.now() - timedelta(minutes=60 - i),
        )
        ImageCategory.objects.create(image=image, category=category)
        image.refresh_from_db()
        images.append(image)
    counting.count(image=images[0], user=reviewer, variant="preview")
    Image.objects.filter(pk=images[0].pk).update(status=Image.Status.APPROVED)
    claim = limits.claim_next(reviewer=reviewer, images=services.waiting())
    assert claim is not None
    assert claim.image_id == images[1].pk
    counted, errors = threading.Event(), []

    def tab_a() -> None:
        try:
            with transaction.atomic():
                record_reveal(None, image=images[1], user=reviewer, variant="preview")
                counted.set()
                time.sleep(0.5)  # the bytes' transaction still open while tab B decides
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            counted.set()
            connection.close()

    thread = threading.Thread(target=tab_a)
    thread.start()
    assert counted.wait(10)
    services.decide(image_id=images[1].pk, reviewer=reviewer, verdict="approve")
    claim = limits.claim_next(reviewer=reviewer, images=services.waiting(), exclude=[images[1].pk])
    thread.join(timeout=30)
    assert errors == []
    assert counting.today(reviewer.pk) == {"porn": 2}
    assert claim is not None
    assert claim.image_id == images[3].pk  # not the third porn image
