"""The break reminder: after REVIEW_BREAK_AFTER_MINUTES of continuous reviewing (decisions with
no pause of REVIEW_BREAK_GAP_MINUTES or more between them), a calm notice suggests a break.

Dismissing it starts a new stretch from then (kept in the session), so it comes back after
another stretch; a real pause starts one too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from reviews.models import Decision

SESSION_KEY = "exposure_break_dismissed_at"
# A stretch is read from at most this many decisions (a reviewer makes a few a minute).
MAX_DECISIONS = 2000


def stretch() -> timedelta:
    return timedelta(minutes=settings.REVIEW_BREAK_AFTER_MINUTES)


def gap() -> timedelta:
    return timedelta(minutes=settings.REVIEW_BREAK_GAP_MINUTES)


def reviewing_since(user_id: int, *, now: datetime) -> datetime | None:
    """When the user's current stretch of continuous reviewing began, or None if they are not
    reviewing now (no decision within the gap). Reads only the last stretch+gap of decisions."""
    times = list(
        Decision.objects.filter(reviewer_id=user_id, created_at__gte=now - stretch() - gap())
        .order_by("-created_at")
        .values_list("created_at", flat=True)[:MAX_DECISIONS]
    )
    if not times or now - times[0] >= gap():
        return None
    start = times[0]
    for earlier in times[1:]:
        if start - earlier >= gap():
            break
        start = earlier
    return start


def due(user_id: int, *, now: datetime | None = None, dismissed_at: datetime | None = None) -> bool:
    """Has the user reviewed without a break for the whole stretch (since they last dismissed
    the reminder)?"""
    now = now or timezone.now()
    since = reviewing_since(user_id, now=now)
    if since is None:
        return False
    if dismissed_at is not None and dismissed_at > since:
        since = dismissed_at
    return now - since >= stretch()
