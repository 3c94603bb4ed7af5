"""The break reminder: after REVIEW_BREAK_AFTER_MINUTES of continuous reviewing (decisions and
clear images shown, QA work included, with no pause of REVIEW_BREAK_GAP_MINUTES or more between
them), a calm notice suggests a break.

Dismissing it starts a new stretch from then (kept in the session), so it comes back after
another stretch; a real pause starts one too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from reviews.models import Decision, Reveal

SESSION_KEY = "exposure_break_dismissed_at"
# A stretch is read from at most this many moments (a reviewer decides and reveals a few times a
# minute).
MAX_MOMENTS = 2000


def stretch() -> timedelta:
    return timedelta(minutes=settings.REVIEW_BREAK_AFTER_MINUTES)


def gap() -> timedelta:
    return timedelta(minutes=settings.REVIEW_BREAK_GAP_MINUTES)


def reviewing_since(user_id: int, *, now: datetime) -> datetime | None:
    """When the user's current stretch of continuous reviewing began, or None if they are not
    reviewing now (nothing within the gap). Reads only the last stretch+gap of the user's
    decisions and reveals: a reveal is reviewing too (the QA panes, a look before deciding)."""
    since = now - stretch() - gap()
    decided = Decision.objects.filter(reviewer_id=user_id, created_at__gte=since)
    revealed = Reveal.objects.filter(reviewer_id=user_id, revealed_at__gte=since)
    times = list(
        decided.values_list("created_at", flat=True)
        .union(revealed.values_list("revealed_at", flat=True), all=True)
        .order_by("-created_at")[:MAX_MOMENTS]
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
