from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince

from reviews.sla import due

if TYPE_CHECKING:
    from reviews.queue import Row

register = template.Library()


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    """mapping[key] in a template, or None."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


_AGE_UNITS = (
    (7 * 86400, "week", "weeks"),
    (86400, "day", "days"),
    (3600, "hour", "hours"),
    (60, "minute", "minutes"),
)


def age(then: datetime, now: datetime) -> str:
    """How long something has waited, as Django's timesince says it (two adjacent units).

    Written out because the queue prints one per row: Django's filter, with its translation
    lookups, costs about 24 µs a call on our 2-core machines, this about 1. From four weeks on,
    where timesince counts calendar months, it is timesince itself.
    """
    seconds = int((now - then).total_seconds())
    if seconds >= 28 * 86400:
        return timesince(then, now)
    seconds = max(0, seconds)
    for i, (size, one, many) in enumerate(_AGE_UNITS):
        count = seconds // size
        if count:
            text = f"{count}\N{NO-BREAK SPACE}{one if count == 1 else many}"
            if i + 1 < len(_AGE_UNITS):
                next_size, next_one, next_many = _AGE_UNITS[i + 1]
                rest = (seconds - count * size) // next_size
                if rest:
                    name = next_one if rest == 1 else next_many
                    text += f", {rest}\N{NO-BREAK SPACE}{name}"
            return text
    return "0\N{NO-BREAK SPACE}minutes"


def _one_decimal(value: float) -> str:
    """As floatformat:1 rounds (half up), without its localisation lookups."""
    return str(Decimal(repr(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


_MARK = 987654321


def _url_format(name: str, *args: object) -> str:
    """The URL of `name` for any image id, as a str.format pattern with one {} for the id.

    Resolving a URL costs about 15 µs here and the queue shows three per row: reversing once per
    page and filling in the id gives the same URL for a fraction of that.
    """
    url = reverse(name, args=[_MARK, *args]).replace("{", "{{").replace("}", "}}")
    if url.count(str(_MARK)) != 1:
        raise ValueError(f"cannot make a pattern of {name!r}: {url}")
    return url.replace(str(_MARK), "{}")


@register.simple_tag
def queue_rows(rows: Iterable[Row], *, now: datetime, greyscale: bool) -> SafeString:
    """The queue's table rows, built in Python.

    The rows are the queue page's hot spot: as template markup, 50 rows were about 600 template
    nodes and 150 URL lookups, over half of the page's 28 ms of CPU (bench/queue.py); built here
    they cost about 1 ms. Every value that comes from data goes through escape(); ids are ints.
    """
    item_url = escape(_url_format("review_item"))
    thumb_url = escape(_url_format("image_file", "thumbnail-blurred"))
    grey = "grey" if greyscale else ""
    html = []
    for row in rows:
        pk = int(row.pk)
        item = item_url.format(pk)
        suggestion = escape(row.suggestion)
        rate = f' <span class="muted">{_one_decimal(row.rate)}</span>' if row.rate else ""
        chips = (
            "".join(f'<span class="chip">{escape(c)}</span>' for c in row.categories)
            or '<span class="muted">none</span>'
        )
        holder = escape(row.holder) if row.holder else '<span class="muted">—</span>'
        picture = (
            f'<img src="{thumb_url.format(pk)}" alt="Image {pk} (blurred)" width="56" '
            'height="56" loading="lazy">'
            if row.has_thumbnail
            else '<span class="no-preview">No preview</span>'
        )
        html.append(
            "<tr>"
            f'<td><span class="image-cell"><a href="{item}" class="sensitive mini {grey}" '
            f'tabindex="-1" aria-hidden="true">{picture}</a> '
            f'<a href="{item}">Image {pk}</a></span></td>'
            f'<td><span class="suggestion-{suggestion}">{suggestion or "—"}</span>{rate}</td>'
            f'<td><span class="chips">{chips}</span></td>'
            f'<td><time datetime="{timezone.localtime(row.status_changed_at).isoformat()}">'
            f"{age(row.status_changed_at, now)}</time></td>"
            f"{_due_cell(row.due_at, now)}"
            f"<td>{escape(row.uploader or 'system')}</td>"
            f"<td>{holder}</td>"
            "</tr>"
        )
    return mark_safe("".join(html))  # noqa: S308 - data escaped above, the rest is ours


def _due_cell(due_at: datetime | None, now: datetime) -> str:
    """The row's response-time cell: "due in 25 min", or "overdue by 2 h" marked (calmly)."""
    text, overdue = due.describe(due_at, now)
    if not text:
        return '<td><span class="muted">no target</span></td>'
    mark = ' class="overdue"' if overdue else ""
    return f"<td><span{mark}>{escape(text)}</span></td>"
