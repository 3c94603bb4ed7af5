from __future__ import annotations

import csv
from collections.abc import Iterator

from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_safe

from . import figures

ADMIN = "moderation.change_image"
# A spreadsheet reads a cell starting with one of these as a formula; reviewer names and
# categories are text, so such a cell is made text with a leading apostrophe (as the audit CSV).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _bad_range(request: HttpRequest, message: str) -> HttpResponse:
    return TemplateResponse(
        request,
        "dashboard/bad_range.html",
        {"message": message, "ranges": figures.RANGES.values(), "nav": "dashboard"},
        status=400,
    )


@permission_required(ADMIN, raise_exception=True)
@require_safe
def page(request: HttpRequest) -> HttpResponse:
    """The team dashboard: admins' home page, read from the rollup tables only."""
    try:
        chosen = figures.parse_range(request.GET.get("range"))
    except figures.BadRange as exc:
        return _bad_range(request, str(exc))
    context = figures.dashboard(chosen)
    context.update({"range": chosen, "ranges": figures.RANGES.values(), "nav": "dashboard"})
    return TemplateResponse(request, "dashboard/page.html", context)


class _Echo:
    """A file for csv.writer that hands each written line back instead of keeping it."""

    def write(self, value: str) -> str:
        return value


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def _lines(chart: figures.Chart) -> Iterator[str]:
    writer = csv.writer(_Echo())
    # A byte order mark, without which Excel reads UTF-8 as the Windows code page.
    yield "\ufeff" + writer.writerow(chart.columns)
    for row in chart.rows:
        yield writer.writerow([_cell(value) for value in row])


@permission_required(ADMIN, raise_exception=True)
@require_safe
def chart_csv(request: HttpRequest, name: str) -> HttpResponse | StreamingHttpResponse:
    """One chart's numbers as CSV (at most a range's buckets, or REVIEWERS_MAX reviewers)."""
    try:
        chosen = figures.parse_range(request.GET.get("range"))
    except figures.BadRange as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    chart = figures.chart(name, chosen)
    if chart is None:
        return HttpResponse(
            f"No chart named {name[:40]!r}: one of {', '.join(figures.CHART_NAMES)}.",
            status=404,
            content_type="text/plain; charset=utf-8",
        )
    response = StreamingHttpResponse(_lines(chart), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="dashboard-{name}-{chosen.key}.csv"'
    return response
