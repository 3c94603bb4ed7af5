"""What the dashboard shows, read from the rollup tables (and two indexed single-row lookups).

Each chart is a `Chart`: its labels and series for Chart.js, and the same numbers as table rows
for the page's table and the CSV download.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Sum
from django.utils.html import format_html_join

from moderation.models import Image

from . import reviewers
from .models import ALL, HourlyFigures, QueueHour, RollupState
from .periods import DEFAULT_RANGE, HOUR, RANGES, Range, Window, window

# Lines on the queue chart: the categories with most items waiting (the table has them too).
QUEUE_CATEGORIES = 6
# Categories in the agreement chart.
AGREEMENT_MAX = 100


class BadRange(ValueError):
    pass


def parse_range(value: str | None) -> Range:
    if value is None or value == "":
        return RANGES[DEFAULT_RANGE]
    if value not in RANGES:
        raise BadRange(f"Unknown range {value[:20]!r}: choose one of {', '.join(RANGES)}.")
    return RANGES[value]


@dataclass
class Series:
    label: str
    values: list[float | None]


@dataclass
class Chart:
    name: str
    title: str
    kind: str  # "line" or "bar", as Chart.js names them
    labels: list[str]
    series: list[Series]
    # The table under the chart and the CSV: a header and rows of plain values.
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    unit: str = ""

    @property
    def table_body(self) -> str:
        """The rows as <tr>s: the first value heads its row, an empty value shows as a dash.
        Built here, not in the template: a month's tables are hundreds of cells."""
        return format_html_join(
            "",
            '<tr><th scope="row">{}</th>{}</tr>',
            (
                (
                    row[0],
                    format_html_join(
                        "", "<td>{}</td>", (("—" if value is None else value,) for value in row[1:])
                    ),
                )
                for row in self.rows
            ),
        )

    @property
    def json_id(self) -> str:
        return f"chart-data-{self.name}"

    def data(self) -> dict[str, Any]:
        """What static/js/dashboard.js draws (through json_script)."""
        return {
            "kind": self.kind,
            "labels": self.labels,
            "unit": self.unit,
            "series": [{"label": s.label, "values": s.values} for s in self.series],
        }


