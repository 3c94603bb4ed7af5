from __future__ import annotations

import pytest
from django.db import connection, transaction

from moderation.events.models import Event
from moderation.events.outbox import emit

pytestmark = pytest.mark.django_db


def test_emit_numbers_each_images_events_from_one(make_image):
    first, second = make_image(), make_image()
    with transaction.atomic():
        a = emit(image=first, type=Event.Type.APPROVED, data={"n": 1})
        b = emit(image=second, type=Event.Type.REJECTED, data={"n": 2})
        c = emit(image=first, type=Event.Type.UNDONE, data={"n": 3})
    assert [a.sequence, b.sequence, c.sequence] == [1, 1, 2]
    assert Event.objects.get(pk=c.pk).data == {"n": 3}
    assert a.public_id.startswith("evt_")
    assert len({a.public_id, b.public_id, c.public_id}) == 3


def test_emit_records_the_writing_transaction_on_postgresql(make_image):
    image = make_image()
    with transaction.atomic():
        event = emit(image=image, type=Event.Type.APPROVED, data={})
    txid = Event.objects.get(pk=event.pk).txid
    if connection.vendor == "postgresql":
        assert txid is not None
        assert txid > 0
    else:
        assert txid is None


@pytest.mark.django_db(transaction=True)
def test_emit_refuses_to_run_outside_a_transaction(make_image):
    with pytest.raises(RuntimeError, match="inside the transaction"):
        emit(image=make_image(), type=Event.Type.APPROVED, data={})


def test_emit_refuses_an_unknown_type(make_image):
    with transaction.atomic(), pytest.raises(ValueError, match="unknown event type"):
        emit(image=make_image(), type="image.deleted", data={})
