"""Two admins adding the same new daily limit or response-time target at once: both saves
succeed (the second changes the row the first made), never a 500."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from moderation.accounts import create_user
from moderation.audit import log as audit
from reviews.exposure import services as exposure
from reviews.exposure.models import ExposureCap
from reviews.sla import services as sla
from reviews.sla.models import SlaTarget

from .conftest import PASSWORD, postgres_only


def race(save: Callable[[str, Any], object], admins: list[Any], categories: list[str]) -> list[str]:
    errors: list[str] = []
    for category in categories:
        barrier = threading.Barrier(len(admins))

        def one(admin: Any, category: str = category, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait(timeout=10)
                save(category, admin)
            except Exception as exc:  # every failure is the finding
                errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                connection.close()

        threads = [threading.Thread(target=one, args=(admin,)) for admin in admins]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    return errors


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_admins_adding_the_same_new_cap_or_target_both_succeed():
    admins = [create_user(username=f"admin{n}", password=PASSWORD, role="admin") for n in range(3)]
    categories = [f"cat{n}" for n in range(12)]
    errors = race(
        lambda c, a: exposure.set_cap(
            category=c, images="50", actor=a, context=audit.SYSTEM_CONTEXT
        ),
        admins,
        categories,
    )
    errors += race(
        lambda c, a: sla.set_target(
            category=c, minutes="30", actor=a, context=audit.SYSTEM_CONTEXT
        ),
        admins,
        categories,
    )
    assert errors == []
    assert ExposureCap.objects.filter(category__in=categories).count() == len(categories)
    assert SlaTarget.objects.filter(category__in=categories).count() == len(categories)
