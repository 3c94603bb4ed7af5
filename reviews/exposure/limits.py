"""What Start reviewing may hand a reviewer: not categories they opted out of, nor those whose
daily cap they reached (reviews.exposure.models)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from moderation.models import Image, ImageCategory
from reviews import services

from . import counting
from .models import ExposureCap, ExposureCount, OptOut

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from reviews.models import Claim


@dataclass(frozen=True)
class Reached:
    category: str
    cap: int


def caps() -> dict[str, int]:
    """Every cap, category -> images a day ("" is the default). A few rows."""
    return dict(ExposureCap.objects.values_list("category", "images"))


def reached(
    user_id: int, *, now: datetime | None = None, table: dict[str, int] | None = None
) -> list[Reached]:
    """The categories whose cap the user has reached today, by name (`table`: the caps, if
    already read)."""
    table = caps() if table is None else table
    if not table:
        return []
    shown = counting.today(user_id, now=now)
    out = []
    for category, n in sorted(shown.items()):
        cap = table.get(category, table.get(""))
        # Images with no category ("") are not a category a cap can name.
        if category and cap is not None and n >= cap:
            out.append(Reached(category, cap))
    return out


def opted_out(user_id: int) -> list[str]:
    return list(
        OptOut.objects.filter(reviewer_id=user_id)
        .order_by("category")
        .values_list("category", flat=True)
    )


def allowed(
    user_id: int, images: QuerySet[Image], *, now: datetime | None = None
) -> QuerySet[Image]:
    """`images` without those of a category the user opted out of or reached today's cap for
    (as read now: one read; with nothing to leave out the queryset is unchanged)."""
    return _without(images, standing(user_id, now=now or timezone.now())[1])


class Stale(Exception):
    """A claim's own read of the limits found them changed since the ones it was made with: the
    claim is rolled back and tried again with `blocked`."""

    def __init__(self, blocked: frozenset[str]) -> None:
        super().__init__(sorted(blocked))
        self.blocked = blocked


def standing(user_id: int, *, now: datetime) -> tuple[dict[str, int], frozenset[str]]:
    """(the caps, the categories the user may not be handed now) in one plain read: the caps,
    the user's opt-outs and their counts for today (a UNION ALL of three small index reads,
    written out so a claim pays one round trip and no query building for it)."""
    day = connection.ops.adapt_datefield_value(counting.day_of(now))
    with connection.cursor() as cursor:
        cursor.execute(_STANDING, [user_id, user_id, day])
        rows = cursor.fetchall()
    table: dict[str, int] = {}
    shown: dict[str, int] = {}
    blocked: set[str] = set()
    for kind, name, n in rows:
        if kind == "cap":
            table[name] = n
        elif kind == "opt":
            blocked.add(name)
        else:
            shown[name] = n
    for category, n in shown.items():
        cap = table.get(category, table.get(""))
        if category and cap is not None and n >= cap:
            blocked.add(category)
    return table, frozenset(blocked)


_STANDING = f"""
    SELECT 'cap', category, images FROM {ExposureCap._meta.db_table}
    UNION ALL
    SELECT 'opt', category, 0 FROM {OptOut._meta.db_table} WHERE reviewer_id = %s
    UNION ALL
    SELECT 'shown', category, previews + thumbnails + originals
    FROM {ExposureCount._meta.db_table} WHERE reviewer_id = %s AND day = %s
"""  # noqa: S608 - table names from the models, values as parameters

# The categories each reviewer was last found blocked from, per day, in this process: where
# the next claim starts looking. Only a hint: every claim reads the limits again in its own
# transaction and is redone if they changed (Stale), so a stale or missing entry costs a retry
# or one read, never a wrong hand-out.
_last_blocked: dict[tuple[int, date], frozenset[str]] = {}
_LAST_BLOCKED_MAX = 10_000


def claim_next(
    *, reviewer: User, images: QuerySet[Image], now: datetime | None = None, **options: Any
) -> Claim | None:
    """services.claim_next within the reviewer's limits: never a category they opted out of
    or whose cap they reached today.

    The claim is narrowed by the limits last seen (a read first if none were), then, made,
    checked against the limits read again as the last step of its transaction; if they
    changed it is undone and tried again with the new ones. That read needs no lock: it comes
    after the claim's insert, which waits for the reviewer's other claim to be let go, so it
    sees every reveal that reviewer's other tabs finished before this claim could be made,
    and a reveal it misses counts as made after the claim. A reveal never waits for a claim.
    """
    now = now or timezone.now()
    key = (reviewer.pk, counting.day_of(now))
    blocked = _last_blocked.get(key)
    if blocked is None:
        blocked = standing(reviewer.pk, now=now)[1]
    for _ in range(5):  # the limits changing under each try in turn: an admin at work
        used = blocked

        def check(image: Image, used: frozenset[str] = used) -> None:
            fresh = standing(reviewer.pk, now=now)[1]
            # Also redone when a category was let go since (a cap raised, an opt-out
            # withdrawn): an older item of it may come first.
            if not used <= fresh or fresh & set(image.imm_categories or []):
                raise Stale(fresh)
            _remember(key, fresh)

        try:
            claim = services.claim_next(
                reviewer=reviewer, queryset=_without(images, used), check=check, now=now,
                **options,
            )  # fmt: skip
        except Stale as stale:
            blocked = stale.blocked
            _remember(key, blocked)
            continue
        if claim is None and used:
            # Nothing outside the limits last seen: they may have been let go since.
            blocked = standing(reviewer.pk, now=now)[1]
            _remember(key, blocked)
            if not used <= blocked:
                continue
        return claim
    return None


def _without(images: QuerySet[Image], blocked: frozenset[str]) -> QuerySet[Image]:
    if not blocked:
        return images
    return images.exclude(
        Exists(ImageCategory.objects.filter(image=OuterRef("pk"), category__in=blocked))
    )


def _remember(key: tuple[int, date], blocked: frozenset[str]) -> None:
    if len(_last_blocked) >= _LAST_BLOCKED_MAX:
        _last_blocked.clear()
    _last_blocked[key] = blocked
