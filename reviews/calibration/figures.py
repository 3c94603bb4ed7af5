"""How often people agreed with IMM, per category and rate band: what a threshold is chosen from.

Read straight from the decisions of a bounded time range, counted by the database (one grouped
query; the page never walks the rows). A person's decision is a standing approve, reject or
admin override that ended approved or rejected; where people decided an image more than once
in the range, the latest decision counts. The category, its rate and the suggestion are those
of the IMM verdict that stands on the image (moderation.ImageCategory).

Agreement: IMM's `pass` agrees with a person's approval and `block` with a rejection. IMM's
`review` is no verdict to agree with (IMM asked a person), so those decisions are left out of
agreement and counted in the band's reject share only, which is what a threshold needs: of the
images at this rate, how many did people reject.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Case, Count, Exists, IntegerField, OuterRef, QuerySet, Value, When

from moderation.models import Image, ImageCategory
from reviews.models import Decision

BANDS = 10  # 0-10, 10-20, ... 90-100 of IMM's 0-100 rate
SETTLING = (Decision.Verdict.APPROVE, Decision.Verdict.REJECT, Decision.Verdict.OVERRIDE)
SETTLED = (Image.Status.APPROVED, Image.Status.REJECTED)


def rate_band(rate_field: str) -> Case:
    """The band a rate falls in, 0 (below 10) to 9 (90 and up), or NULL without a rate."""
    width = 100 // BANDS
    below = [
        When(**{f"{rate_field}__lt": (band + 1) * width}, then=Value(band))
        for band in range(BANDS - 1)
    ]
    return Case(
        *below,
        When(**{f"{rate_field}__isnull": False}, then=Value(BANDS - 1)),
        default=None,
        output_field=IntegerField(),
    )


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


def people_decisions(*, since: datetime) -> QuerySet[Decision]:
    """The decisions counted: standing, settling an image, each image's latest in the range."""
    # NOT EXISTS on the undo's unique index: undone_by__isnull would join every decision ever.
    undone = Decision.objects.filter(undoes=OuterRef("pk"))
    in_range = Decision.objects.filter(
        created_at__gte=since, verdict__in=SETTLING, status_after__in=SETTLED
    ).filter(~Exists(undone))
    later = in_range.filter(image=OuterRef("image"), id__gt=OuterRef("id"))
    return in_range.filter(~Exists(later))


def agreement(*, since: datetime) -> list[CategoryFigures]:
    """Per category (most decisions first) and rate band, people's decisions against IMM's.

    One grouped query per outcome (approved, rejected) over the category rows of the images
    decided so: each image has one counted decision, so `IN` counts it once, and the images
    table is never read (the category row keeps the verdict's suggestion and rate).
    """
    decided = people_decisions(since=since)
    rows: list[dict[str, Any]] = []
    for outcome in SETTLED:
        counted = (
            ImageCategory.objects.filter(
                image_id__in=decided.filter(status_after=outcome).values("image_id")
            )
            .values("category", "suggestion", band=rate_band("rate"))
            .annotate(n=Count("id"))
            .order_by()
        )
        rows.extend({**row, "outcome": outcome} for row in counted)
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
