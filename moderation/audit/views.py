"""The audit log pages: the global log with filters, its verification and signed state, streamed
exports, and the proofs: an entry's exact bytes, its receipt, the latest signed checkpoint.

Built for a log of millions of entries: pages are keyset pages on `id`, the order entries were
written in (an entry waiting for the sequencer has no position yet), never a COUNT or an OFFSET,
so a page costs the same few queries whatever its position; exports stream rows from a database
cursor in chunks, so an export of the whole log never holds it in memory.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import permission_required
from django.db.models import Exists, OuterRef, Q
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotFound,
    HttpResponseServerError,
    QueryDict,
    StreamingHttpResponse,
)
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe
from django_htmx.http import HttpResponseClientRedirect

from moderation import limits
from moderation.audit import checkpoints, sequencer
from moderation.audit.note import NoteError
from moderation.audit.tasks import pending_verification, request_verification
from moderation.models import AuditEntry, AuditEntryQuerySet, ChainCheck, Image

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    class HtmxHttpRequest(HttpRequest):
        htmx: HtmxDetails


logger = logging.getLogger(__name__)

VIEW_AUDIT = "moderation.view_auditentry"
PAGE_SIZE = 100
EXPORT_CHUNK_SIZE = 2000
# Rows are joined into pieces of about this many characters before they are sent: one write per
# row would mean a million tiny writes for a full export.
EXPORT_PIECE_CHARS = 64 * 1024

STATUS_LABELS = dict(Image.Status.choices)
ACTION_GROUPS = {
    "image": "Images",
    "imm": "IMM",
    "review": "Reviews",
    "routing": "Routing",
    "webhook": "Webhooks",
    "user": "Accounts",
}


# ------------------------------------------------------------------------------------ filters


@dataclass(frozen=True)
class Filters:
    """The log's filters, read from a query string; a value that does not parse is dropped and
    named in `problems`, so a bad link still shows the log rather than an error page."""

    actor: str = ""
    action: str = ""
    date_from: date | None = None
    date_to: date | None = None
    image_id: int | None = None
    problems: tuple[str, ...] = ()

    @classmethod
    def from_query(cls, query: QueryDict) -> Filters:
        problems: list[str] = []

        def day(name: str) -> date | None:
            raw = query.get(name, "").strip()
            if not raw:
                return None
            try:
                return date.fromisoformat(raw)
            except ValueError:
                problems.append(f"“{name}” is not a date like 2025-01-31, so it is ignored.")
                return None

        image = query.get("image", "").strip().lstrip("#")
        image_id = limits.whole_number(image)
        if image and image_id is None:
            problems.append("“image” is not an image number, so it is ignored.")
        return cls(
            actor=query.get("actor", "").strip()[:150],
            action=query.get("action", "").strip()[:64],
            date_from=day("from"),
            date_to=day("to"),
            image_id=image_id,
            problems=tuple(problems),
        )

    @property
    def active(self) -> bool:
        return bool(
            self.actor or self.action or self.date_from or self.date_to or self.image_id is not None
        )

    def apply(self, entries: AuditEntryQuerySet) -> AuditEntryQuerySet:
        if self.actor:
            # By account, not by the label written at the time, so a renamed user's older
            # entries still match; "system" is every entry no person made.
            users = get_user_model().objects.filter(username=self.actor)
            if self.actor == AuditEntry.SYSTEM:
                entries = entries.filter(Q(actor__isnull=True) | Q(actor__in=users))
            else:
                entries = entries.filter(actor__in=users)
        if self.action:
            entries = entries.filter(action=self.action)
        if self.date_from and (start := _start_of(self.date_from)):
            entries = entries.filter(created_at__gte=start)
        # Inclusive: up to the start of the next day.
        if self.date_to and self.date_to < date.max and (end := _start_of(self.date_to, days=1)):
            entries = entries.filter(created_at__lt=end)
        if self.image_id is not None:
            entries = entries.filter(image_id=self.image_id)
        return entries

    def query(self, **extra: object) -> str:
        """The query string for these filters plus `extra` (a page cursor), for links."""
        values: dict[str, object] = {
            "actor": self.actor,
            "action": self.action,
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "image": self.image_id,
            **extra,
        }
        query = QueryDict(mutable=True)
        for key, value in values.items():
            if value not in ("", None):
                query[key] = str(value)
        return query.urlencode()


def _start_of(day: date, *, days: int = 0) -> datetime | None:
    """Midnight at the start of `day` (plus `days`) in the site's time zone, or None for a day so
    near year 1 or 9999 that the moment has no UTC datetime (a bound that leaves nothing out)."""
    moment = datetime.combine(
        day + timedelta(days=days), time.min, tzinfo=timezone.get_current_timezone()
    )
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


# -------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class DetailSummary:
    """A compact reading of an entry's `detail`: IMM's verdict first, then a few short facts."""

    suggestion: str
    categories: list[str]
    facts: list[tuple[str, str]]
    json: str
    more: bool

    # Facts worth a glance, in this order; anything else waits in the full JSON.
    KEYS = ("filename", "category", "code", "username", "role", "queued", "rule", "via")
    MAX_FACTS = 3
    MAX_CHARS = 48

    @classmethod
    def of(cls, detail: Any) -> DetailSummary:
        if not isinstance(detail, dict) or not detail:
            return cls("", [], [], "", more=False)
        suggestion = detail.get("suggestion") or detail.get("imm_suggestion") or ""
        categories = detail.get("categories") or detail.get("imm_categories") or []
        shown = {"suggestion", "imm_suggestion", "categories", "imm_categories"}
        facts: list[tuple[str, str]] = []

        def take(keys: Iterable[str], limit: int) -> None:
            for key in keys:
                value = detail.get(key)
                if len(facts) < limit and isinstance(value, str | int | float) and value != "":
                    text = str(value)
                    if len(text) > cls.MAX_CHARS:
                        text = text[: cls.MAX_CHARS - 1] + "…"
                    facts.append((key, text))
                    shown.add(key)

        take(cls.KEYS, cls.MAX_FACTS)
        if not (suggestion or categories or facts):
            take(detail, 2)  # a row with nothing well known to show takes what comes first
        return cls(
            suggestion=str(suggestion),
            categories=[str(c) for c in categories] if isinstance(categories, list) else [],
            facts=facts,
            json=json.dumps(detail, indent=2, sort_keys=True, ensure_ascii=False),
            more=any(key not in shown for key in detail),
        )


@dataclass(frozen=True)
class LogRow:
    entry: AuditEntry
    detail: DetailSummary
    before: str
    after: str


def _row(entry: AuditEntry) -> LogRow:
    return LogRow(
        entry=entry,
        detail=DetailSummary.of(entry.detail),
        before=STATUS_LABELS.get(entry.state_before, entry.state_before),
        after=STATUS_LABELS.get(entry.state_after, entry.state_after),
    )


@dataclass(frozen=True)
class LogPage:
    rows: list[LogRow]
    newer_query: str | None
    older_query: str | None
    newest_query: str | None


def log_page(filters: Filters, *, before: int | None, after: int | None) -> LogPage:
    """One page of PAGE_SIZE entries, newest first, keyed on `id` (the order they were written).

    `before` pages towards older entries, `after` towards newer ones. One query for the rows
    (PAGE_SIZE + 1, to know whether there is more) and, on a page other than the newest, one
    EXISTS for the other direction: the same queries on page 1 and page 10,000.
    """
    entries = filters.apply(AuditEntry.objects.all())
    if after is not None:
        fetched = list(entries.filter(id__gt=after).order_by("id")[: PAGE_SIZE + 1])
        has_newer = len(fetched) > PAGE_SIZE
        rows = fetched[:PAGE_SIZE][::-1]
        has_older = entries.filter(id__lte=after).exists()
    else:
        newest_first = entries.order_by("-id")
        if before is not None:
            newest_first = newest_first.filter(id__lt=before)
        fetched = list(newest_first[: PAGE_SIZE + 1])
        rows = fetched[:PAGE_SIZE]
        has_older = len(fetched) > PAGE_SIZE
        has_newer = before is not None and entries.filter(id__gte=before).exists()
    return LogPage(
        rows=[_row(entry) for entry in rows],
        newer_query=filters.query(after=rows[0].pk) if has_newer and rows else None,
        older_query=filters.query(before=rows[-1].pk) if has_older and rows else None,
        newest_query=filters.query() if has_newer or (not rows and (before or after)) else None,
    )


@dataclass(frozen=True)
class LogState:
    """What the page says about the log as a whole: its key, checkpoint and sequencer lag."""

    verifier_key: str | None  # None: no signing key is configured
    checkpoint_size: int | None
    checkpoint_at: datetime | None
    checkpoint_problem: str  # the latest checkpoint does not open with the configured key
    lag: sequencer.Lag
    lag_seconds: int
    behind: bool  # the oldest waiting entry is older than AUDIT_SEQUENCER_MAX_LAG_SECONDS

    @classmethod
    def now(cls) -> LogState:
        key = checkpoints.verifier()
        latest = checkpoints.latest()
        problem = ""
        if latest is not None and key is not None:
            try:
                checkpoints.open_latest(latest, key)
            except NoteError as error:
                problem = str(error)
        lag = sequencer.lag()
        seconds = lag.oldest_seconds()
        return cls(
            verifier_key=key.vkey if key else None,
            checkpoint_size=latest.tree_size if latest else None,
            checkpoint_at=latest.created_at if latest else None,
            checkpoint_problem=problem,
            lag=lag,
            lag_seconds=seconds,
            behind=seconds > settings.AUDIT_SEQUENCER_MAX_LAG_SECONDS,
        )


def _actor_choices() -> list[str]:
    """`system` and every user who appears in the log (an index probe per user, no scan)."""
    users = get_user_model().objects.filter(Exists(AuditEntry.objects.filter(actor=OuterRef("pk"))))
    return [AuditEntry.SYSTEM, *users.order_by("username").values_list("username", flat=True)]


def _action_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    groups: dict[str, list[tuple[str, str]]] = {}
    for code, label in AuditEntry.ACTION_LABELS.items():
        prefix = code.partition(".")[0]
        groups.setdefault(ACTION_GROUPS.get(prefix, prefix), []).append((code, label))
    return list(groups.items())


# ------------------------------------------------------------------------------------- views


# Never cached, by a shared cache or the browser: the page holds who did what from which address,
# for admins only, and must not outlive a sign-out in the back button or a proxy.
@never_cache
@permission_required(VIEW_AUDIT, raise_exception=True)
@require_safe
def audit_log(request: HtmxHttpRequest) -> HttpResponse:
    """The global log, newest first, with its last verification, key, checkpoint and lag on top."""
    filters = Filters.from_query(request.GET)
    cursors = {name: request.GET.get(name, "").strip() for name in ("before", "after")}
    before, after = (limits.whole_number(cursors[name]) for name in ("before", "after"))
    # A cursor that does not parse is named like a bad filter (a hand-edited or cut link), so the
    # newest page that comes back instead does not pass for the page that was asked for.
    unparsed = tuple(
        f"“{name}” is not an entry number, so it is ignored."
        for name, raw in cursors.items()
        if raw and limits.whole_number(raw) is None
    )
    if unparsed:
        filters = replace(filters, problems=filters.problems + unparsed)
    page = log_page(filters, before=before, after=after)
    context: dict[str, object] = {"filters": filters, "page": page}
    # A history restore (back button, page not in htmx's cache) needs the whole page.
    if request.htmx and not request.htmx.history_restore_request:
        template = "audit/log.html#rows"
    else:
        template = "audit/log.html"
        check = ChainCheck.objects.order_by("-checked_at", "-id").first()
        state = LogState.now()
        context |= {
            "nav": "audit",
            "check": check,
            "state": state,
            "pending": pending_verification(),
            "sequenced_since": (
                max(0, state.checkpoint_size - check.entries)
                if check and check.ok and state.checkpoint_size
                else 0
            ),
            "actors": _actor_choices(),
            "action_groups": _action_choices(),
            "unlisted_action": "" if filters.action in AuditEntry.ACTION_LABELS else filters.action,
        }
    response = TemplateResponse(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@permission_required(VIEW_AUDIT, raise_exception=True)
@require_POST
def verify_now(request: HtmxHttpRequest) -> HttpResponse:
    """Queue a verification of the whole log; the page shows the outcome once a worker ran it.

    One at a time: while a walk is queued or running, another click queues nothing more.
    """
    pending = request_verification()
    if pending is None:
        messages.success(
            request,
            "Verification queued: the status here updates once a worker has verified the log.",
        )
    else:
        messages.info(
            request,
            f"A verification is already {'running' if pending.running else 'queued'}; the "
            "status here updates once it has finished.",
        )
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("audit_log")
    if request.htmx:
        return HttpResponseClientRedirect(target)
    return redirect(target)


# ----------------------------------------------------------------------------------- exports

# Every column, and the entry's exact content: sha256(content) is its entry_hash, and
# sha256(0x00 || content) its leaf_hash in the log's Merkle tree, so a copy can be checked offline
# against a receipt. An entry waiting for the sequencer has no position or leaf hash yet.
EXPORT_COLUMNS = (
    "seq",
    "time",
    "actor",
    "actor_id",
    "action",
    "image_id",
    "state_before",
    "state_after",
    "reason",
    "detail",
    "ip_address",
    "user_agent",
    "prev_hash",
    "entry_hash",
    "leaf_hash",
    "content",
)
EXPORT_FIELDS = (
    "seq",
    "created_at",
    "actor_label",
    "actor_id",
    "action",
    "image_id",
    "state_before",
    "state_after",
    "reason",
    "detail",
    "ip_address",
    "user_agent",
    "prev_hash",
    "entry_hash",
    "leaf_hash",
    "content",
)
# A spreadsheet reads a cell that starts with one of these as a formula. Reasons, filenames and
# user agents are text that outsiders chose (an upload named "=HYPERLINK(...)"), and the people
# who open these exports in a spreadsheet are exactly the admins such a formula would target.
# A leading apostrophe makes the cell text (OWASP's advice for CSV injection); the value stays
# readable, and the JSON Lines export, which is for programs, keeps every value exact.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export_records(filters: Filters) -> Iterator[dict[str, Any]]:
    """The filtered log in position order (then the waiting entries), one dict per entry, from a
    cursor read in chunks."""
    rows = (
        filters.apply(AuditEntry.objects.all())
        .in_log_order()
        .values_list(*EXPORT_FIELDS)
        .iterator(chunk_size=EXPORT_CHUNK_SIZE)
    )
    for row in rows:
        record = dict(zip(EXPORT_COLUMNS, row, strict=True))
        record["time"] = record["time"].astimezone(UTC).isoformat(timespec="microseconds")
        record["leaf_hash"] = bytes(record["leaf_hash"]).hex() if record["leaf_hash"] else None
        record["content"] = bytes(record["content"]).decode()
        yield record


def _safe_cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _Echo:
    """A file for csv.writer that hands each written line back instead of keeping it."""

    def write(self, value: str) -> str:
        return value


# The CSV is for spreadsheets (see _FORMULA_START): it starts with a byte order mark, without which
# Excel reads UTF-8 as the Windows code page and garbles every accented name and reason.
_BOM = "\ufeff"


def _csv_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield _BOM + writer.writerow(EXPORT_COLUMNS)
    for record in records:
        record["detail"] = json.dumps(record["detail"], ensure_ascii=False, sort_keys=True)
        yield writer.writerow([_safe_cell(record[column]) for column in EXPORT_COLUMNS])


def _jsonl_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, ensure_ascii=False) + "\n"


def _pieces(lines: Iterable[str]) -> Iterator[bytes]:
    buffer: list[str] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= EXPORT_PIECE_CHARS:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()


def _download(lines: Iterator[str], *, extension: str, content_type: str) -> HttpResponseBase:
    stamp = timezone.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = StreamingHttpResponse(_pieces(lines), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="audit-log-{stamp}.{extension}"'
    return response


@never_cache
@permission_required(VIEW_AUDIT, raise_exception=True)
@require_safe
def export_csv(request: HttpRequest) -> HttpResponseBase:
    filters = Filters.from_query(request.GET)
    return _download(
        _csv_lines(export_records(filters)), extension="csv", content_type="text/csv; charset=utf-8"
    )


@never_cache
@permission_required(VIEW_AUDIT, raise_exception=True)
@require_safe
def export_jsonl(request: HttpRequest) -> HttpResponseBase:
    filters = Filters.from_query(request.GET)
    return _download(
        _jsonl_lines(export_records(filters)),
        extension="jsonl",
        content_type="application/jsonl; charset=utf-8",
    )


# ------------------------------------------------------------------------------------ proofs


def _not_found(reason: str) -> HttpResponse:
    # Plain text: these are read by tools (curl, scripts) as much as by people.
    return HttpResponseNotFound(reason + "\n", content_type="text/plain; charset=utf-8")


def _no_entry(position: int | None) -> str:
    if not position:
        return (
            "That is not a position in the log: a position is a whole number from 1 to "
            f"{limits.WHOLE_NUMBER_MAX}, in the digits 0 to 9."
        )
    return (
        f"No audit entry has position #{position}: there is none, or it is waiting for the "
        "sequencer."
    )


def _attachment(body: bytes | str, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@never_cache
@permission_required(VIEW_AUDIT, raise_exception=True)
@require_safe
def entry_content(request: HttpRequest, seq: str) -> HttpResponse:
    """The exact bytes hashed into the leaf of the entry at position `seq`."""
    position = limits.whole_number(seq)
    content = (
        AuditEntry.objects.filter(seq=position).values_list("content", flat=True).first()
        if position
        else None
    )
    if content is None:
        return _not_found(_no_entry(position))
    return _attachment(
        bytes(content),
        content_type="application/octet-stream",
        filename=f"audit-entry-{position}.json",
    )


@never_cache
@permission_required(VIEW_AUDIT, raise_exception=True)
@require_safe
def entry_proof(request: HttpRequest, seq: str) -> HttpResponse:
    """A receipt (C2SP tlog-proof@v1) that the entry at `seq` is in the latest checkpoint."""
    position = limits.whole_number(seq)
    if not position or not AuditEntry.objects.filter(seq=position).exists():
        return _not_found(_no_entry(position))
    try:
        receipt = checkpoints.entry_receipt(position)
    except checkpoints.NotProvable as reason:
        return _not_found(str(reason))
    except checkpoints.TreeDamaged as reason:
        logger.error("audit receipt refused: %s", reason)
        return HttpResponseServerError(str(reason) + "\n", content_type="text/plain; charset=utf-8")
    return _attachment(
        receipt,
        content_type="text/plain; charset=utf-8",
        filename=f"audit-entry-{position}.proof",
    )


@never_cache
@permission_required(VIEW_AUDIT, raise_exception=True)
@require_safe
def latest_checkpoint(request: HttpRequest) -> HttpResponse:
    """The latest signed checkpoint (C2SP tlog-checkpoint, as a signed note)."""
    checkpoint = checkpoints.latest()
    if checkpoint is None:
        return _not_found("The audit log has no checkpoint yet: is the sequencer running?")
    return HttpResponse(checkpoint.signed_note, content_type="text/plain; charset=utf-8")
