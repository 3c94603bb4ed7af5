"""The audit log pages: roles, filters, keyset pages, htmx rows, chain status, verify, exports."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tracemalloc
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django_tasks import TaskResultStatus, default_task_backend

from moderation.audit import log as audit
from moderation.audit.note import generate_signer_key
from moderation.audit.tasks import (
    VERIFICATION_LOST_AFTER,
    PendingVerification,
    pending_verification,
    request_verification,
    verify_audit_chain,
)
from moderation.audit.views import EXPORT_COLUMNS, EXPORT_FIELDS
from moderation.models import AuditCheckpoint, AuditEntry, ChainCheck, Image, VerificationRequest

from .audit_log import VERIFIER_KEY, sequence_all

pytestmark = pytest.mark.django_db

LOG = "/audit/"
CSV_URL = "/audit/export.csv"
JSONL_URL = "/audit/export.jsonl"
VERIFY = "/audit/verify"
GET_URLS = [LOG, CSV_URL, JSONL_URL]
CLIENT = audit.AuditContext("203.0.113.9", "Mozilla/5.0 (pytest)")
HEAD = "abcdef012345" + "9" * 52
ROOT = Path(__file__).resolve().parent.parent


def add(
    n: int,
    *,
    action: str = "test.added",
    actor: Any = None,
    reason: str = "entry {i}",
    **fields: Any,
) -> list[AuditEntry]:
    """Append n entries in one transaction; `reason` may hold {i}."""
    with transaction.atomic():
        return [
            audit.record(action=action, actor=actor, reason=reason.format(i=i), **fields)
            for i in range(n)
        ]


def ids(response) -> list[int]:
    """The ids of the entries on a log page, top to bottom."""
    return [int(s) for s in re.findall(r'<tr id="entry-(\d+)">', response.content.decode())]


def link(response, rel: str) -> str:
    match = re.search(rf'rel="{rel}" href="([^"]+)"', response.content.decode())
    assert match, f"no {rel} link"
    return match.group(1).replace("&amp;", "&")


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def csv_rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body(response).decode("utf-8-sig"))))


def jsonl_rows(response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body(response).decode().splitlines()]


# ------------------------------------------------------------------------------------- roles


@pytest.mark.parametrize("url", GET_URLS)
def test_anonymous_visitors_are_sent_to_log_in_from_every_audit_page(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_anonymous_visitors_cannot_queue_a_verification(client):
    default_task_backend.clear()
    response = client.post(VERIFY)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert default_task_backend.results == []


@pytest.mark.parametrize("url", GET_URLS)
def test_reviewers_are_refused_every_audit_page(reviewer_client, url):
    response = reviewer_client.get(url)
    assert response.status_code == 403
    assert b"audit-log" not in response.content.lower()


def test_reviewers_cannot_queue_a_verification(reviewer_client):
    default_task_backend.clear()
    assert reviewer_client.post(VERIFY).status_code == 403
    assert default_task_backend.results == []


@pytest.mark.parametrize("url", GET_URLS)
def test_admins_get_every_audit_page(admin_client, url):
    assert admin_client.get(url).status_code == 200


def test_the_audit_pages_only_answer_reads_and_verify_only_posts(admin_client):
    assert admin_client.post(LOG).status_code == 405
    assert admin_client.post(CSV_URL).status_code == 405
    assert admin_client.get(VERIFY).status_code == 405


def test_only_admins_see_the_audit_log_link_in_the_navigation(admin_client, reviewer_client):
    nav = '<a href="/audit/"'
    assert nav in admin_client.get("/images/").content.decode()
    page = admin_client.get(LOG).content.decode()
    assert '<a href="/audit/" aria-current="page">Audit log</a>' in page
    assert nav not in reviewer_client.get(LOG).content.decode()  # the 403 page has the nav too


# -------------------------------------------------------------------------------------- rows


def test_each_row_shows_who_did_what_to_which_image_and_from_where(admin_client, make_image):
    image = make_image()
    with transaction.atomic():
        entry = audit.record(
            action="imm.routed",
            actor=None,
            image=image,
            state_before=Image.Status.SUBMITTED,
            state_after=Image.Status.AWAITING_REVIEW,
            reason="IMM suggested review",
            detail={"suggestion": "review", "categories": ["sexy", "bikini"], "task_id": "t-1"},
            context=CLIENT,
        )
    page = admin_client.get(LOG).content.decode()
    row = page[page.index(f'<tr id="entry-{entry.pk}">') :].split("</tr>")[0]
    assert f'<time datetime="{entry.created_at.isoformat()}' in row
    assert '<span class="muted">system</span>' in row
    assert '<span title="imm.routed">Routed</span>' in row
    assert f'<a href="/images/{image.pk}/">Image {image.pk}</a>' in row
    assert 'Submitted to IMM → <span class="status-awaiting_review">Awaiting review</span>' in row
    assert "IMM suggested review" in row
    assert '<span class="suggestion-review">review</span>' in row
    assert '<span class="chip">sexy</span><span class="chip">bikini</span>' in row
    assert "All detail" in row  # task_id is not shown compactly, so the full JSON is offered
    assert '<span title="Mozilla/5.0 (pytest)">203.0.113.9</span>' in row


def test_the_log_is_newest_first_and_names_people_by_their_username(admin_client, admin_user):
    with transaction.atomic():
        audit.record(action="review.approved", actor=admin_user, detail={"imm_suggestion": "pass"})
    page = admin_client.get(LOG)
    assert ids(page) == sorted(ids(page), reverse=True)
    assert ids(page)[0] == AuditEntry.objects.order_by("-id").first().pk
    assert "<td>ada</td>" in page.content.decode()
    assert '<span class="suggestion-pass">pass</span>' in page.content.decode()


def test_detail_is_escaped_and_never_trusted_as_html(admin_client):
    add(1, reason="<script>alert(1)</script>", detail={"filename": "<img src=x onerror=alert(1)>"})
    page = admin_client.get(LOG).content.decode()
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "filename: &lt;img src=x onerror=alert(1)&gt;" in page


# ----------------------------------------------------------------------------------- filters


@pytest.fixture
def three_actors(admin_user, reviewer_user):
    with transaction.atomic():
        by_ada = audit.record(action="routing.rule_added", actor=admin_user, reason="ada's")
        by_rex = audit.record(action="review.approved", actor=reviewer_user, reason="rex's")
        by_system = audit.record(action="imm.routed", actor=None, reason="the system's")
    return by_ada, by_rex, by_system


def test_filtering_by_actor_keeps_only_that_persons_entries(admin_client, three_actors):
    _, by_rex, _ = three_actors
    response = admin_client.get(LOG, {"actor": "rex"})
    assert ids(response) == [by_rex.pk]
    assert '<option value="rex" selected>rex</option>' in response.content.decode()


def test_filtering_by_actor_system_keeps_what_no_person_did(admin_client, three_actors):
    response = admin_client.get(LOG, {"actor": "system"})
    expected = AuditEntry.objects.filter(actor__isnull=True).order_by("-id")
    assert ids(response) == [e.pk for e in expected]
    assert three_actors[2].pk in ids(response)


def test_the_actor_choices_are_system_and_the_people_in_the_log(admin_client, three_actors):
    page = admin_client.get(LOG).content.decode()
    choices = re.search(r'<select name="actor">(.*?)</select>', page, re.S).group(1)
    assert re.findall(r'<option value="([^"]*)"', choices) == ["", "system", "ada", "rex"]


def test_filtering_by_an_unknown_actor_shows_nothing_and_keeps_the_choice(
    admin_client, three_actors
):
    response = admin_client.get(LOG, {"actor": "nobody"})
    assert ids(response) == []
    assert "No entries match these filters" in response.content.decode()
    assert '<option value="nobody" selected>nobody</option>' in response.content.decode()


def test_filtering_by_action_keeps_only_that_action(admin_client, three_actors):
    response = admin_client.get(LOG, {"action": "review.approved"})
    assert ids(response) == [three_actors[1].pk]
    assert '<option value="review.approved" selected>Approved by a reviewer</option>' in (
        response.content.decode()
    )


def test_an_action_code_without_a_label_can_still_be_filtered(admin_client):
    [entry] = add(1, action="test.custom")
    add(2)
    response = admin_client.get(LOG, {"action": "test.custom"})
    assert ids(response) == [entry.pk]
    assert '<option value="test.custom" selected>test.custom</option>' in response.content.decode()


def test_filtering_by_image_keeps_only_that_images_entries(admin_client, make_image):
    first, second = make_image(), make_image()
    add(2, image=second)
    response = admin_client.get(LOG, {"image": second.pk})
    expected = AuditEntry.objects.filter(image=second).order_by("-id")
    assert ids(response) == [e.pk for e in expected]
    assert len(ids(response)) == 3  # the upload and the two added
    assert not set(ids(response)) & set(first.audit_entries.values_list("id", flat=True))


@pytest.fixture
def around_midnight(settings, admin_user):
    """Entries either side of two midnights in Shanghai (UTC+8), where the site's day is."""
    settings.TIME_ZONE = "Asia/Shanghai"
    moments = {
        "1 Mar 23:59": datetime(2025, 3, 1, 15, 59, tzinfo=UTC),
        "2 Mar 00:00": datetime(2025, 3, 1, 16, 0, tzinfo=UTC),
        "2 Mar 23:59:59": datetime(2025, 3, 2, 15, 59, 59, tzinfo=UTC),
        "3 Mar 00:00": datetime(2025, 3, 2, 16, 0, tzinfo=UTC),
    }
    entries = {}
    for name, moment in moments.items():
        with time_machine.travel(moment, tick=False):
            [entries[name]] = add(1, reason=name)
    return entries


