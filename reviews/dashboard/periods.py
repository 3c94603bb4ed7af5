"""The ranges the dashboard shows, and the hours and buckets they are made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.utils import timezone

HOUR = timedelta(hours=1)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Range:
    key: str
    label: str
    span: timedelta
    step: timedelta


RANGES = {
    r.key: r
    for r in (
        Range("24h", "Last 24 hours", timedelta(hours=24), HOUR),
        Range("7d", "Last 7 days", timedelta(days=7), timedelta(hours=6)),
        Range("30d", "Last 30 days", timedelta(days=30), timedelta(days=1)),
    )
}
DEFAULT_RANGE = "24h"


@dataclass
class Window:
    range: Range
    start: datetime
    end: datetime
    buckets: list[datetime] = field(default_factory=list)

    def index(self, hour: datetime) -> int:
        return int((hour - self.start) / self.range.step)

    def label(self, moment: datetime) -> str:
        local = timezone.localtime(moment)
        if self.range.step >= timedelta(days=1):
            return local.strftime("%d %b")
        return local.strftime("%d %b %H:%M")


def window(chosen: Range, *, now: datetime | None = None) -> Window:
    """The range's buckets, ending with the hour now in progress."""
    end = floor_hour(now or timezone.now()) + HOUR
    start = end - chosen.span
    count = int(chosen.span / chosen.step)
    return Window(chosen, start, end, [start + i * chosen.step for i in range(count)])


def midnight(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def next_midnight(moment: datetime) -> datetime:
    at = midnight(moment)
    return at if at == moment else at + timedelta(days=1)
