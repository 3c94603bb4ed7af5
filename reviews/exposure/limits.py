"""What Start reviewing may hand a reviewer: not categories they opted out of, nor those whose
daily cap they reached (reviews.exposure.models)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db.models import Exists, F, OuterRef, QuerySet, Value
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
    user_id: int,
    images: QuerySet[Image],
    *,
    now: datetime | None = None,
    table: dict[str, int] | None = None,
) -> QuerySet[Image]:
    """`images` without those of a category the user opted out of or reached today's cap for.

    Two small reads (the user's counts for today with the caps, and their opt-outs); with
    nothing to leave out the queryset is unchanged, so the claim query stays as it was.
    """
    blocked = {r.category for r in reached(user_id, now=now or timezone.now(), table=table)}
    blocked.update(opted_out(user_id))
    if not blocked:
        return images
    return images.exclude(
        Exists(ImageCategory.objects.filter(image=OuterRef("pk"), category__in=blocked))
    )


def acceptor(
    user_id: int, *, now: datetime | None = None, table: dict[str, int] | None = None
) -> Callable[[Image], bool]:
    """A check for services.claim_next, run in its transaction on the image it is about to hand
    out: False if a category of the image is at its cap for this reviewer today.

    It settles the race `allowed` alone leaves open (two tabs of one reviewer: one reads the
    counts, the other reveals and decides, then the first claims): the reviewer's count rows for
    the image's capped categories are made if missing and locked (SELECT ... FOR UPDATE) before
    they are read, so a reveal being counted in another tab waits for this claim, or was
    counted before it. Only the reviewer's own rows, and only for capped categories.
    """
    table = caps() if table is None else table
    day = counting.day_of(now or timezone.now())

    def accept(image: Image) -> bool:
        capped = {
            c: table.get(c, table.get(""))
            for c in set(image.imm_categories or [])
            if c and table.get(c, table.get("")) is not None
        }
        if not capped:
            return True
        key = {"reviewer_id": user_id, "day": day}
        locked = (
            ExposureCount.objects.select_for_update()
            .filter(**key, category__in=capped)
            .order_by("category")
            .annotate(n=counting.TOTAL)
            .values_list("category", "n")
        )
        rows = list(locked)
        if len(rows) < len(capped):
            # A category not shown yet today has no row to lock: make it (a count of 0), so a
            # reveal counted in another tab meanwhile waits for this claim all the same.
            ExposureCount.objects.bulk_create(
                [ExposureCount(**key, category=c) for c in capped], ignore_conflicts=True
            )
            rows = list(locked)
        return all(n < capped[c] for c, n in rows)

    return accept


def standing(user_id: int, *, now: datetime) -> tuple[dict[str, int], set[str]]:
    """(the caps, the categories the user may not be handed now) in one query: the caps, the
    user's opt-outs and their counts for today, read together (a UNION ALL of three small
    reads), so a claim pays one round trip for its limits, not three."""
    day = counting.day_of(now)
    caps_rows = (
        ExposureCap.objects.order_by()
        .annotate(kind=Value("cap"), name=F("category"), n=F("images"))
        .values_list("kind", "name", "n")
    )
    opt_rows = (
        OptOut.objects.filter(reviewer_id=user_id)
        .annotate(kind=Value("opt"), name=F("category"), n=Value(0))
        .values_list("kind", "name", "n")
    )
    shown_rows = (
        ExposureCount.objects.filter(reviewer_id=user_id, day=day)
        .annotate(kind=Value("shown"), name=F("category"), n=counting.TOTAL)
        .values_list("kind", "name", "n")
    )
    table: dict[str, int] = {}
    shown: dict[str, int] = {}
    blocked: set[str] = set()
    for kind, name, n in caps_rows.union(opt_rows, shown_rows, all=True):
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
    return table, blocked


def claim_next(
    *, reviewer: User, images: QuerySet[Image], now: datetime | None = None, **options: Any
) -> Claim | None:
    """services.claim_next within the reviewer's limits: never a category they opted out of
    or whose cap they reached today (checked again, locked, in the claim's transaction)."""
    now = now or timezone.now()
    table, blocked = standing(reviewer.pk, now=now)
    if blocked:
        images = images.exclude(
            Exists(ImageCategory.objects.filter(image=OuterRef("pk"), category__in=blocked))
        )
    return services.claim_next(
        reviewer=reviewer,
        queryset=images,
        accept=acceptor(reviewer.pk, now=now, table=table),
        now=now,
        **options,
    )
