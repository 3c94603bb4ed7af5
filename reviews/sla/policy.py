"""Which target applies to an item, and when it is due."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from .models import SlaTarget


def targets() -> dict[str, int]:
    """Every target, category -> minutes ("" is the default). A few rows: read once per page."""
    return dict(SlaTarget.objects.values_list("category", "minutes"))


def minutes_for(categories: Iterable[str], targets: dict[str, int]) -> int | None:
    """The tightest target among the categories, else the default, else None (no target)."""
    own = [targets[c] for c in categories if c and c in targets]
    if own:
        return min(own)
    return targets.get("")


def due_at(
    queued_at: datetime, categories: Iterable[str], targets: dict[str, int]
) -> datetime | None:
    """When an item that entered the queue at `queued_at` is due, or None if no target applies."""
    minutes = minutes_for(categories, targets)
    return None if minutes is None else queued_at + timedelta(minutes=minutes)