def _rate(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def flow_charts(win: Window, snapshots: Snapshots) -> dict[str, Chart]:
    """Arrivals against decisions, SLA breaches and the escalation rate, per bucket."""
    size = len(win.buckets)
    sums: dict[str, list[int]] = defaultdict(lambda: [0] * size)
    rows = HourlyFigures.objects.filter(
        category=ALL, hour__gte=win.start, hour__lt=win.end
    ).values_list("hour", "received", "entered_queue", "decided", "escalated", "decided_late")
    for hour, received, entered, decided, escalated, late in rows:
        i = win.index(hour)
        sums["received"][i] += received
        sums["entered"][i] += entered
        sums["decided"][i] += decided
        sums["escalated"][i] += escalated
        sums["late"][i] += late
    overdue = snapshots.overdue[ALL]
    labels = [win.label(b) for b in win.buckets]
    flow = Chart(
        name="flow",
        title="Arrivals and decisions",
        kind="line",
        labels=labels,
        series=[
            Series("Images received", list(sums["received"])),
            Series("Entered the review queue", list(sums["entered"])),
            Series("Decided by people", list(sums["decided"])),
        ],
        columns=["From", "Images received", "Entered the review queue", "Decided by people"],
        rows=[
            [labels[i], sums["received"][i], sums["entered"][i], sums["decided"][i]]
            for i in range(size)
        ],
        unit="items",
    )
    sla = Chart(
        name="sla",
        title="SLA breaches",
        kind="bar",
        labels=labels,
        series=[
            Series("Decided after their due time", list(sums["late"])),
            Series("Waiting past their due time (at the end)", list(overdue)),
        ],
        columns=["From", "Decided after their due time", "Waiting past their due time"],
        rows=[[labels[i], sums["late"][i], overdue[i]] for i in range(size)],
        note="An item is due its category's response-time target after it entered the queue "
        "(the tightest of its categories', else the default). Waiting counts are the queue as "
        "the last rollup pass in the period's last hour saw it; empty where none ran.",
        unit="items",
    )
    rates = [_rate(sums["escalated"][i], sums["decided"][i]) for i in range(size)]
    escalations = Chart(
        name="escalations",
        title="Escalation rate",
        kind="line",
        labels=labels,
        series=[Series("Escalated, % of people's decisions", list(rates))],
        columns=["From", "Decisions", "Escalated", "Escalated %"],
        rows=[[labels[i], sums["decided"][i], sums["escalated"][i], rates[i]] for i in range(size)],
        note="Empty where no one decided anything.",
        unit="%",
    )
    return {"flow": flow, "sla": sla, "escalations": escalations}


@dataclass
class Snapshots:
    """The queue as the pass in the last hour of each bucket saw it, per category (None: no
    pass then). Only those hours are read: a month is 30 rows per category, not 720."""

    categories: list[str]
    waiting: dict[str, list[int | None]]
    overdue: dict[str, list[int | None]]


def queue_snapshots(win: Window, now_rows: list[QueueHour]) -> Snapshots:
    """The whole queue and the QUEUE_CATEGORIES categories with most items waiting now."""
    biggest = [row.category for row in now_rows if row.category != ALL][:QUEUE_CATEGORIES]
    categories = [ALL, *biggest]
    size = len(win.buckets)
    waiting: dict[str, list[int | None]] = {c: [None] * size for c in categories}
    overdue: dict[str, list[int | None]] = {c: [None] * size for c in categories}
    last_hours = [bucket + win.range.step - HOUR for bucket in win.buckets]
    rows = QueueHour.objects.filter(category__in=categories, hour__in=last_hours).values_list(
        "hour", "category", "waiting", "overdue"
    )
    for hour, category, waiting_then, overdue_then in rows:
        waiting[category][win.index(hour)] = waiting_then
        overdue[category][win.index(hour)] = overdue_then
    return Snapshots(categories, waiting, overdue)


def queue_chart(win: Window, snapshots: Snapshots) -> Chart:
    """Queue depth over time: every item, and the categories with most items waiting now."""
    categories, series = snapshots.categories, snapshots.waiting
    labels = [win.label(b) for b in win.buckets]
    names = ["All items" if c == ALL else c for c in categories]
    return Chart(
        name="queue",
        title="Queue depth by category",
        kind="line",
        labels=labels,
        series=[Series(name, list(series[c])) for name, c in zip(names, categories, strict=True)],
        columns=["At the end of", *names],
        rows=[[labels[i], *(series[c][i] for c in categories)] for i in range(len(labels))],
        note="Items waiting for a reviewer at the last rollup pass in each period's last hour; "
        "empty where none ran. An item with several categories counts in each. The "
        f"{len(categories) - 1} categories with most items waiting now are shown.",
        unit="items",
    )


def reviewers_chart(win: Window, *, ranges_end: datetime | None = None) -> Chart:
    """Decisions per reviewer and their median seconds per item over the range."""
    totals = reviewers.for_window(win, ranges_end=ranges_end)
    names = dict(
        get_user_model()
        .objects.filter(pk__in=[total.reviewer_id for total in totals])
        .values_list("pk", "username")
    )
    rows = [
        [
            names.get(total.reviewer_id, f"#{total.reviewer_id}"),
            total.decided,
            total.escalated,
            total.median_seconds,
        ]
        for total in totals
    ]
    return Chart(
        name="reviewers",
        title="Decisions per reviewer",
        kind="bar",
        labels=[names.get(total.reviewer_id, f"#{total.reviewer_id}") for total in totals],
        series=[Series("Decisions", [total.decided for total in totals])],
        columns=["Reviewer", "Decisions", "Escalated", "Median seconds per item"],
        rows=rows,
        note="Approve, reject and escalate. Seconds run from claiming the item to deciding it, "
        "to the second under 2 minutes, to 10 s under 10 minutes, to the minute beyond.",
        unit="decisions",
    )


def agreement_chart(win: Window) -> Chart:
    """How often a person's approve or reject matched IMM's suggestion, per category."""
    sums = (
        HourlyFigures.objects.filter(hour__gte=win.start, hour__lt=win.end)
        .exclude(category=ALL)
        .values("category")
        .annotate(
            agreed_sum=Sum("agreed"), disagreed_sum=Sum("disagreed"), unsure_sum=Sum("imm_unsure")
        )
        .order_by("category")
    )
    rows = []
    for row in sums[:AGREEMENT_MAX]:
        agreed, disagreed = row["agreed_sum"] or 0, row["disagreed_sum"] or 0
        unsure = row["unsure_sum"] or 0
        if agreed or disagreed or unsure:
            rows.append(
                [row["category"], agreed, disagreed, _rate(agreed, agreed + disagreed), unsure]
            )
    return Chart(
        name="agreement",
        title="IMM and people agreeing, by category",
        kind="bar",
        labels=[row[0] for row in rows],
        series=[Series("Agreement %", [row[3] for row in rows])],
        columns=["Category", "Agreed", "Disagreed", "Agreement %", "IMM said review"],
        rows=rows,
        note="A person's approve agrees with IMM's pass and a reject with its block. Items IMM "
        "suggested review for gave no verdict to agree with: they are counted apart, not in the "
        "rate. Escalations are not counted.",
        unit="%",
    )


@dataclass
class Headline:
    waiting: int | None
    overdue: int | None
    escalated: int | None
    oldest_since: datetime | None
    snapshot_at: datetime | None
    last_pass_at: datetime | None
    decided: int
    escalation_rate: float | None
    late: int


def headline(
    now_rows: list[QueueHour], charts: dict[str, Chart], state: RollupState | None
) -> Headline:
    total = next((row for row in now_rows if row.category == ALL), None)
    # One indexed lookup (status, status_changed_at): the oldest item is live, not a pass old.
    oldest = (
        Image.objects.filter(status=Image.Status.AWAITING_REVIEW)
        .order_by("status_changed_at")
        .values_list("status_changed_at", flat=True)
        .first()
    )
    decided = sum(row[1] for row in charts["escalations"].rows)
    escalated = sum(row[2] for row in charts["escalations"].rows)
    late = sum(row[1] for row in charts["sla"].rows)
    return Headline(
        waiting=total.waiting if total else None,
        overdue=total.overdue if total else None,
        escalated=total.escalated if total else None,
        oldest_since=oldest,
        snapshot_at=total.taken_at if total else None,
        last_pass_at=state.last_pass_at if state else None,
        decided=decided,
        escalation_rate=_rate(escalated, decided),
        late=late,
    )


def latest_queue() -> list[QueueHour]:
    """The newest snapshot's rows, the whole queue first, then most items waiting first."""
    newest = QueueHour.objects.filter(category=ALL).order_by("-hour").first()
    if newest is None:
        return []
    rows = list(QueueHour.objects.filter(hour=newest.hour))
    return sorted(rows, key=lambda r: (r.category != ALL, -r.waiting, r.category))


def dashboard(chosen: Range, *, now: datetime | None = None) -> dict[str, Any]:
    win = window(chosen, now=now)
    state = RollupState.objects.filter(pk=1).first()
    now_rows = latest_queue()
    snapshots = queue_snapshots(win, now_rows)
    charts = flow_charts(win, snapshots)
    charts["queue"] = queue_chart(win, snapshots)
    charts["reviewers"] = reviewers_chart(win, ranges_end=state.ranges_end if state else None)
    charts["agreement"] = agreement_chart(win)
    return {
        "window": win,
        "charts": charts,
        "headline": headline(now_rows, charts, state),
        "queue_now": now_rows,
    }


def chart(name: str, chosen: Range) -> Chart | None:
    """One chart, for its CSV."""
    win = window(chosen)
    if name in ("flow", "sla", "escalations"):
        return flow_charts(win, queue_snapshots(win, []))[name]
    if name == "queue":
        return queue_chart(win, queue_snapshots(win, latest_queue()))
    if name == "reviewers":
        state = RollupState.objects.filter(pk=1).first()
        return reviewers_chart(win, ranges_end=state.ranges_end if state else None)
    if name == "agreement":
        return agreement_chart(win)
    return None


CHART_NAMES = ("queue", "flow", "sla", "escalations", "reviewers", "agreement")
