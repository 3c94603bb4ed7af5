"""Seconds per decision kept as counts in fixed buckets, so hours add up and a median over any
range comes from the hourly rows alone (exact to the bucket: one second under two minutes)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# (upper bound in seconds, bucket width): 1 s buckets to 2 min, 10 s to 10 min, 1 min to 1 h.
_BANDS = ((120, 1), (600, 10), (3600, 60))
LAST = 120 + (600 - 120) // 10 + (3600 - 600) // 60  # one bucket for an hour and more


def bucket(seconds: float) -> int:
    """The bucket a duration falls in (negative durations count as 0)."""
    seconds = max(seconds, 0.0)
    index, low = 0, 0
    for high, width in _BANDS:
        if seconds < high:
            return index + int((seconds - low) // width)
        index += (high - low) // width
        low = high
    return LAST


def lower_edge(index: int) -> int:
    """The shortest duration, in seconds, that falls in bucket `index`."""
    low = 0
    for high, width in _BANDS:
        count = (high - low) // width
        if index < count:
            return low + index * width
        index -= count
        low = high
    return low


def add(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for key, count in counts.items():
        into[key] = into.get(key, 0) + count


def count(durations: Iterable[float]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for seconds in durations:
        key = str(bucket(seconds))
        counts[key] = counts.get(key, 0) + 1
    return counts


def median(counts: Mapping[str, int]) -> int | None:
    """The lower edge of the bucket holding the lower median (statistics.median_low), or None."""
    total = sum(counts.values())
    if not total:
        return None
    wanted = (total + 1) // 2
    seen = 0
    for key in sorted(counts, key=int):
        seen += counts[key]
        if seen >= wanted:
            return lower_edge(int(key))
    return None  # not reached: the counts add up to total
