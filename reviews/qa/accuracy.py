"""Per-reviewer accuracy against gold items and against admins' rulings, and the QA counts.

Read from the QA tables only (small: a share of the work), never from the images table.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Count, Q

from .models import DoubleReview, GoldAnswer, GoldItem, ImmCheck


@dataclass
class Accuracy:
    reviewer: str
    gold_answered: int = 0
    gold_right: int = 0
    ruled: int = 0
    ruled_right: int = 0

    @property
    def gold_percent(self) -> float | None:
        return 100 * self.gold_right / self.gold_answered if self.gold_answered else None

    @property
    def ruled_percent(self) -> float | None:
        return 100 * self.ruled_right / self.ruled if self.ruled else None


def per_reviewer() -> list[Accuracy]:
    """Each reviewer's gold answers (right of answered) and decisions an admin ruled on (the
    first or the second word, right when the ruling matched it), by name."""
    figures: dict[int, Accuracy] = {}
    names = dict(get_user_model().objects.values_list("pk", "username"))

    def row(user_id: int) -> Accuracy:
        return figures.setdefault(user_id, Accuracy(reviewer=names.get(user_id, str(user_id))))

    gold = (
        GoldAnswer.objects.exclude(verdict="")
        .values("reviewer")
        .annotate(answered=Count("id"), right=Count("id", filter=Q(correct=True)))
    )
    for g in gold:
        item = row(g["reviewer"])
        item.gold_answered, item.gold_right = g["answered"], g["right"]
    ruled = DoubleReview.objects.filter(state=DoubleReview.State.RULED).values(
        "first_reviewer", "first_verdict", "second_reviewer", "second_verdict", "ruling"
    )
    for r in ruled:
        for who, verdict in (
            (r["first_reviewer"], r["first_verdict"]),
            (r["second_reviewer"], r["second_verdict"]),
        ):
            item = row(who)
            item.ruled += 1
            item.ruled_right += verdict == r["ruling"]
    return sorted(figures.values(), key=lambda a: a.reviewer)


@dataclass(frozen=True)
class Counts:
    imm_open: int
    double_waiting: int
    disputed: int
    gold_active: int


def counts() -> Counts:

    doubles = DoubleReview.objects.aggregate(
        waiting=Count("id", filter=Q(state=DoubleReview.State.WAITING)),
        disputed=Count("id", filter=Q(state=DoubleReview.State.DISPUTED)),
    )
    return Counts(
        imm_open=ImmCheck.objects.filter(state=ImmCheck.State.OPEN).count(),
        double_waiting=doubles["waiting"],
        disputed=doubles["disputed"],
        gold_active=GoldItem.objects.filter(active=True).count(),
    )
