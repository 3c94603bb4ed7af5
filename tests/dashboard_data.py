"""Raw rows for the dashboard tests, written at chosen times, and the direct counts the rollups
must agree with (computed here from the raw tables, on their own, without the rollup code)."""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import time_machine
from django.db import transaction

from moderation.accounts import create_user
from moderation.audit import log as audit
from moderation.models import AuditEntry, Image
from reviews.dashboard import histogram
from reviews.models import Decision
from reviews.sla.models import SlaTarget

CATEGORIES = ["porn", "violence", "ad", "politics"]
SUGGESTIONS = ["pass", "block", "review", ""]
VERDICTS = ["approve", "reject", "escalate", "undo", "reopen"]


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def cats_of(image_categories: list[str]) -> list[str]:
    return sorted(set(image_categories)) or ["(none)"]


class Seeder:
    """Writes images, queue moves (audit entries) and decisions at random times."""

    def __init__(self, rng: random.Random, *, now: datetime, reviewers: int = 3) -> None:
        self.rng = rng
        self.now = now
        self.reviewers = [
            create_user(username=f"reviewer{i}", role="reviewer", password="x" * 12, validate=False)
            for i in range(reviewers)
        ]
        self.images: list[Image] = []
        SlaTarget.objects.update_or_create(category="", defaults={"minutes": 30})
        SlaTarget.objects.update_or_create(category="porn", defaults={"minutes": 10})

    def moment(self, hours_back: float) -> datetime:
        return self.now - timedelta(seconds=self.rng.uniform(0, hours_back * 3600))

    def image(self, *, uploaded_at: datetime | None = None, status: str | None = None) -> Image:
        n = len(self.images) + 1 + self.rng.randrange(10**9) * 1000
        cats = self.rng.sample(CATEGORIES, self.rng.choice([0, 1, 1, 2]))
        image = Image.objects.create(
            file=f"images/x/{n}.png",
            sha256=f"{n:064d}",
            format="PNG",
            width=400,
            height=300,
            byte_size=1000,
            original_filename=f"{n}.png",
            status=status or self.rng.choice([Image.Status.APPROVED, Image.Status.AWAITING_REVIEW]),
            imm_suggestion=self.rng.choice(SUGGESTIONS),
            imm_categories=cats,
        )
        when = uploaded_at or self.moment(72)
        queued = when + timedelta(minutes=self.rng.uniform(0, 50))
        Image.objects.filter(pk=image.pk).update(
            uploaded_at=when, status_changed_at=min(queued, self.now)
        )
        image.refresh_from_db()
        self.images.append(image)
        return image

    def move(self, *, at: datetime, image: Image | None = None) -> AuditEntry:
        """An audit entry; most are moves into the review queue, some are not."""
        image = image or self.rng.choice(self.images)
        before, after = self.rng.choice(
            [
                ("submitted", "awaiting_review"),
                ("submitted", "awaiting_review"),
                ("approved", "awaiting_review"),
                ("awaiting_review", "awaiting_review"),
                ("submitted", "approved"),
            ]
        )
        with time_machine.travel(at, tick=False), transaction.atomic():
            return audit.record(
                action="imm.routed",
                actor=None,
                image=image,
                state_before=before,
                state_after=after,
            )

    def decision(
        self, *, at: datetime, image: Image | None = None, verdict: str | None = None
    ) -> Decision:
        image = image or self.rng.choice(self.images)
        before = self.rng.choice(["awaiting_review", "awaiting_review", "escalated"])
        return Decision.objects.create(
            image=image,
            reviewer=self.rng.choice(self.reviewers),
            verdict=verdict or self.rng.choice(VERDICTS),
            status_before=before,
            status_after="approved",
            status_changed_before=at - timedelta(minutes=self.rng.uniform(0, 45)),
            seconds=self.rng.choice([None, self.rng.uniform(0, 900), self.rng.uniform(0, 90)]),
            created_at=at,
        )

    def fill(self, *, images: int, moves: int, decisions: int, hours: float) -> None:
        for _ in range(images):
            self.image()
        for _ in range(moves):
            self.move(at=self.moment(hours))
        for _ in range(decisions):
            self.decision(at=self.moment(hours))


