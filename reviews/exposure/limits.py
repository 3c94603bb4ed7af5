"""What Start reviewing may hand a reviewer: not categories they opted out of, nor those whose
daily cap they reached (reviews.exposure.models)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from moderation.models import Image, ImageCategory
from reviews import services
from reviews.models import Claim, Reveal

from . import counting
from .models import ExposureCap, ExposureCount, OptOut

if TYPE_CHECKING:
    from django.contrib.auth.models import User


@dataclass(frozen=True)
class Reached:
    category: str
    cap: int


@dataclass(frozen=True)
class Standing:
    """A reviewer's limits as read at one moment."""

    caps: dict[str, int]  # category -> images a day ("" is the default)
    shown: dict[str, int]  # category -> clear images shown today
    opted_out: frozenset[str]
    reached: tuple[Reached, ...]  # the categories at their cap today, by name

    @property
    def blocked(self) -> frozenset[str]:
        """What Start reviewing may not hand the reviewer now."""
        return self.opted_out | {r.category for r in self.reached}

    def cap(self, category: str) -> int | None:
        return _cap(self.caps, category)


def caps() -> dict[str, int]:
    """Every cap, category -> images a day ("" is the default). A few rows."""
    return dict(ExposureCap.objects.values_list("category", "images"))


def standing(user_id: int, *, now: datetime) -> Standing:
    """The user's limits now, in one plain read: the caps, their opt-outs and their counts for
    today (a UNION ALL of three small index reads, written out so a claim pays one round trip
    and no query building for it)."""
    day = connection.ops.adapt_datefield_value(counting.day_of(now))
    with connection.cursor() as cursor:
        cursor.execute(_STANDING, [user_id, user_id, day])
        rows = cursor.fetchall()
    table: dict[str, int] = {}
    shown: dict[str, int] = {}
    opted: set[str] = set()
    for kind, name, n in rows:
        if kind == "cap":
            table[name] = n
        elif kind == "opt":
            opted.add(name)
        else:
            shown[name] = n
    at_cap = tuple(
        Reached(category, cap)
        for category, n in sorted(shown.items())
        if (cap := _cap(table, category)) is not None and n >= cap
    )
    return Standing(caps=table, shown=shown, opted_out=frozenset(opted), reached=at_cap)


def _cap(table: dict[str, int], category: str) -> int | None:
    """The cap on `category`: its own, else the default; none for images without a category,
    which no cap can name."""
    return table.get(category, table.get("")) if category else None


_STANDING = f"""
    SELECT 'cap', category, images FROM {ExposureCap._meta.db_table}
    UNION ALL
    SELECT 'opt', category, 0 FROM {OptOut._meta.db_table} WHERE reviewer_id = %s
    UNION ALL
    SELECT 'shown', category, previews + thumbnails + originals
    FROM {ExposureCount._meta.db_table} WHERE reviewer_id = %s AND day = %s
"""  # noqa: S608 - table names from the models, values as parameters


# The categories each reviewer was last found blocked from, per day, in this process, and when:
# where the next claim starts looking, so that a claim pays no read for the limits. Only a
# hint: the database refuses a claim over the limits (Claim.limits_day), and the refusal reads
# them again; a limit let go elsewhere (a cap raised, an opt-out withdrawn) is seen within
# HINT_SECONDS.
_last_blocked: dict[tuple[int, date], tuple[float, frozenset[str]]] = {}
# gthread workers share the dict: a thread forgetting (iterating) while another remembers
# (inserting) would fail with "dictionary changed size during iteration".
_last_blocked_lock = threading.Lock()
_LAST_BLOCKED_MAX = 10_000
HINT_SECONDS = 30.0


def claim_next(
    *, reviewer: User, images: QuerySet[Image], now: datetime | None = None, **options: Any
) -> Claim | None:
    """services.claim_next within the reviewer's limits: never a category they opted out of
    or whose cap they reached today.

    The claim leaves out the categories last seen blocked (read first if not seen in the last
    HINT_SECONDS) and is made with `limits_day`, so the database refuses it if a category of the
    image is blocked after all (another tab's reveal reached a cap meanwhile): the limits are
    then read again and the claim tried once more without that category.
    """
    now = now or timezone.now()
    day = counting.day_of(now)
    key = (reviewer.pk, day)
    seen = _last_blocked.get(key)
    if seen is None or time.monotonic() - seen[0] > HINT_SECONDS:
        blocked = _remember(key, standing(reviewer.pk, now=now).blocked)
    else:
        blocked = seen[1]
    for _ in range(5):  # the limits changing under each try in turn: a reviewer at work elsewhere
        try:
            claim = services.claim_next(
                reviewer=reviewer,
                queryset=without(images, blocked),
                limits_day=day,
                now=now,
                **options,
            )
        except services.OverLimit:
            blocked = _remember(key, standing(reviewer.pk, now=now).blocked)
            continue
        if claim is None and seen is not None and blocked:
            # Nothing outside the limits last seen: look again with the limits as they are now.
            fresh = _remember(key, standing(reviewer.pk, now=now).blocked)
            if fresh != blocked:
                seen, blocked = None, fresh
                continue
        return claim
    return None


def on_routed(sender: object, *, image: Image, **kwargs: object) -> None:
    """Receiver of moderation.signals.review_routed (connected in ExposureConfig.ready), in the
    transaction that routed the image. The trigger holds a claim to the limits when it is made;
    IMM's later word may give an item someone holds a category they opted out of, or one whose
    cap they reached and they have not seen it clear yet (a reveal counted it under the
    categories it had then): that claim is let go, as Start reviewing would hand it back first.
    """
    now = timezone.now()
    claim = Claim.objects.filter(pk=image.pk, limits_day__isnull=False, expires_at__gt=now).first()
    if claim is None:
        return
    categories = set(image.imm_categories or [])
    mine = standing(claim.reviewer_id, now=now)
    capped = categories & {r.category for r in mine.reached}
    if categories & mine.opted_out or (
        capped and not Reveal.objects.filter(image=image, reviewer_id=claim.reviewer_id).exists()
    ):
        Claim.objects.filter(pk=image.pk, reviewer_id=claim.reviewer_id).delete()


def without(items: QuerySet[Any], blocked: frozenset[str], *, image: str = "pk") -> QuerySet[Any]:
    """`items` without those whose image (`image`: the field naming it; images themselves by
    default) has a category in `blocked`; unchanged when nothing is blocked."""
    if not blocked:
        return items
    return items.exclude(
        Exists(ImageCategory.objects.filter(image=OuterRef(image), category__in=blocked))
    )


def _remember(key: tuple[int, date], blocked: frozenset[str]) -> frozenset[str]:
    with _last_blocked_lock:
        if len(_last_blocked) >= _LAST_BLOCKED_MAX:
            _last_blocked.clear()
        _last_blocked[key] = (time.monotonic(), blocked)
    return blocked


def forget(user_id: int | None = None) -> None:
    """Drop what this process last saw of the user's limits, or of everyone's (they changed
    here; other processes see it within HINT_SECONDS)."""
    with _last_blocked_lock:
        if user_id is None:
            _last_blocked.clear()
            return
        for key in [key for key in _last_blocked if key[0] == user_id]:
            del _last_blocked[key]
