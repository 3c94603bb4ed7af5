from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError

from reviews.sla.models import SlaTarget
from reviews.sla.policy import due_at, minutes_for, targets

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_tightest_category_wins_over_the_default():
    table = {"": 240, "porn": 30, "bloody": 60}
    assert minutes_for(["bloody", "porn"], table) == 30
    assert minutes_for(["sexy"], table) == 240
    assert minutes_for([], table) == 240
    assert due_at(T0, ["bloody"], table) == T0 + timedelta(minutes=60)


def test_no_target_means_never_due():
    assert minutes_for(["porn"], {}) is None
    assert due_at(T0, ["porn"], {"bloody": 5}) is None


@pytest.mark.django_db
def test_targets_read_from_the_table_and_bounded():
    SlaTarget.objects.create(category="", minutes=120)
    SlaTarget.objects.create(category="porn", minutes=15)
    assert targets() == {"": 120, "porn": 15}
    with pytest.raises(IntegrityError):
        SlaTarget.objects.create(category="weapon", minutes=0)
