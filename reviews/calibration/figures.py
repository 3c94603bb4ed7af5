"""How often people agreed with IMM, per category and rate band: what a threshold is chosen from.

Read from the daily rollups (models.DecidedDay, kept by the oversight_rollups pass: see
rollups.py), one grouped query over the range's days. What is counted: a person's decision is a
standing approve, reject or admin override that ended approved or rejected; where people decided
an image more than once in the range, the latest decision counts. The category, its rate and the
suggestion are those of the IMM verdict that stands on the image (moderation.ImageCategory).

Agreement: IMM's `pass` agrees with a person's approval and `block` with a rejection. IMM's
`review` is no verdict to agree with (IMM asked a person), so those decisions are left out of
agreement and counted in the band's reject share only, which is what a threshold needs: of the
images at this rate, how many did people reject.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db.models import Sum

from moderation.models import Image

from .models import DecidedDay
from .rollups import BANDS


def band_label(band: int | None) -> str:
    if band is None:
        return "no rate"
    width = 100 // BANDS
    return f"{band * width}-{(band + 1) * width}"


@dataclass
class Band:
    band: int | None
    decisions: int = 0
    rejected: int = 0
    imm_pass: int = 0
    pass_approved: int = 0
    imm_block: int = 0
    block_rejected: int = 0
    imm_review: int = 0

    @property
    def label(self) -> str:
        return band_label(self.band)

    @property
    def agreed(self) -> int:
        return self.pass_approved + self.block_rejected

    @property
    def judged(self) -> int:
        """Decisions on a pass or block: the ones agreement is counted over."""
        return self.imm_pass + self.imm_block

    @staticmethod
    def share(part: int, whole: int) -> float | None:
        return 100 * part / whole if whole else None

    @property
    def reject_share(self) -> float | None:
        return self.share(self.rejected, self.decisions)

    @property
    def agreement(self) -> float | None:
        return self.share(self.agreed, self.judged)


@dataclass
class CategoryFigures:
    category: str
    bands: list[Band] = field(default_factory=list)

    @property
    def decisions(self) -> int:
        return sum(band.decisions for band in self.bands)

    @property
    def agreement(self) -> float | None:
        judged = sum(band.judged for band in self.bands)
        return Band.share(sum(band.agreed for band in self.bands), judged)


def agreement(*, since: datetime) -> list[CategoryFigures]:
    """Per category (most decisions first) and rate band, people's decisions against IMM's, over
    the days from `since`'s UTC day on (the rollups count whole days: rollups.range_start)."""
    rows = (
        DecidedDay.objects.filter(day__gte=since.astimezone(UTC).date())
        .values("category", "band", "suggestion", "outcome")
        .annotate(n=Sum("n"))
        .exclude(n=0)
        .order_by()
    )
    return _tables(rows)


def _tables(rows: Iterable[dict[str, Any]]) -> list[CategoryFigures]:
    tables: dict[str, dict[int | None, Band]] = {}
    for row in rows:
        band = tables.setdefault(row["category"], {}).setdefault(row["band"], Band(row["band"]))
        n, rejected = row["n"], row["outcome"] == Image.Status.REJECTED
        band.decisions += n
        band.rejected += n if rejected else 0
        if row["suggestion"] == "pass":
            band.imm_pass += n
            band.pass_approved += 0 if rejected else n
        elif row["suggestion"] == "block":
            band.imm_block += n
            band.block_rejected += n if rejected else 0
        else:
            band.imm_review += n
    figures = [
        CategoryFigures(
            category,
            sorted(bands.values(), key=lambda b: BANDS if b.band is None else b.band),
        )
        for category, bands in tables.items()
    ]
    return sorted(figures, key=lambda f: (-f.decisions, f.category))
