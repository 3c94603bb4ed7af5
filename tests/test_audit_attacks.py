"""The audit log's endpoints probed as an attacker would: who may ask, with which methods, with
what in the URL and the query string, what comes back (headers, types, secrets), and what it costs.

Every non-admin answer is the same whether the position asked for exists or not; bad input is a
4xx that says why, never a 500; no answer is cached or names a secret; reads stay bounded.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from moderation import limits
from moderation.audit import log as audit
from moderation.audit.note import Signer, generate_signer_key, open_checkpoint
from moderation.models import AuditCheckpoint, AuditEntry, AuditTreeNode, VerificationRequest

from .audit_log import sequence_all
from .conftest import PASSWORD
from .test_audit import tamper

pytestmark = pytest.mark.django_db

LOG = "/audit/"
VERIFY = "/audit/verify"
CHECKPOINT = "/audit/checkpoint"
ENTRY = "/audit/entries/{}"
PROOF = "/audit/entries/{}/proof"
EXPORTS = ["/audit/export.csv", "/audit/export.jsonl"]
READS = [LOG, CHECKPOINT, *EXPORTS]
METHODS = ["get", "head", "post", "put", "patch", "delete", "options"]
NOT_A_POSITION = (
    "That is not a position in the log: a position is a whole number from 1 to "
    f"{limits.WHOLE_NUMBER_MAX}, in the digits 0 to 9.\n"
)
TREE_NODES = AuditTreeNode._meta.db_table


def add(n: int) -> list[AuditEntry]:
    with transaction.atomic():
        return [
            audit.record(action="test.attack", actor=None, reason=f"entry {i}") for i in range(n)
        ]


def content_of(response) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


# The page's CSRF token is masked afresh in every answer; nothing else may differ.
_CSRF_TOKEN = re.compile(rb"[A-Za-z0-9]{64}")


def seen(response) -> tuple[int, bytes, dict[str, str]]:
    """What a client learns from an answer: its status, body and headers (CSRF tokens masked;
    the CSRF cookie is set on whichever answer comes first)."""
    headers = {k: v for k, v in response.headers.items() if k != "Set-Cookie"}
    return response.status_code, _CSRF_TOKEN.sub(b"TOKEN", response.content), headers


@pytest.fixture
def no_role_client(db) -> Client:
    """Signed in, but with no role at all (an account made outside the app's roles)."""
    user = get_user_model().objects.create_user("nobody", password=PASSWORD)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def log_of_five(admin_user) -> int:
    """A sequenced log (the admin's own creation plus four), and one entry still waiting."""
    add(4)
    size = sequence_all()
    add(1)
    return size


# ---------------------------------------------------------------------------- who may ask


@pytest.mark.parametrize("method", METHODS)
def test_anonymous_visitors_are_sent_to_log_in_alike_whether_a_position_exists_or_not(
    client, log_of_five, method
):
    for template in (ENTRY, PROOF):
        answers = []
        for position in ("1", "999"):
            url = template.format(position)
            response = getattr(client, method)(url)
            assert response.status_code == 302, (method, url)
            assert response["Location"] == f"/accounts/login/?next={quote(url)}"
            answers.append((response.content, sorted(response.headers)))
        assert answers[0] == answers[1]
    for url in [*READS, VERIFY]:
        assert getattr(client, method)(url).status_code == 302


@pytest.mark.parametrize("who", ["reviewer_client", "no_role_client"])
@pytest.mark.parametrize("method", METHODS)
def test_people_without_the_audit_role_get_one_403_whether_a_position_exists_or_not(
    request, log_of_five, who, method
):
    client = request.getfixturevalue(who)
    for template in (ENTRY, PROOF):
        existing = getattr(client, method)(template.format(1))
        missing = getattr(client, method)(template.format(999))
        waiting = getattr(client, method)(template.format(log_of_five + 1))
        assert existing.status_code == missing.status_code == waiting.status_code == 403
        assert seen(existing) == seen(missing) == seen(waiting)
        assert b"tlog" not in existing.content
        assert b"audit-entry" not in existing.content


@pytest.mark.parametrize("who", ["reviewer_client", "no_role_client"])
def test_people_without_the_audit_role_are_refused_every_audit_read_and_learn_nothing(
    request, log_of_five, who
):
    client = request.getfixturevalue(who)
    secret_reason = "only-admins-may-read-this-reason"
    with transaction.atomic():
        audit.record(
            action="test.private",
            actor=None,
            reason=secret_reason,
            context=audit.AuditContext("198.51.100.77", "SecretAgent/1.0"),
        )
    sequence_all()
    for url in [*READS, f"{LOG}?actor=ada", f"{LOG}?after=0"]:
        response = client.get(url, HTTP_HX_REQUEST="true")
        body = content_of(response)
        assert response.status_code == 403, url
        for leaked in (secret_reason, "198.51.100.77", "SecretAgent", "tests.example/audit"):
            assert leaked.encode() not in body, (url, leaked)


@pytest.mark.parametrize(
    ("who", "status"), [("client", 302), ("reviewer_client", 403), ("no_role_client", 403)]
)
def test_nobody_but_an_admin_can_queue_a_verification(request, who, status):
    client = request.getfixturevalue(who)
    response = client.post(VERIFY, {"next": "https://evil.example/"})
    assert response.status_code == status
    if status == 302:
        assert response["Location"] == "/accounts/login/?next=/audit/verify"
    assert not VerificationRequest.objects.exists()


def test_queueing_a_verification_needs_the_csrf_token(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(VERIFY).status_code == 403
    assert not VerificationRequest.objects.exists()
    client.get(LOG)  # the page's form sets the cookie and carries the token
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    response = client.post(VERIFY, {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert VerificationRequest.objects.count() == 1


# -------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("url", [ENTRY.format(1), PROOF.format(1), *READS])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options"])
def test_the_audit_reads_refuse_every_other_method_with_405_naming_get_and_head(
    admin_client, log_of_five, url, method
):
    response = getattr(admin_client, method)(url)
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert AuditEntry.objects.filter(seq__isnull=False).count() == log_of_five


@pytest.mark.parametrize("url", [ENTRY.format(1), PROOF.format(1), CHECKPOINT, LOG])
def test_head_on_a_read_answers_the_headers_with_no_body(admin_client, log_of_five, url):
    got, head = admin_client.get(url), admin_client.head(url)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head["Content-Type"] == got["Content-Type"]


@pytest.mark.parametrize("method", ["get", "head", "put", "patch", "delete", "options"])
def test_verify_now_answers_only_a_post(admin_client, method):
    response = getattr(admin_client, method)(VERIFY)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert not VerificationRequest.objects.exists()


# ---------------------------------------------------------------------- positions in the URL


@pytest.mark.parametrize(
    "position",
    [
        "0",
        "00",
        "-1",
        str(2**63),
        str(10**30),
        "9" * 5000,
        "abc",
        "\u0661\u0662",  # Arabic-Indic "12": int() reads it, a position is ASCII digits only
        "\u0661",
        "\uff11",  # a fullwidth "1"
        "\u00b2",
        "1.0",
        "+1",
        "1e0",
        " 1",
        "1 ",
        "0x1",
        "1\x00",
        "\x00",
        "1;DROP TABLE moderation_auditentry",
    ],
)
def test_a_position_that_is_not_a_whole_number_is_a_plain_404_that_says_what_a_position_is(
    admin_client, log_of_five, position
):
    for template in (ENTRY, PROOF):
        response = admin_client.get(template.format(quote(position, safe="")))
        assert response.status_code == 404
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        assert response.content.decode() == NOT_A_POSITION
    assert AuditEntry.objects.filter(seq__isnull=False).count() == log_of_five


def test_the_largest_position_a_database_integer_holds_is_just_not_there(admin_client, log_of_five):
    for template in (ENTRY, PROOF):
        response = admin_client.get(template.format(limits.WHOLE_NUMBER_MAX))
        assert response.status_code == 404
        assert response.content.decode() == (
            f"No audit entry has position #{limits.WHOLE_NUMBER_MAX}: there is none, or it is "
            "waiting for the sequencer.\n"
        )


def test_leading_zeros_name_the_same_position_and_the_download_keeps_the_plain_number(
    admin_client, log_of_five
):
    plain, padded = admin_client.get(ENTRY.format(2)), admin_client.get(ENTRY.format("0002"))
    assert padded.status_code == 200
    assert padded.content == plain.content == bytes(AuditEntry.objects.get(seq=2).content)
    assert padded["Content-Disposition"] == 'attachment; filename="audit-entry-2.json"'
    proof = admin_client.get(PROOF.format("0002"))
    assert proof["Content-Disposition"] == 'attachment; filename="audit-entry-2.proof"'
    assert proof.content == admin_client.get(PROOF.format(2)).content


@pytest.mark.parametrize(
    "url",
    [
        "/audit/entries/1/",
        "/audit/entries/1/proof/",
        "/audit/entries/1//proof",
        "/audit/entries/",
        "/audit/entries//proof",
        "/audit/checkpoint/",
        "/audit/entries/1/proof/extra",
    ],
)
def test_trailing_slashes_and_empty_positions_are_plain_404s_never_a_redirect(
    admin_client, log_of_five, url
):
    response = admin_client.get(url)
    assert response.status_code == 404
    assert b"tlog" not in response.content


def test_a_query_string_changes_nothing_on_the_proofs_and_a_nul_in_it_is_refused(
    admin_client, log_of_five
):
    for url in (ENTRY.format(1), PROOF.format(1), CHECKPOINT):
        plain = admin_client.get(url).content
        assert admin_client.get(url, {"seq": "2", "format": "json", "x": "' OR 1=1"}).content == (
            plain
        )
        refused = admin_client.get(url, {"seq": "1\x00"})
        assert refused.status_code == 400
        assert b"NUL" in refused.content


# ------------------------------------------------------------------ the state of the log


def test_an_entry_waiting_for_its_position_answers_exactly_as_a_position_never_used(admin_client):
    add(2)
    size = sequence_all()
    [waiting] = add(1)
    next_position = size + 1
    for template in (ENTRY, PROOF):
        at_next = admin_client.get(template.format(next_position))
        never = admin_client.get(template.format(next_position + 1000))
        assert at_next.status_code == never.status_code == 404
        assert at_next.content.replace(str(next_position).encode(), b"N") == never.content.replace(
            str(next_position + 1000).encode(), b"N"
        )
    sequence_all()
    waiting.refresh_from_db()
    assert waiting.seq == next_position
    assert admin_client.get(ENTRY.format(next_position)).content == bytes(waiting.content)
    assert admin_client.get(PROOF.format(next_position)).status_code == 200


def test_a_positioned_entry_before_any_checkpoint_has_its_bytes_but_no_receipt_and_says_why(
    admin_client,
):
    content = b'{"era":"hash-chain"}'
    AuditEntry.objects.create(  # as entries of the hash-chain era are before the first run
        seq=1,
        created_at=datetime.now(UTC),
        actor_label="system",
        action="test.legacy",
        content=content,
        entry_hash=hashlib.sha256(content).hexdigest(),
        leaf_hash=hashlib.sha256(b"\x00" + content).digest(),
        prev_hash="0" * 64,
    )
    assert admin_client.get(ENTRY.format(1)).content == content
    response = admin_client.get(PROOF.format(1))
    assert response.status_code == 404
    assert response.content.decode() == (
        "Entry #1 has no receipt yet: the log has no checkpoint (is the sequencer running?).\n"
    )
    assert admin_client.get(CHECKPOINT).status_code == 404


def test_a_receipt_is_refused_with_the_reason_when_a_stored_subtree_is_missing(
    admin_client, caplog
):
    add(6)
    sequence_all()
    assert AuditTreeNode.objects.exists()
    tamper(f"DELETE FROM {TREE_NODES}")  # noqa: S608
    response = admin_client.get(PROOF.format(1))
    assert response.status_code == 500
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    text = response.content.decode()
    assert text.startswith(
        "Entry #1 has no receipt: the stored tree does not prove it is in the latest checkpoint "
        "(no hash for the subtree at level "
    )
    assert text.endswith("Run manage.py verify_audit.\n")
    assert "tlog-proof" not in text
    assert "audit receipt refused: Entry #1 has no receipt" in caplog.text


def test_a_receipt_is_refused_when_a_stored_subtree_was_altered(admin_client):
    add(6)
    size = sequence_all()
    assert size == 7  # the admin's account, then six
    good = {seq: admin_client.get(PROOF.format(seq)).content for seq in range(1, size + 1)}
    altered = f'UPDATE {TREE_NODES} SET hash = %s WHERE level = 1 AND "index" = 0'  # noqa: S608
    tamper(altered, [b"\x00" * 32])
    # Subtree (1, 0) is leaves 0 and 1: the proofs of leaves 2 and 3 hold it; leaves 4 to 6 hold
    # (2, 0), stored on its own, and leaves 0 and 1 prove themselves with each other.
    for seq in (3, 4):
        response = admin_client.get(PROOF.format(seq))
        assert response.status_code == 500, seq
        assert f"leaf {seq - 1} with this proof does not lead to the root hash" in (
            response.content.decode()
        )
    for seq in (1, 2, 5, 6, 7):
        assert admin_client.get(PROOF.format(seq)).content == good[seq], seq


def test_a_receipt_is_refused_when_an_entrys_leaf_hash_was_altered(admin_client):
    add(3)
    sequence_all()
    entries = AuditEntry._meta.db_table
    tamper(f"UPDATE {entries} SET leaf_hash = %s WHERE seq = 2", [b"\x11" * 32])  # noqa: S608
    response = admin_client.get(PROOF.format(2))
    assert response.status_code == 500
    assert "leaf 1 with this proof does not lead to the root hash" in response.content.decode()


# ------------------------------------------------------------------- the page's query string


@pytest.mark.parametrize("name", ["before", "after"])
@pytest.mark.parametrize("value", ["-1", "abc", str(2**63), "9" * 5000, "1.5", "\u0661", "0x10"])
def test_a_page_cursor_that_does_not_parse_is_named_and_the_newest_page_shown(
    admin_client, name, value
):
    add(3)
    newest = admin_client.get(LOG)
    response = admin_client.get(LOG, {name: value})
    assert response.status_code == 200
    page = response.content.decode()
    assert f'<li class="error">“{name}” is not an entry number, so it is ignored.</li>' in page
    rows = re.findall(r'<tr id="entry-(\d+)">', page)
    assert rows == re.findall(r'<tr id="entry-(\d+)">', newest.content.decode())
    assert rows


def test_a_cursor_past_either_end_is_an_empty_page_with_a_way_back(admin_client):
    add(3)
    for query in ({"before": "1"}, {"after": str(limits.WHOLE_NUMBER_MAX)}, {"before": "0"}):
        response = admin_client.get(LOG, query)
        assert response.status_code == 200
        page = response.content.decode()
        assert not re.findall(r'<tr id="entry-(\d+)">', page)
        assert "No entries on this page." in page, query
        assert "« Newest</a>" in page, query
        assert "is not an entry number" not in page


@pytest.mark.parametrize(
    "query",
    [
        {"actor": "' OR '1'='1"},
        {"actor": '"><script>alert(1)</script>'},
        {"actor": "a" * 100_000},
        {"action": "test.attack' --"},
        {"action": "%"},
        {"action": "_"},
        {"image": "-1"},
        {"image": "1 OR 1=1"},
        {"image": "\u0661"},
        {"from": "0000-00-00"},
        {"from": "99999-01-01"},
        {"from": "2025-02-30"},
        {"to": "-2025-01-01"},
        {"from": "0001-01-01", "to": "9999-12-31"},
        {"from": "9999-12-31", "to": "0001-01-01"},
        {"page": "999999999999999999999"},
        {"page": "-1"},
    ],
    ids=lambda q: "&".join(f"{k}={v[:20]}" for k, v in q.items()),
)
def test_hostile_filter_values_are_answered_with_a_page_never_an_error_and_change_nothing(
    admin_client, query
):
    add(3)
    before = list(AuditEntry.objects.order_by("id").values_list("id", "content"))
    for htmx in (False, True):
        headers = {"HX-Request": "true"} if htmx else {}
        response = admin_client.get(LOG, query, headers=headers)
        assert response.status_code == 200
        page = response.content.decode()
        assert "<script>alert(1)</script>" not in page
        assert "' OR '1'='1" not in page  # shown escaped, if at all
    for url in EXPORTS:
        assert admin_client.get(url, query).status_code == 200
    assert list(AuditEntry.objects.order_by("id").values_list("id", "content")) == before


def test_an_injection_shaped_action_matches_literally_not_as_a_pattern(admin_client):
    add(2)
    for action in ("%", "_", "test.%", "test.attack' OR '1'='1"):
        response = admin_client.get(LOG, {"action": action})
        assert not re.findall(r'<tr id="entry-(\d+)">', response.content.decode()), action


def _page_queries(client: Client, query: dict[str, str]) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(LOG, query).status_code == 200
    return [q["sql"] for q in queries.captured_queries]


def test_a_page_far_past_the_end_reads_as_few_and_as_bounded_rows_as_the_first(admin_client):
    add(120)
    entries = AuditEntry._meta.db_table
    shapes = {}
    for name, query in {
        "newest": {},
        "far before": {"before": str(limits.WHOLE_NUMBER_MAX)},
        "far after": {"after": str(limits.WHOLE_NUMBER_MAX)},
        "past the start": {"before": "1"},
        "filtered": {"actor": "nobody-at-all", "from": "0001-01-01", "before": "5"},
    }.items():
        sql = _page_queries(admin_client, query)
        shapes[name] = len(sql)
        for statement in sql:
            if entries in statement:
                # Every read of the log is cut short by a LIMIT (rows, EXISTS, the lag's cap),
                # and none skips rows with an OFFSET, whatever the cursor.
                assert "LIMIT" in statement.upper(), (name, statement)
                assert "OFFSET" not in statement.upper(), (name, statement)
    assert max(shapes.values()) - min(shapes.values()) <= 1, shapes


# ---------------------------------------------------------------- headers, types, secrets


def _admin_answers(client: Client, size: int) -> dict[str, Any]:
    return {
        "page": client.get(LOG),
        "rows": client.get(LOG, headers={"HX-Request": "true"}),
        "entry": client.get(ENTRY.format(1)),
        "proof": client.get(PROOF.format(1)),
        "checkpoint": client.get(CHECKPOINT),
        "csv": client.get(EXPORTS[0]),
        "jsonl": client.get(EXPORTS[1]),
        "no entry": client.get(ENTRY.format(size + 50)),
        "not a position": client.get(ENTRY.format("x")),
        "no receipt": client.get(PROOF.format(size + 50)),
    }


def test_no_audit_answer_may_be_stored_by_a_shared_cache_or_the_browser(admin_client, log_of_five):
    for name, response in _admin_answers(admin_client, log_of_five).items():
        directives = {d.strip() for d in response["Cache-Control"].split(",")}
        assert {"private", "no-store", "no-cache"} <= directives, name
        assert "public" not in directives
        assert "Cookie" in response["Vary"], name
    # The page and its rows branch on htmx: a cache (the browser's) must key on that too.
    assert "HX-Request" in admin_client.get(LOG)["Vary"]


def test_every_audit_answer_names_its_type_and_forbids_sniffing(admin_client, log_of_five):
    expected = {
        "page": "text/html; charset=utf-8",
        "rows": "text/html; charset=utf-8",
        "entry": "application/octet-stream",
        "proof": "text/plain; charset=utf-8",
        "checkpoint": "text/plain; charset=utf-8",
        "csv": "text/csv; charset=utf-8",
        "jsonl": "application/jsonl; charset=utf-8",
        "no entry": "text/plain; charset=utf-8",
        "not a position": "text/plain; charset=utf-8",
        "no receipt": "text/plain; charset=utf-8",
    }
    for name, response in _admin_answers(admin_client, log_of_five).items():
        assert response["Content-Type"] == expected[name], name
        assert response["X-Content-Type-Options"] == "nosniff", name
    # Downloads are attachments, never rendered in the site's origin.
    for url in (ENTRY.format(1), PROOF.format(1)):
        assert admin_client.get(url)["Content-Disposition"].startswith("attachment; ")


def test_no_answer_names_the_private_signing_key_or_the_secret_key(
    client, admin_client, reviewer_client, log_of_five, settings
):
    signer = Signer.from_key(settings.AUDIT_SIGNING_KEY)
    seed = settings.AUDIT_SIGNING_KEY.rsplit("+", 1)[1]
    secrets = [
        settings.AUDIT_SIGNING_KEY.encode(),
        seed.encode(),
        base64.b64decode(seed)[1:],  # the raw Ed25519 seed
        b"PRIVATE+KEY",
        settings.SECRET_KEY.encode(),
    ]
    answers = list(_admin_answers(admin_client, log_of_five).values())
    answers += [c.get(url) for c in (client, reviewer_client) for url in [*READS, PROOF.format(1)]]
    answers += [client.get("/healthz"), admin_client.get("/healthz")]
    # A checkpoint signed by another key makes the page explain the mismatch: with names only.
    settings.AUDIT_SIGNING_KEY = generate_signer_key("tests.example/audit")
    answers.append(admin_client.get(LOG))
    for response in answers:
        body = content_of(response)
        for secret in secrets:
            assert secret not in body
        assert all(secret.decode("latin-1") not in str(response.headers) for secret in secrets)
    assert signer.verifier.vkey.encode() in content_of(answers[0])  # the public key is shown


def test_healthz_tells_anyone_the_sequencers_lag_and_nothing_of_the_entries(client):
    with transaction.atomic():
        audit.record(
            action="test.private",
            actor=None,
            reason="a-reason-for-admins-only",
            context=audit.AuditContext("198.51.100.23", "PrivateAgent/2.0"),
        )
    response = client.get("/healthz")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert body["audit_entries_waiting"] == AuditEntry.objects.filter(seq__isnull=True).count()
    assert isinstance(body["audit_oldest_waiting_seconds"], int)
    for leaked in ("a-reason-for-admins-only", "198.51.100.23", "PrivateAgent", "test.private"):
        assert leaked not in response.content.decode()


def test_the_checkpoint_served_is_the_latest_and_opens_with_the_logs_key(
    admin_client, log_of_five, settings
):
    text = admin_client.get(CHECKPOINT).content.decode()
    latest = AuditCheckpoint.objects.order_by("-tree_size").first()
    assert latest is not None
    assert text == latest.signed_note
    assert text.startswith(f"tests.example/audit\n{log_of_five}\n")
    signer = Signer.from_key(settings.AUDIT_SIGNING_KEY)
    assert open_checkpoint(text, signer.verifier).size == log_of_five