def test_a_date_range_is_inclusive_and_in_the_sites_time_zone(admin_client, around_midnight):
    response = admin_client.get(LOG, {"from": "2025-03-02", "to": "2025-03-02"})
    assert ids(response) == [
        around_midnight["2 Mar 23:59:59"].pk,
        around_midnight["2 Mar 00:00"].pk,
    ]


def test_a_date_range_may_be_open_at_either_end(admin_client, around_midnight):
    assert ids(admin_client.get(LOG, {"to": "2025-03-01"})) == [around_midnight["1 Mar 23:59"].pk]
    later = ids(admin_client.get(LOG, {"from": "2025-03-03"}))
    assert around_midnight["3 Mar 00:00"].pk in later
    assert around_midnight["2 Mar 23:59:59"].pk not in later


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "America/Los_Angeles"])
def test_dates_at_the_ends_of_the_calendar_leave_nothing_out(admin_client, settings, zone):
    settings.TIME_ZONE = zone
    add(2)
    for query in ({"from": "0001-01-01", "to": "9999-12-31"}, {"to": "9999-12-30"}):
        assert len(ids(admin_client.get(LOG, query))) == AuditEntry.objects.count()
        assert len(csv_rows(admin_client.get(CSV_URL, query))) == AuditEntry.objects.count() + 1