def direct_figures(start: datetime, end: datetime) -> dict[tuple[datetime, str], dict[str, int]]:
    """HourlyFigures as a direct count over the raw tables (non-zero counts only)."""
    targets = dict(SlaTarget.objects.values_list("category", "minutes"))
    out: dict[tuple[datetime, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for image in Image.objects.filter(uploaded_at__gte=start, uploaded_at__lt=end):
        out[(hour_of(image.uploaded_at), "")]["received"] += 1
    for entry in AuditEntry.objects.filter(created_at__gte=start, created_at__lt=end):
        if entry.state_after == "awaiting_review" and entry.state_before != "awaiting_review":
            assert entry.image is not None
            for key in ["", *cats_of(entry.image.imm_categories)]:
                out[(hour_of(entry.created_at), key)]["entered_queue"] += 1
    for d in Decision.objects.filter(created_at__gte=start, created_at__lt=end):
        if d.verdict not in ("approve", "reject", "escalate"):
            continue
        cats = cats_of(d.image.imm_categories)
        real = [c for c in cats if c in targets]
        minutes = min(targets[c] for c in real) if real else targets.get("")
        late = (
            d.status_before == "awaiting_review"
            and d.status_changed_before is not None
            and minutes is not None
            and d.created_at > d.status_changed_before + timedelta(minutes=minutes)
        )
        for key in ["", *cats]:
            counts = out[(hour_of(d.created_at), key)]
            counts["decided"] += 1
            if d.verdict == "escalate":
                counts["escalated"] += 1
            if late:
                counts["decided_late"] += 1
            suggestion = d.image.imm_suggestion
            if d.verdict in ("approve", "reject"):
                if suggestion == "review":
                    counts["imm_unsure"] += 1
                elif suggestion in ("pass", "block"):
                    matches = (d.verdict, suggestion) in (("approve", "pass"), ("reject", "block"))
                    counts["agreed" if matches else "disagreed"] += 1
    return {key: dict(counts) for key, counts in out.items()}


def direct_reviewers(start: datetime, end: datetime) -> dict[tuple[datetime, int], dict[str, Any]]:
    """Per hour and reviewer: decisions, escalations and the median seconds, to the bucket."""
    out: dict[tuple[datetime, int], dict[str, Any]] = {}
    seconds: dict[tuple[datetime, int], list[float]] = defaultdict(list)
    for d in Decision.objects.filter(
        created_at__gte=start, created_at__lt=end, verdict__in=["approve", "reject", "escalate"]
    ):
        key = (hour_of(d.created_at), d.reviewer_id)
        row = out.setdefault(key, {"decided": 0, "escalated": 0, "median": None})
        row["decided"] += 1
        row["escalated"] += d.verdict == "escalate"
        if d.seconds is not None:
            seconds[key].append(d.seconds)
    for key, values in seconds.items():
        out[key]["median"] = histogram.lower_edge(histogram.bucket(statistics.median_low(values)))
    return out


def direct_queue(now: datetime) -> dict[str, dict[str, Any]]:
    targets = dict(SlaTarget.objects.values_list("category", "minutes"))
    out: dict[str, dict[str, Any]] = {}
    for image in Image.objects.filter(status="awaiting_review"):
        cats = cats_of(image.imm_categories)
        real = [c for c in cats if c in targets]
        minutes = min(targets[c] for c in real) if real else targets.get("")
        overdue = minutes is not None and image.status_changed_at + timedelta(minutes=minutes) < now
        for key in ["", *cats]:
            row = out.setdefault(key, {"waiting": 0, "overdue": 0, "oldest_since": None})
            row["waiting"] += 1
            row["overdue"] += overdue
            if row["oldest_since"] is None or image.status_changed_at < row["oldest_since"]:
                row["oldest_since"] = image.status_changed_at
    return out
