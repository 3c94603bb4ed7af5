"""Response-time targets on the queue: due times kept per waiting image, shown on every row and
in the pane, the queue and Start reviewing in due order, and the admins' targets page."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from moderation.accounts import create_user
from moderation.models import AuditEntry, Image, ImageCategory
from reviews import queue as queue_reads
from reviews import services
from reviews.models import Claim, Decision, ReviewerPreference
from reviews.sla import due
from reviews.sla.models import SlaDue, SlaTarget

from .conftest import PASSWORD
from .test_pipeline import deliver, fake, imm, sleeps, submitted  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db

WAITING = Image.Status.AWAITING_REVIEW
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def user(username: str, role: str = "reviewer") -> Any:
    return create_user(username=username, role=role, password=PASSWORD, validate=False)


@pytest.fixture
def queued(make_image) -> Callable[..., Image]:
    """A waiting image that entered the queue `age` ago in `categories`, with its due row."""

    def make(*, age: timedelta = timedelta(minutes=10), categories: tuple[str, ...] = ()) -> Image:
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
        due.sync(image)
        return image

    return make


def targets(**minutes: int) -> None:
    for category, value in minutes.items():
        SlaTarget.objects.create(category="" if category == "default" else category, minutes=value)


# ------------------------------------------------------------------------------ the due times


@pytest.mark.parametrize(
    ("offset", "text", "overdue"),
    [
        (timedelta(minutes=25, seconds=10), "due in 25 min", False),
        (timedelta(seconds=20), "due in 1 min", False),
        (timedelta(hours=2, minutes=5), "due in 2 h 5 min", False),
        (timedelta(hours=5, minutes=5), "due in 5 h", False),
        (-timedelta(hours=2, minutes=1), "overdue by 2 h 1 min", True),
        (-timedelta(days=1, hours=3), "overdue by 1 d 3 h", True),
        (-timedelta(minutes=3), "overdue by 3 min", True),
    ],
)
def test_due_times_read_as_calm_words(offset, text, overdue):
    assert due.describe(T0 + offset, T0) == (text, overdue)
    assert due.describe(None, T0) == ("", False)


def test_recompute_gives_each_waiting_image_its_tightest_target_and_drops_the_rest(queued):
    targets(default=240, porn=30, bloody=60)
    porn = queued(categories=("bloody", "porn"))
    plain = queued(categories=("sexy",))
    settled = queued(categories=("porn",))
    Image.objects.filter(pk=settled.pk).update(status=Image.Status.APPROVED)
    SlaDue.objects.all().delete()
    SlaDue.objects.create(image=settled, due_at=T0)  # a row left by an image IMM settled

    assert due.recompute() == 2

    rows = dict(SlaDue.objects.values_list("image_id", "due_at"))
    assert rows == {
        porn.pk: porn.status_changed_at + timedelta(minutes=30),
        plain.pk: plain.status_changed_at + timedelta(minutes=240),
    }


def test_without_any_target_an_item_has_no_due_time(queued):
    image = queued(categories=("porn",))
    assert SlaDue.objects.get(image=image).due_at is None


def test_imm_routing_to_review_writes_the_due_time(make_image, imm):  # noqa: F811
    targets(default=120, porn=15)
    image, task = submitted(make_image, imm)

    deliver(task.task_id, "review", categories=("porn",))

    image.refresh_from_db()
    assert image.status == WAITING
    assert SlaDue.objects.get(image=image).due_at == image.status_changed_at + timedelta(minutes=15)


def test_a_decision_removes_the_due_row_and_its_undo_puts_it_back(queued):
    targets(default=60)
    image = queued(age=timedelta(minutes=20))
    reviewer = user("ria")
    claim = services.claim_next(reviewer=reviewer)
    assert claim is not None
    assert claim.image_id == image.pk
    outcome = services.decide(image_id=image.pk, reviewer=reviewer, verdict="approve")
    assert not SlaDue.objects.filter(image=image).exists()

    services.undo(decision_id=outcome.decision.pk, reviewer=reviewer)

    image.refresh_from_db()
    # Back with its old waiting age, so with its old due time.
    assert SlaDue.objects.get(image=image).due_at == image.status_changed_at + timedelta(minutes=60)


def test_an_admin_reopen_puts_the_image_in_due_order_from_now(queued):
    targets(default=45)
    image = queued()
    Image.objects.filter(pk=image.pk).update(status=Image.Status.REJECTED)
    SlaDue.objects.filter(image=image).delete()
    admin = user("alma", "admin")

    services.reopen(image_id=image.pk, admin=admin, reason="look again")

    image.refresh_from_db()
    assert SlaDue.objects.get(image=image).due_at == image.status_changed_at + timedelta(minutes=45)


# ------------------------------------------------------------------------------ due order


def test_due_order_lists_the_most_urgent_first_and_items_without_a_target_last(queued):
    targets(porn=10, sexy=600)
    old_sexy = queued(age=timedelta(hours=3), categories=("sexy",))  # due in 7 h
    new_porn = queued(age=timedelta(minutes=2), categories=("porn",))  # due in 8 min
    late_porn = queued(age=timedelta(minutes=30), categories=("porn",))  # overdue 20 min
    untargeted = queued(age=timedelta(days=2), categories=("drugs",))

    oldest_first = queue_reads.page(queue_reads.Filters())
    by_due = queue_reads.page(queue_reads.Filters(), by_due=True)

    assert [r.pk for r in oldest_first.rows] == [
        untargeted.pk,
        old_sexy.pk,
        late_porn.pk,
        new_porn.pk,
    ]
    assert [r.pk for r in by_due.rows] == [late_porn.pk, new_porn.pk, old_sexy.pk, untargeted.pk]
    assert by_due.rows[0].due_at == late_porn.status_changed_at + timedelta(minutes=10)
    assert by_due.rows[-1].due_at is None


def test_due_order_pages_follow_on_without_gaps_or_repeats(queued, monkeypatch):
    monkeypatch.setattr(queue_reads, "PAGE_SIZE", 3)
    targets(porn=10, sexy=60)
    images = [
        queued(age=timedelta(minutes=m), categories=(c,))
        for m, c in [(1, "porn"), (5, "sexy"), (8, "porn"), (40, "sexy"), (2, "x"), (9, "y"),
                     (3, "porn"), (50, "sexy")]
    ]  # fmt: skip
    seen: list[int] = []
    after = ""
    for _ in range(5):
        page = queue_reads.page(queue_reads.Filters(), after=after, by_due=True)
        seen += [r.pk for r in page.rows]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    dues = {i.pk: SlaDue.objects.get(image=i).due_at for i in images}
    with_due = sorted((d, pk) for pk, d in dues.items() if d is not None)
    without = sorted(pk for pk, d in dues.items() if d is None)
    assert seen == [pk for _, pk in with_due] + without


def test_a_bad_due_cursor_starts_from_the_top(queued):
    targets(default=30)
    image = queued()
    for cursor in ("nonsense", "12.x", "none.", "99999999999999999999999999.1"):
        page = queue_reads.page(queue_reads.Filters(), after=cursor, by_due=True)
        assert [r.pk for r in page.rows] == [image.pk]
        assert page.first


def test_start_reviewing_hands_out_the_most_urgent_item_when_the_reviewer_chose_due_order(
    queued, client
):
    targets(porn=10, default=600)
    oldest = queued(age=timedelta(hours=5), categories=("sexy",))
    urgent = queued(age=timedelta(minutes=9), categories=("porn",))
    reviewer = user("rex")
    client.force_login(reviewer)

    client.post(reverse("review_preferences"), {"order_by_due": "on"})
    assert ReviewerPreference.objects.get(user=reviewer).order_by_due
    response = client.post(reverse("review_next"))

    assert response.status_code == 302
    assert Claim.objects.get(reviewer=reviewer).image_id == urgent.pk
    # Deciding it hands out the next most urgent (the only other one here).
    client.post(reverse("review_decide", args=[urgent.pk]), {"action": "approve"})
    assert Claim.objects.get(reviewer=reviewer).image_id == oldest.pk


def test_without_the_preference_start_reviewing_stays_oldest_first(queued, client):
    targets(porn=10, default=600)
    oldest = queued(age=timedelta(hours=5), categories=("sexy",))
    queued(age=timedelta(minutes=9), categories=("porn",))
    reviewer = user("rex")
    client.force_login(reviewer)
    client.post(reverse("review_next"))
    assert Claim.objects.get(reviewer=reviewer).image_id == oldest.pk


# ------------------------------------------------------------------------------ display


def test_queue_rows_say_when_each_item_is_due_and_mark_the_overdue_ones(queued, client):
    targets(porn=10, default=600)
    queued(age=timedelta(minutes=130), categories=("porn",))  # overdue by 2 h
    queued(age=timedelta(minutes=5), categories=("sexy",))
    client.force_login(user("rex"))

    html = client.get(reverse("review_queue")).content.decode()
    fragment = client.get(reverse("review_queue"), headers={"HX-Request": "true"}).content.decode()

    for page in (html, fragment):
        assert '<span class="overdue">overdue by 2 h</span>' in page
        assert "<span>due in 9 h 55 min</span>" not in page  # 3 h and more: hours only
        assert "<span>due in 9 h</span>" in page
    assert "Most urgent first" in html


def test_the_pane_says_when_the_item_is_due(queued, client):
    targets(default=30)
    image = queued(age=timedelta(minutes=45))
    reviewer = user("rex")
    client.force_login(reviewer)
    client.post(reverse("review_next"))

    html = client.get(reverse("review_item", args=[image.pk])).content.decode()

    assert '<span class="overdue">Overdue by 15 min</span>' in html


# ------------------------------------------------------------------------------ targets page


@pytest.fixture
def admin(admin_user) -> Any:
    return admin_user


@pytest.fixture
def admin_web(admin_client) -> Client:
    return admin_client


def test_only_admins_reach_the_targets_page(client, admin_web):
    url = reverse("sla_targets")
    assert client.get(url).status_code == 302  # to sign in
    client.force_login(user("rex"))
    assert client.get(url).status_code == 403
    assert client.post(url, {"category": "", "minutes": "5"}).status_code == 403
    assert not SlaTarget.objects.exists()
    assert admin_web.get(url).status_code == 200


def test_an_admin_sets_changes_and_removes_targets_each_audited(admin_web, admin, queued):
    image = queued(age=timedelta(minutes=10), categories=("porn",))
    url = reverse("sla_targets")

    assert admin_web.post(url, {"category": "", "minutes": "120"}).status_code == 302
    assert admin_web.post(url, {"category": "porn", "minutes": "30"}).status_code == 302
    assert admin_web.post(url, {"category": "porn", "minutes": "20"}).status_code == 302

    assert dict(SlaTarget.objects.values_list("category", "minutes")) == {"": 120, "porn": 20}
    assert SlaDue.objects.get(image=image).due_at == image.status_changed_at + timedelta(minutes=20)
    entries = list(AuditEntry.objects.filter(action__startswith="sla.").order_by("id"))
    assert [(e.action, e.state_before, e.state_after, e.actor_id) for e in entries] == [
        ("sla.target_set", "", "120", admin.pk),
        ("sla.target_set", "", "30", admin.pk),
        ("sla.target_set", "30", "20", admin.pk),
    ]

    assert admin_web.post(url, {"remove": "porn"}).status_code == 302
    assert dict(SlaTarget.objects.values_list("category", "minutes")) == {"": 120}
    assert SlaDue.objects.get(image=image).due_at == image.status_changed_at + timedelta(
        minutes=120
    )
    removed = AuditEntry.objects.get(action="sla.target_removed")
    assert (removed.state_before, removed.detail["category"]) == ("20", "porn")
    page = admin_web.get(url).content.decode()
    assert "120 minutes" in page


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"category": "", "minutes": "0"}, "whole number of minutes from 1 to 10,080"),
        ({"category": "", "minutes": "ten"}, "whole number of minutes from 1 to 10,080"),
        ({"category": "", "minutes": "10081"}, "whole number of minutes from 1 to 10,080"),
        ({"category": "", "minutes": "-5"}, "whole number of minutes from 1 to 10,080"),
        ({"category": "two words", "minutes": "5"}, "one word of at most 64 characters"),
        ({"category": "x" * 65, "minutes": "5"}, "one word of at most 64 characters"),
    ],
)
def test_bad_targets_are_refused_with_the_reason_and_change_nothing(admin_web, form, message):
    response = admin_web.post(reverse("sla_targets"), form)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not SlaTarget.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="sla.").exists()


def test_removing_a_target_that_is_gone_is_a_404(admin_web):
    response = admin_web.post(reverse("sla_targets"), {"remove": "porn"})
    assert response.status_code == 404
    assert "no such target" in response.content.decode()


def test_decision_reviewers_left_with_undo_is_unaffected_by_target_changes(queued, admin_web):
    # A target change rewrites due rows only: the decision made meanwhile stands.
    targets(default=60)
    image = queued()
    reviewer = user("rex")
    services.claim_next(reviewer=reviewer)
    services.decide(image_id=image.pk, reviewer=reviewer, verdict="reject", reason="bad")
    admin_web.post(reverse("sla_targets"), {"category": "", "minutes": "5"})
    image.refresh_from_db()
    assert image.status == Image.Status.REJECTED
    assert Decision.objects.filter(image=image).count() == 1
    assert not SlaDue.objects.filter(image=image).exists()