def test_filters_combine(admin_client, admin_user, make_image):
    image = make_image()
    with transaction.atomic():
        wanted = audit.record(action="image.retry_requested", actor=admin_user, image=image)
        audit.record(action="image.retry_requested", actor=None, image=image)
        audit.record(action="image.retry_requested", actor=admin_user)
    response = admin_client.get(
        LOG,
        {
            "actor": "ada",
            "action": "image.retry_requested",
            "image": image.pk,
            "from": date.today() - timedelta(days=1),
            "to": date.today() + timedelta(days=1),
        },
    )
    assert ids(response) == [wanted.pk]


def test_filter_values_that_do_not_parse_are_ignored_and_named(admin_client):
    add(3)
    response = admin_client.get(LOG, {"from": "yesterday", "image": "abc", "before": "x"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "“from” is not a date like 2025-01-31, so it is ignored." in page
    assert "“image” is not an image number, so it is ignored." in page
    assert ids(response) == [e.pk for e in AuditEntry.objects.order_by("-id")]
    huge = "9" * 30  # past any database integer: ignored, not a server error
    response = admin_client.get(LOG, {"image": huge, "before": huge, "after": huge})
    assert response.status_code == 200
    assert "“image” is not an image number" in response.content.decode()
    assert admin_client.get(CSV_URL, {"image": huge}).status_code == 200


# -------------------------------------------------------------------------------- pagination


def test_pages_hold_a_hundred_entries_and_the_next_starts_right_after(admin_client):
    add(150)
    newest_first = list(AuditEntry.objects.order_by("-id").values_list("id", flat=True))
    first = admin_client.get(LOG)
    assert ids(first) == newest_first[:100]
    assert 'rel="prev"' not in first.content.decode()
    older = link(first, "next")
    assert older == f"?before={newest_first[99]}"
    second = admin_client.get(LOG + older)
    assert ids(second) == newest_first[100:]  # no overlap, no gap
    assert 'rel="next"' not in second.content.decode()
    back = admin_client.get(LOG + link(second, "prev"))
    assert ids(back) == ids(first)


def test_paging_newer_from_the_middle_gives_the_page_just_above(admin_client):
    add(250)
    oldest_first = list(AuditEntry.objects.order_by("id").values_list("id", flat=True))
    middle = admin_client.get(LOG, {"after": oldest_first[99]})
    assert ids(middle) == oldest_first[100:200][::-1]
    assert link(middle, "next") == f"?before={oldest_first[100]}"
    assert link(middle, "prev") == f"?after={oldest_first[199]}"
    assert "« Newest" in middle.content.decode()


def test_pagination_links_keep_the_filters(admin_client):
    with transaction.atomic():
        for i in range(260):
            audit.record(action="test.even" if i % 2 == 0 else "test.odd", actor=None)
    first = admin_client.get(LOG, {"action": "test.even"})
    older = link(first, "next")
    assert older.startswith("?action=test.even&before=")
    second = admin_client.get(LOG + older)
    assert len(ids(first)) == 100
    assert len(ids(second)) == 30
    evens = AuditEntry.objects.filter(action="test.even").order_by("-id")
    assert ids(first) + ids(second) == [e.pk for e in evens]
    assert link(second, "prev").startswith("?action=test.even&after=")


def queries_for(client, url: str) -> list[str]:
    client.get(url)  # warm caches (content types, compiled templates) outside the count
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return [q["sql"] for q in captured.captured_queries]


@pytest.mark.parametrize("cursor", ["", "?before=5", "?after=3"])
def test_a_page_costs_the_same_queries_for_10_or_150_entries_and_never_counts(
    admin_client, admin_user, make_image, cursor
):
    image = make_image()
    detail = {"suggestion": "block", "categories": ["porn"], "filename": "a.png"}
    add(5, actor=admin_user, image=image, detail=detail, context=CLIENT)
    add(5)
    small = queries_for(admin_client, LOG + cursor)
    add(70, actor=admin_user, image=image, detail=detail, context=CLIENT)
    add(70)
    large = queries_for(admin_client, LOG + cursor)
    assert len(small) == len(large)
    assert len(large) <= 12
    # The one count is the sequencer's lag: entries waiting for a position, bounded.
    [lag] = [sql for sql in large if "COUNT(" in sql.upper()]
    assert '"seq" IS NULL' in lag
    assert "LIMIT 100001" in lag


# -------------------------------------------------------------------------------------- htmx


def test_an_htmx_filter_request_gets_only_the_rows(admin_client, three_actors):
    response = admin_client.get(LOG, {"actor": "ada"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="audit-rows">')
    assert "<html" not in html
    assert "Verify now" not in html
    assert '<select name="actor">' not in html
    assert ids(response) == [three_actors[0].pk]
    assert "export.csv?actor=ada" in html  # the exports follow the filters that were swapped in
    assert "HX-Request" in response["Vary"]


def test_the_full_page_varies_on_htmx_too(admin_client):
    response = admin_client.get(LOG)
    assert "<html" in response.content.decode()
    assert response["Vary"].count("HX-Request") == 1


def test_an_htmx_history_restore_gets_the_whole_page(admin_client):
    response = admin_client.get(
        LOG, headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    )
    assert "<html" in response.content.decode()


def test_the_filter_form_works_with_htmx_and_without(admin_client):
    page = admin_client.get(LOG).content.decode()
    form = re.search(r'<form class="card audit-filters"[^>]*>', page, re.S).group(0)
    assert 'method="get"' in form
    assert 'action="/audit/"' in form
    assert 'hx-get="/audit/"' in form
    assert 'hx-target="#audit-rows"' in form
    assert 'hx-push-url="true"' in form


# ------------------------------------------------------------------------------ chain status


def test_the_page_says_when_the_log_was_never_verified(admin_client):
    page = admin_client.get(LOG).content.decode()
    assert "Never verified." in page
    assert "Log verified" not in page


def test_the_page_shows_the_latest_good_check_with_its_head_and_age(admin_client):
    with time_machine.travel(datetime.now(UTC) - timedelta(days=3)):
        ChainCheck.objects.create(ok=False, entries=1, problem="entry #2: old", seconds=0.1)
    with time_machine.travel(datetime.now(UTC) - timedelta(hours=2)):
        ChainCheck.objects.create(ok=True, entries=1, head_hash=HEAD, seconds=0.2)
    page = admin_client.get(LOG).content.decode()
    assert re.search(
        r"Log verified: 1 entry, root <code[^>]*>abcdef012345…</code>, checked "
        r"<time[^>]*>2\xa0hours ago</time>",
        page,
    ), page
    assert "BROKEN" not in page
    assert "Never verified" not in page


def test_the_page_counts_entries_sequenced_since_the_last_check(admin_client):
    add(3)
    size = sequence_all()
    ChainCheck.objects.create(ok=True, entries=2, head_hash=HEAD, seconds=0.1)
    page = admin_client.get(LOG).content.decode()
    assert f"{size - 2} entries sequenced since." in page


def test_the_page_says_in_red_where_the_log_broke(admin_client):
    ChainCheck.objects.create(
        ok=False,
        entries=6,
        head_hash=HEAD,
        problem="entry #7 (id 7): its reason column does not match its content: the column was "
        "edited",
        seconds=0.1,
    )
    page = admin_client.get(LOG).content.decode()
    assert 'class="card chain chain-broken"' in page
    assert (
        "<strong>Log BROKEN at entry #7 (id 7): its reason column does not match its content: "
        "the column was edited</strong>"
    ) in page
    assert "the first 6 entries verified" in page
    assert "Log verified" not in page


def test_a_cut_log_reads_as_broken_too(admin_client):
    problem = "a checkpoint signs 9 entries but the log has 4: entries #5 to #9 were deleted (cut)"
    ChainCheck.objects.create(ok=False, entries=4, problem=problem, seconds=0.1)
    page = admin_client.get(LOG).content.decode()
    assert f"Log BROKEN: {problem}" in page


# ---------------------------------------------------------------------------------- verifying


def test_verify_now_queues_the_check_and_comes_back_with_a_message(admin_client):
    default_task_backend.clear()
    response = admin_client.post(VERIFY, {"next": "/audit/?action=imm.routed"})
    assert response.status_code == 302
    assert response["Location"] == "/audit/?action=imm.routed"
    assert [r.task.name for r in default_task_backend.results] == ["verify_audit_chain"]
    assert not ChainCheck.objects.exists()  # queued, not run in the request
    page = admin_client.get(response["Location"]).content.decode()
    assert "Verification queued" in page


@pytest.fixture
def db_tasks(settings):
    """The database task backend, as `make run` and production have it (tests record tasks)."""
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}


def queued_walks() -> list[str]:
    from django_tasks_db.models import DBTaskResult

    return sorted(
        DBTaskResult.objects.filter(task_path=verify_audit_chain.module_path).values_list(
            "status", flat=True
        )
    )


def test_verify_now_queues_one_walk_at_a_time_and_the_page_says_it_is_waiting(
    admin_client, db_tasks
):
    first = admin_client.post(VERIFY, follow=True).content.decode()
    assert "Verification queued" in first
    assert "A verification is waiting for a worker: queued" in first

    second = admin_client.post(VERIFY, follow=True).content.decode()
    assert "A verification is already queued" in second
    assert queued_walks() == [TaskResultStatus.READY]
    assert VerificationRequest.objects.count() == 1


def test_the_page_says_when_the_walk_is_running_and_forgets_it_once_done(admin_client, db_tasks):
    from django_tasks_db.models import DBTaskResult

    admin_client.post(VERIFY)
    walk = DBTaskResult.objects.get()
    walk.claim("worker-1")
    page = admin_client.get(LOG).content.decode()
    assert "A verification is reading the log: started" in page
    again = admin_client.post(VERIFY, follow=True).content.decode()
    assert "A verification is already running" in again

    walk.set_successful("ok")
    assert "A verification is" not in admin_client.get(LOG).content.decode()
    admin_client.post(VERIFY)
    assert queued_walks() == [TaskResultStatus.READY, TaskResultStatus.SUCCESSFUL]
    assert VerificationRequest.objects.count() == 1  # only the latest is kept


def test_a_walk_is_taken_for_lost_an_hour_after_it_started_however_long_it_waited(db_tasks):
    from django_tasks_db.models import DBTaskResult

    assert request_verification() is None
    walk = DBTaskResult.objects.get()
    walk.claim("worker-1")
    DBTaskResult.objects.update(enqueued_at=walk.started_at - timedelta(hours=5))
    started = DBTaskResult.objects.get().started_at

    # Queued five hours before it started: still running, not lost.
    assert pending_verification(now=started + timedelta(minutes=59)) == PendingVerification(
        started, running=True
    )
    assert pending_verification(now=started + VERIFICATION_LOST_AFTER) is not None
    assert (
        pending_verification(now=started + VERIFICATION_LOST_AFTER + timedelta(seconds=1)) is None
    )


def test_a_walk_waiting_for_a_worker_is_never_taken_for_lost(db_tasks):
    from django_tasks_db.models import DBTaskResult

    request_verification()
    queued = DBTaskResult.objects.get().enqueued_at

    pending = pending_verification(now=queued + timedelta(days=3))

    assert pending == PendingVerification(queued, running=False)


def test_a_walk_whose_result_was_pruned_is_not_pending(admin_client, db_tasks):
    from django_tasks_db.models import DBTaskResult

    request_verification()
    DBTaskResult.objects.all().delete()  # manage.py prune_db_task_results, say

    assert pending_verification() is None
    admin_client.post(VERIFY)
    assert queued_walks() == [TaskResultStatus.READY]


def test_verify_now_never_redirects_off_the_site(admin_client):
    response = admin_client.post(VERIFY, {"next": "https://evil.example/audit/"})
    assert response["Location"] == "/audit/"


def test_verify_now_from_htmx_redirects_the_whole_page(admin_client):
    response = admin_client.post(VERIFY, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/audit/"


def test_the_page_offers_verify_now_as_a_real_form(admin_client):
    page = admin_client.get(LOG, {"actor": "ada"}).content.decode()
    form = re.search(r'<form method="post" action="/audit/verify">(.*?)</form>', page, re.S)
    assert form
    assert "csrfmiddlewaretoken" in form.group(1)
    assert 'name="next" value="/audit/?actor=ada"' in form.group(1)


def test_the_verify_task_records_a_good_check(admin_user):
    add(4)
    size = sequence_all()
    assert verify_audit_chain.call() == "ok"
    check = ChainCheck.objects.get()
    root = bytes(AuditCheckpoint.objects.get(tree_size=size).root_hash).hex()
    assert (check.ok, check.entries, check.head_hash, check.problem) == (True, size, root, "")


def test_the_verify_task_records_where_the_log_broke(admin_user):
    add(2)
    size = sequence_all()
    head = AuditEntry.objects.get(seq=size)
    # An entry given a position by something other than the sequencer (an INSERT needs no
    # tampering past the trigger).
    forged = AuditEntry.objects.create(
        seq=size + 1,
        created_at=head.created_at,
        actor_label="system",
        action="test.forged",
        content=b"{}",
        entry_hash=hashlib.sha256(b"{}").hexdigest(),
        leaf_hash=hashlib.sha256(b"\x00{}").digest(),
    )
    assert verify_audit_chain.call() == "broken"
    check = ChainCheck.objects.get()
    assert not check.ok
    assert check.entries == size
    assert check.problem.startswith(f"entry #{size + 1} (id {forged.pk}): ")


# ------------------------------------------------------------------------------------ exports


@pytest.fixture
def varied(admin_user, make_image):
    image = make_image()
    with transaction.atomic():
        audit.record(
            action="review.rejected",
            actor=admin_user,
            image=image,
            state_before="awaiting_review",
            state_after="rejected",
            reason='Zoë\u2019s "quoted", comma\nand a new line',
            detail={
                "imm_suggestion": "block",
                "imm_categories": ["porn"],
                "nested": {"a": [1, None]},
            },
            context=CLIENT,
        )
        audit.record(
            action="imm.paused", actor=None, detail={"code": "InvalidAccessKeyId.NotFound"}
        )
    return image


def expected_rows(**filters: Any) -> list[dict[str, Any]]:
    entries = AuditEntry.objects.filter(**filters).in_log_order()
    return [
        {
            "seq": e.seq,
            "time": e.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": e.actor_label,
            "actor_id": e.actor_id,
            "action": e.action,
            "image_id": e.image_id,
            "state_before": e.state_before,
            "state_after": e.state_after,
            "reason": e.reason,
            "detail": e.detail,
            "ip_address": e.ip_address,
            "user_agent": e.user_agent,
            "prev_hash": e.prev_hash,
            "entry_hash": e.entry_hash,
            "leaf_hash": bytes(e.leaf_hash).hex() if e.leaf_hash else None,
            "content": bytes(e.content).decode(),
        }
        for e in entries
    ]


def as_csv_cells(row: dict[str, Any]) -> list[str]:
    cells = {**row, "detail": json.dumps(row["detail"], ensure_ascii=False, sort_keys=True)}
    return ["" if cells[c] is None else str(cells[c]) for c in EXPORT_COLUMNS]


def test_the_csv_export_parses_back_to_the_database_rows_in_log_order(admin_client, varied):
    sequence_all()
    with transaction.atomic():
        audit.record(action="test.waiting", actor=None)
    response = admin_client.get(CSV_URL)
    header, *rows = csv_rows(response)
    assert header == list(EXPORT_COLUMNS)
    assert rows == [as_csv_cells(row) for row in expected_rows()]
    positions = [int(r[0]) for r in rows[:-1]]
    assert positions == list(range(1, len(rows)))
    assert rows[-1][0] == ""  # waiting for its position, last
    assert rows[-1][EXPORT_COLUMNS.index("leaf_hash")] == ""
    rejected = next(r for r in rows if r[EXPORT_COLUMNS.index("action")] == "review.rejected")
    assert rejected[EXPORT_COLUMNS.index("reason")] == 'Zoë\u2019s "quoted", comma\nand a new line'
    assert json.loads(rejected[EXPORT_COLUMNS.index("detail")])["nested"] == {"a": [1, None]}
    assert datetime.fromisoformat(rejected[1]).tzinfo == UTC


def test_the_csv_starts_with_one_byte_order_mark_for_spreadsheets_and_jsonl_with_none(
    admin_client, varied
):
    data = body(admin_client.get(CSV_URL))
    assert data.startswith(b"\xef\xbb\xbfseq,time,")
    assert data.count(b"\xef\xbb\xbf") == 1
    assert not body(admin_client.get(JSONL_URL)).startswith(b"\xef\xbb\xbf")


def test_the_jsonl_export_is_one_object_per_entry_in_log_order(admin_client, varied):
    response = admin_client.get(JSONL_URL)
    assert response["Content-Type"].startswith("application/jsonl")
    lines = jsonl_rows(response)
    assert lines == expected_rows()
    assert all(list(line) == list(EXPORT_COLUMNS) for line in lines)
    assert isinstance(lines[-1]["detail"], dict)


def test_exports_are_streamed_downloads_named_for_the_moment(admin_client):
    add(3)
    with time_machine.travel(datetime(2025, 6, 7, 8, 9, 10, tzinfo=UTC), tick=False):
        for url, extension in ((CSV_URL, "csv"), (JSONL_URL, "jsonl")):
            response = admin_client.get(url)
            assert response.streaming is True
            assert response["Content-Disposition"] == (
                f'attachment; filename="audit-log-20250607T080910Z.{extension}"'
            )
            assert "no-store" in response["Cache-Control"]


def test_exports_apply_the_same_filters_as_the_page(admin_client, varied, three_actors):
    query = {"actor": "ada", "image": varied.pk}
    _, *rows = csv_rows(admin_client.get(CSV_URL, query))
    assert [r[EXPORT_COLUMNS.index("entry_hash")] for r in rows] == [
        e["entry_hash"] for e in expected_rows(actor__username="ada", image=varied)
    ]
    assert [r[EXPORT_COLUMNS.index("action")] for r in rows] == [
        "image.uploaded",
        "review.rejected",
    ]
    lines = jsonl_rows(admin_client.get(JSONL_URL, {"action": "imm.routed"}))
    assert [line["seq"] for line in lines] == [three_actors[2].seq]


def test_an_export_with_no_matches_is_just_the_header(admin_client):
    assert csv_rows(admin_client.get(CSV_URL, {"action": "test.none"})) == [list(EXPORT_COLUMNS)]
    assert body(admin_client.get(JSONL_URL, {"action": "test.none"})) == b""


def test_the_page_links_to_both_exports_with_its_filters(admin_client, three_actors):
    page = admin_client.get(LOG, {"action": "review.approved", "before": 99}).content.decode()
    assert 'href="/audit/export.csv?action=review.approved"' in page
    assert 'href="/audit/export.jsonl?action=review.approved"' in page
    unfiltered = admin_client.get(LOG).content.decode()
    assert 'href="/audit/export.csv"' in unfiltered


def test_the_csv_export_defuses_spreadsheet_formulas(admin_client):
    dangerous = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1"]
    with transaction.atomic():
        for text in dangerous:
            audit.record(
                action="test.formula",
                actor=None,
                reason=text,
                context=audit.AuditContext("198.51.100.1", text),
            )
        audit.record(action="test.formula", actor=None, reason="plain text, 1 = 1")
    _, *rows = csv_rows(admin_client.get(CSV_URL, {"action": "test.formula"}))
    reasons = [r[EXPORT_COLUMNS.index("reason")] for r in rows]
    agents = [r[EXPORT_COLUMNS.index("user_agent")] for r in rows]
    assert reasons == ["'" + text for text in dangerous] + ["plain text, 1 = 1"]
    assert agents == ["'" + text for text in dangerous] + [""]
    # JSON Lines is for programs, which must get the exact values.
    lines = jsonl_rows(admin_client.get(JSONL_URL, {"action": "test.formula"}))
    assert [line["reason"] for line in lines[:-1]] == dangerous


def test_exporting_eight_thousand_entries_never_holds_them_all(admin_client):
    # About 1 KB an entry, so every 1,000 entries held at once take megabytes. The export reads
    # 2,000 rows at a time (two such chunks can be alive while the next is fetched): its peak is
    # the same for 4,000 entries as for 8,000, and far below a list of all the rows.
    def append(n: int) -> None:
        with transaction.atomic():
            for i in range(n):
                audit.record(action="test.memory", actor=None, detail={"i": i, "pad": "x" * 1000})

    def peak(work) -> int:
        tracemalloc.start()
        try:
            work()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def export(url: str):
        def run() -> None:
            size = sum(len(piece) for piece in admin_client.get(url).streaming_content)
            assert size > 1000 * AuditEntry.objects.count()

        return run

    def hold_everything() -> None:
        rows = list(AuditEntry.objects.in_log_order().values_list(*EXPORT_FIELDS))
        assert len(rows) > 8000

    append(4000)
    export(CSV_URL)()  # warm up (imports, compiled queries) outside the comparison
    before = peak(export(CSV_URL))
    append(4000)
    after = peak(export(CSV_URL))
    assert after - before < 1_500_000, f"the peak grew from {before} to {after} bytes"
    everything = peak(hold_everything)
    assert after < everything * 0.5, f"peak {after} vs all rows held {everything}"
    # JSON Lines reads the same stream of rows; only the line format differs.
    jsonl = peak(export(JSONL_URL))
    assert jsonl < everything * 0.5, f"JSON Lines peak {jsonl} vs all rows held {everything}"


def test_an_export_carries_everything_needed_to_verify_each_entry_offline(admin_client, varied):
    sequence_all()
    response = admin_client.get("/audit/export.jsonl")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)
        content = record["content"].encode()
        assert hashlib.sha256(content).hexdigest() == record["entry_hash"]
        assert hashlib.sha256(b"\x00" + content).hexdigest() == record["leaf_hash"]
        document = json.loads(content)
        assert document == {
            "time": record["time"],
            "actor_id": record["actor_id"],
            "actor": record["actor"],
            "action": record["action"],
            "image_id": record["image_id"],
            "state_before": record["state_before"],
            "state_after": record["state_after"],
            "reason": record["reason"],
            "detail": record["detail"],
            "ip": record["ip_address"],
            "user_agent": record["user_agent"],
        }


# ------------------------------------------------------------------------ the log's signed state


def test_the_page_shows_the_verifier_key_the_latest_checkpoint_and_no_lag(admin_client):
    add(3)
    size = sequence_all()
    page = admin_client.get(LOG).content.decode()
    assert f'<code class="key">{VERIFIER_KEY}</code>' in page
    assert re.search(
        rf"Latest checkpoint</span>\s*{size} entries, signed <time[^>]*>now</time> · "
        r'<a href="/audit/checkpoint">the signed checkpoint</a>',
        page,
    ), page
    assert "up to date: no entry is waiting for a position" in page


def test_the_page_shows_entries_waiting_for_a_position_and_when_the_sequencer_is_behind(
    admin_client,
):
    now = datetime.now(UTC)
    with time_machine.travel(now - timedelta(seconds=120), tick=False):
        waiting = add(2)
    with time_machine.travel(now, tick=False):
        page = admin_client.get(LOG).content.decode()
    waiting_now = AuditEntry.objects.filter(seq__isnull=True).count()  # the admin's own too
    assert (
        f"{waiting_now} entries waiting for a position, the oldest for 120 s: is <code>"
        "manage.py audit_sequencer</code> running?" in page
    )
    assert '<p class="problem"><span class="label">Sequencer</span>' in page
    row = page[page.index(f'<tr id="entry-{waiting[0].pk}">') :].split("</tr>")[0]
    assert ">pending</span>" in row
    assert "/proof" not in row
    assert 'Latest checkpoint</span>\n    <span class="muted">none yet</span>' in page


def test_each_positioned_row_links_to_its_bytes_and_its_receipt(admin_client):
    [entry] = add(1)
    sequence_all()
    entry.refresh_from_db()
    page = admin_client.get(LOG).content.decode()
    row = page[page.index(f'<tr id="entry-{entry.pk}">') :].split("</tr>")[0]
    assert f'<td class="num">{entry.seq}<span class="proof-links">' in row
    assert f'href="/audit/entries/{entry.seq}" download' in row
    assert f'href="/audit/entries/{entry.seq}/proof" download' in row


def test_the_page_says_when_no_signing_key_is_configured(admin_client, settings):
    settings.AUDIT_SIGNING_KEY = ""
    page = admin_client.get(LOG).content.decode()
    assert "<strong>No signing key is configured</strong>" in page
    assert "Verifier key" not in page


def test_the_page_warns_when_the_latest_checkpoint_is_not_signed_by_the_configured_key(
    admin_client, settings
):
    add(1)
    sequence_all()
    settings.AUDIT_SIGNING_KEY = generate_signer_key("tests.example/audit")
    page = admin_client.get(LOG).content.decode()
    assert (
        "The latest checkpoint does not open with this key: the note has no signature by "
        "tests.example/audit+" in page
    )


# ------------------------------------------------------------------------------------- proofs

ENTRY = "/audit/entries/{}"
PROOF = "/audit/entries/{}/proof"
CHECKPOINT = "/audit/checkpoint"
PROOF_URLS = [ENTRY.format(1), PROOF.format(1), CHECKPOINT]


@pytest.mark.parametrize("url", PROOF_URLS)
def test_anonymous_visitors_are_sent_to_log_in_from_the_proofs(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("url", PROOF_URLS)
def test_reviewers_are_refused_the_proofs(reviewer_client, url):
    add(1)
    sequence_all()
    response = reviewer_client.get(url)
    assert response.status_code == 403
    assert b"tlog" not in response.content
    assert b"tests.example/audit" not in response.content


@pytest.mark.parametrize("url", PROOF_URLS)
def test_the_proofs_only_answer_reads(admin_client, url):
    add(1)
    sequence_all()
    assert admin_client.post(url).status_code == 405


def test_an_entry_is_served_as_the_exact_bytes_of_its_leaf(admin_client):
    add(3)
    sequence_all()
    entry = AuditEntry.objects.get(seq=2)
    response = admin_client.get(ENTRY.format(2))
    assert response.status_code == 200
    assert response.content == bytes(entry.content)
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == 'attachment; filename="audit-entry-2.json"'
    assert "no-store" in response["Cache-Control"]
    assert hashlib.sha256(b"\x00" + response.content).digest() == bytes(entry.leaf_hash)


NO_ENTRY_9 = "No audit entry has position #9: there is none, or it is waiting for the sequencer.\n"
NOT_A_POSITION = (
    "That is not a position in the log: a position is a whole number from 1 to "
    "9223372036854775807, in the digits 0 to 9.\n"
)


@pytest.mark.parametrize(
    ("position", "says"),
    [("9", NO_ENTRY_9), ("0", NOT_A_POSITION), ("x1", NOT_A_POSITION), ("9" * 30, NOT_A_POSITION)],
)
def test_a_position_with_no_entry_is_a_plain_404_saying_so(admin_client, position, says):
    add(3)
    sequence_all()
    for url in (ENTRY.format(position), PROOF.format(position)):
        response = admin_client.get(url)
        assert response.status_code == 404
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        assert response.content.decode() == says


def test_an_entry_waiting_for_its_position_has_no_address_yet(admin_client):
    add(2)
    assert admin_client.get(ENTRY.format(1)).status_code == 404
    assert admin_client.get(PROOF.format(1)).status_code == 404
    response = admin_client.get(CHECKPOINT)
    assert response.status_code == 404
    assert response.content == b"The audit log has no checkpoint yet: is the sequencer running?\n"


def test_a_positioned_entry_no_checkpoint_covers_has_no_receipt_and_says_why(admin_client):
    add(2)
    size = sequence_all()
    content = b'{"uncovered":true}'
    AuditEntry.objects.create(  # as entries of the hash-chain era are before the first run
        seq=size + 1,
        created_at=datetime.now(UTC),
        actor_label="system",
        action="test.uncovered",
        content=content,
        entry_hash=hashlib.sha256(content).hexdigest(),
        leaf_hash=hashlib.sha256(b"\x00" + content).digest(),
        prev_hash="0" * 64,
    )
    assert admin_client.get(ENTRY.format(size + 1)).content == content
    response = admin_client.get(PROOF.format(size + 1))
    assert response.status_code == 404
    assert response.content.decode() == (
        f"Entry #{size + 1} has no receipt yet: the latest checkpoint covers entries #1 to "
        f"#{size}.\n"
    )


def test_the_latest_signed_checkpoint_is_served_as_text(admin_client):
    add(3)
    size = sequence_all(batch_size=2)
    response = admin_client.get(CHECKPOINT)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == AuditCheckpoint.objects.get(tree_size=size).signed_note
    text = response.content.decode()
    assert text.startswith(f"tests.example/audit\n{size}\n")
    assert "\n\n\u2014 tests.example/audit " in text


def rfc9162_included(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2, written from the RFC for this test."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def check_independently(entry: bytes, proof: str, verifier_key: str) -> int:
    """Check a receipt from the C2SP specifications alone (tlog-proof, signed-note,
    tlog-checkpoint) and the `cryptography` package; return the tree size it proves against."""
    head, note = proof.split("\n\n", 1)
    header, index_line, *hashes = head.split("\n")
    assert header == "c2sp.org/tlog-proof@v1"
    index = int(index_line.removeprefix("index "))
    path = [base64.b64decode(h) for h in hashes]
    blank = note.rindex("\n\n")
    text, signatures = note[: blank + 1], note[blank + 2 :]
    name, key_id, key = verifier_key.split("+", 2)  # base64 has "+" too
    public = base64.b64decode(key)
    assert public[0] == 1  # Ed25519
    assert hashlib.sha256(name.encode() + b"\n" + public).digest()[:4].hex() == key_id
    signed = False
    for line in signatures.splitlines():
        signer, encoded = line.removeprefix("\u2014 ").split(" ")
        raw = base64.b64decode(encoded)
        if signer == name and raw[:4].hex() == key_id:
            Ed25519PublicKey.from_public_bytes(public[1:]).verify(raw[4:], text.encode())
            signed = True
    assert signed
    origin, size, root = text.splitlines()[:3]
    assert origin == name
    leaf = hashlib.sha256(b"\x00" + entry).digest()
    assert rfc9162_included(leaf, index, int(size), path, base64.b64decode(root))
    return int(size)


def test_a_receipt_from_the_endpoint_verifies_offline_with_the_standalone_verifier_and_the_specs(
    admin_client, tmp_path
):
    add(11)
    sequence_all(batch_size=4)
    add(2)
    size = sequence_all()
    for seq in (1, 6, 11, size):
        entry = admin_client.get(ENTRY.format(seq)).content
        response = admin_client.get(PROOF.format(seq))
        assert response.status_code == 200
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        assert response["Content-Disposition"] == f'attachment; filename="audit-entry-{seq}.proof"'
        proof = response.content.decode()
        assert proof.startswith(f"c2sp.org/tlog-proof@v1\nindex {seq - 1}\n")
        assert proof.endswith(AuditCheckpoint.objects.get(tree_size=size).signed_note)
        assert check_independently(entry, proof, VERIFIER_KEY) == size

        (tmp_path / "entry").write_bytes(entry)
        (tmp_path / "proof").write_text(proof)
        done = subprocess.run(
            [sys.executable, "-m", "moderation.audit.receipt", "entry", "proof", VERIFIER_KEY],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout.startswith(
            f"OK: entry {seq - 1} is in tests.example/audit at tree size {size}"
        )

    # Another entry's bytes with this receipt: not proven.
    (tmp_path / "entry").write_bytes(admin_client.get(ENTRY.format(2)).content)
    done = subprocess.run(
        [sys.executable, "-m", "moderation.audit.receipt", "entry", "proof", VERIFIER_KEY],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("FAILED: ")
