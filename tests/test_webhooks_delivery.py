"""Webhook delivery end to end: the outbox, signatures, the worker's lease, retries, failure,
resend, auto-disable, and two workers on PostgreSQL, against a real local receiver."""

from __future__ import annotations

import json
import random
import threading
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from moderation.events.models import Event
from moderation.events.outbox import emit
from moderation.models import AuditEntry
from moderation.webhooks import schedule, services, signing
from moderation.webhooks.models import Attempt, Delivery, Endpoint
from moderation.webhooks.transport import Sender
from moderation.webhooks.worker import LEASE, Deliverer

from .conftest import postgres_only

pytestmark = pytest.mark.django_db


class Clock:
    """A clock the test moves: the worker's idea of now."""

    def __init__(self) -> None:
        self.at = timezone.now()

    def __call__(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta

    def to(self, moment: datetime) -> None:
        self.at = max(self.at, moment)


def add(url: str, **kwargs) -> services.NewEndpoint:
    return services.add_endpoint(url=url, actor=None, **kwargs)


def event(image, type: str = Event.Type.APPROVED, **data) -> Event:
    with transaction.atomic():
        return emit(image=image, type=type, data={"image": image.pk, "type": type, **data})


def deliver(clock: Clock | None = None, **kwargs) -> Deliverer:
    worker = Deliverer(
        concurrency=kwargs.pop("concurrency", 4),
        worker_id=kwargs.pop("worker_id", "test-worker"),
        clock=clock or timezone.now,
        rng=random.Random(11),
        **kwargs,
    )
    worker.run(batch=True)
    return worker


def test_it_delivers_a_committed_event_signed_so_standardwebhooks_verifies_it(make_image, receiver):
    created = add(receiver.url())
    image = make_image()
    sent = event(image, decided_by="imm")

    report = deliver().report

    assert report.outcomes["delivered"] == 1
    [request] = receiver.received
    assert request.headers["webhook-id"] == sent.public_id
    payload = Webhook(created.secret).verify(request.body, request.headers)
    assert payload == sent.data
    assert request.headers["content-type"] == "application/json"
    delivery = Delivery.objects.get()
    assert delivery.state == Delivery.State.DELIVERED
    assert delivery.attempts == 1
    attempt = Attempt.objects.get()
    assert (attempt.status_code, attempt.number, attempt.response_head) == (200, 1, "ok")


def test_a_signature_made_with_another_endpoints_secret_does_not_verify(make_image, receiver):
    add(receiver.url("/a"))
    other = add(receiver.url("/b"))
    event(make_image())
    deliver()
    to_a = next(r for r in receiver.received if r.path == "/a")
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(other.secret).verify(to_a.body, to_a.headers)


def test_a_rotated_secret_signs_from_then_on_and_the_old_one_stops_verifying(make_image, receiver):
    old = add(receiver.url())
    new = services.rotate_secret(endpoint_id=old.endpoint.pk, actor=None)
    assert new.secret != old.secret
    event(make_image())
    deliver()
    [request] = receiver.received
    Webhook(new.secret).verify(request.body, request.headers)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(old.secret).verify(request.body, request.headers)


def test_the_secret_is_derived_from_the_key_and_never_stored(make_image, settings):
    created = add("https://127.0.0.1/hook")
    endpoint = Endpoint.objects.get()
    row = json.dumps(list(Endpoint.objects.values().get().values()), default=str)
    assert created.secret.removeprefix("whsec_") not in row
    assert signing.secret(endpoint) == created.secret
    settings.WEBHOOK_SECRET_KEY = "another-key-that-is-long-enough-to-be-accepted-here"
    assert signing.secret(endpoint) != created.secret


def test_an_event_rolled_back_with_its_change_leaves_no_delivery(make_image):
    add("https://127.0.0.1/hook")
    image = make_image()

    def change_that_fails() -> None:
        with transaction.atomic():
            emit(image=image, type=Event.Type.APPROVED, data={})
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        change_that_fails()
    assert not Event.objects.exists()
    assert not Delivery.objects.exists()


def test_a_committed_event_has_one_delivery_per_enabled_subscribed_endpoint(make_image):
    everything = add("https://127.0.0.1/all").endpoint
    rejections = add("https://127.0.0.1/rejected", event_types=["image.rejected"]).endpoint
    off = add("https://127.0.0.1/off").endpoint
    services.set_enabled(endpoint_id=off.pk, enabled=False, actor=None)
    image = make_image()
    approved = event(image, Event.Type.APPROVED)
    rejected = event(image, Event.Type.REJECTED)
    pairs = set(Delivery.objects.values_list("event_id", "endpoint_id"))
    assert pairs == {
        (approved.pk, everything.pk),
        (rejected.pk, everything.pk),
        (rejected.pk, rejections.pk),
    }


def test_a_worker_killed_mid_send_loses_nothing_the_lease_lapses_and_another_sends_it(
    make_image, receiver
):
    add(receiver.url())
    sent = event(make_image())
    clock = Clock()
    crashed = Deliverer(concurrency=1, worker_id="crashed", clock=clock)
    [claimed] = crashed.claim(10)
    with Sender() as sender:
        late = crashed.send(claimed, sender)  # sent, then the process dies before recording
    assert receiver.ids() == {sent.public_id: 1}

    # While the lease holds, nobody takes it.
    assert deliver(clock, worker_id="other").report.claimed == 0
    clock.advance(LEASE + timedelta(seconds=1))
    deliver(clock, worker_id="other")

    assert receiver.ids() == {sent.public_id: 2}  # at least once: the receiver deduplicates
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts) == (Delivery.State.DELIVERED, 2)
    # The first worker, back from the dead, changes nothing another worker has settled.
    crashed.record([late])
    delivery.refresh_from_db()
    assert (delivery.state, delivery.leased_by) == (Delivery.State.DELIVERED, "")
    assert Attempt.objects.count() == 2


def test_failures_are_retried_on_the_schedule_then_the_delivery_fails_and_can_be_resent(
    make_image, receiver, admin_client
):
    receiver.status, receiver.reply = 500, b"receiver broke"
    add(receiver.url())
    event(make_image())
    clock = Clock()
    start = clock()
    waits = []
    for n in range(1, schedule.MAX_ATTEMPTS + 1):
        deliver(clock)
        delivery = Delivery.objects.get()
        assert delivery.attempts == n
        if n < schedule.MAX_ATTEMPTS:
            assert delivery.state == Delivery.State.PENDING
            wait = delivery.next_attempt_at - clock()
            base = schedule.RETRY_DELAYS[n - 1]
            assert base * 0.8 <= wait <= base * 1.2
            waits.append(wait)
            # Not before its time.
            clock.advance(wait - timedelta(seconds=1))
            assert deliver(clock).report.claimed == 0
            clock.to(delivery.next_attempt_at)
    assert len(receiver.received) == schedule.MAX_ATTEMPTS
    assert clock() - start >= timedelta(hours=24)
    delivery.refresh_from_db()
    assert (delivery.state, delivery.last_status) == (Delivery.State.FAILED, "500")
    heads = set(Attempt.objects.values_list("response_head", flat=True))
    assert heads == {"receiver broke"}

    # Resent from the page: a new series, delivered now that the receiver works.
    receiver.status = 200
    response = admin_client.post(f"/webhooks/deliveries/{delivery.pk}/resend")
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == (Delivery.State.PENDING, 0)
    assert AuditEntry.objects.filter(action="webhook.delivery_resent").count() == 1
    Endpoint.objects.update(paused_until=None)
    deliver()
    delivery.refresh_from_db()
    assert delivery.state == Delivery.State.DELIVERED


def test_the_retry_schedule_lasts_more_than_a_day_with_jitter_both_ways():
    rng = random.Random(3)
    total = sum(
        (schedule.retry_delay(n, rng) for n in range(1, schedule.MAX_ATTEMPTS)), timedelta()
    )
    assert total >= timedelta(hours=24)
    assert schedule.retry_delay(schedule.MAX_ATTEMPTS) is None
    samples = [schedule.retry_delay(1, random.Random(seed)) for seed in range(50)]
    assert min(samples) < timedelta(seconds=5) < max(samples)
    assert schedule.describe() == "5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h"


class Extreme(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("dice", [0.0, 0.5, 0.999999])
def test_a_delivery_is_tried_for_at_least_a_day_however_the_jitter_falls(dice):
    waits = [schedule.retry_delay(n, Extreme(dice)) for n in range(1, schedule.MAX_ATTEMPTS)]
    assert sum(waits, timedelta()) >= timedelta(hours=24)
    for n, wait in enumerate(waits):
        base = schedule.RETRY_DELAYS[n]
        assert base * 0.8 <= wait <= base * 1.2
    # The last two waits are never shrunk; the earlier ones are, at the low end.
    assert waits[-1] >= schedule.RETRY_DELAYS[-1]
    assert waits[-2] >= schedule.RETRY_DELAYS[-2]
    if dice == 0.0:
        assert waits[0] < schedule.RETRY_DELAYS[0]


def test_a_failing_endpoint_rests_instead_of_getting_its_whole_backlog(make_image, receiver):
    receiver.status = 503
    add(receiver.url())
    image = make_image()
    for _ in range(3):
        event(image)
    clock = Clock()
    deliver(clock)
    assert len(receiver.received) == 3  # one batch went out together
    clock.advance(timedelta(seconds=6))  # their retries are due, but the endpoint rests
    Delivery.objects.update(next_attempt_at=clock())
    assert deliver(clock).report.claimed == 0
    clock.advance(schedule.ENDPOINT_PAUSE_CAP)
    assert deliver(clock).report.claimed == 3


def test_an_endpoint_failing_for_five_days_is_disabled_with_a_banner_until_enabled(
    make_image, receiver, admin_client
):
    receiver.status = 500
    endpoint = add(receiver.url()).endpoint
    image = make_image()
    for _ in range(schedule.DISABLE_AFTER_FAILURES):
        event(image)
    clock = Clock()
    deliver(clock, concurrency=8)  # all in one batch
    endpoint.refresh_from_db()
    assert endpoint.enabled
    assert endpoint.consecutive_failures == schedule.DISABLE_AFTER_FAILURES

    clock.advance(schedule.DISABLE_AFTER)
    deliver(clock)
    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert endpoint.disabled_automatically
    assert "Every attempt failed since" in endpoint.disabled_reason
    assert AuditEntry.objects.filter(action="webhook.endpoint_auto_disabled").count() == 1

    page = admin_client.get("/images/").content.decode()
    assert "Webhooks are not being delivered" in page
    assert receiver.url() in page

    # Nothing more goes out while it is disabled.
    sent = len(receiver.received)
    clock.advance(timedelta(days=1))
    assert deliver(clock).report.claimed == 0
    assert len(receiver.received) == sent

    response = admin_client.post(f"/webhooks/endpoints/{endpoint.pk}/", {"action": "enable"})
    assert response.status_code == 302
    assert "Webhooks are not being delivered" not in admin_client.get("/images/").content.decode()
    receiver.status = 200
    deliver(clock)
    assert not Delivery.objects.exclude(state=Delivery.State.DELIVERED).exists()


def test_an_endpoint_answering_410_gone_is_disabled_at_once(make_image, receiver):
    receiver.status = 410
    endpoint = add(receiver.url()).endpoint
    event(make_image())
    deliver()
    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert "410" in endpoint.disabled_reason


def test_a_disabled_endpoint_receives_nothing(make_image, receiver):
    live = add(receiver.url("/live")).endpoint
    later = add(receiver.url("/later")).endpoint
    image = make_image()
    event(image)  # fanned out to both
    services.set_enabled(endpoint_id=later.pk, enabled=False, actor=None)
    event(image)  # fanned out to /live only
    deliver()
    assert receiver.paths() == ["/live", "/live"]
    assert Delivery.objects.filter(endpoint=live, state="delivered").count() == 2
    assert Delivery.objects.get(endpoint=later).state == Delivery.State.PENDING


def test_the_command_delivers_what_is_due_and_exits_with_batch(make_image, receiver):
    add(receiver.url())
    event(make_image())
    call_command("deliver_webhooks", "--batch", "--concurrency", "2")
    assert len(receiver.received) == 1
    assert Delivery.objects.get().state == Delivery.State.DELIVERED


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_workers_on_postgresql_send_each_delivery_once(make_image, receiver):
    add(receiver.url())
    images = [make_image(), make_image()]
    events = [event(images[n % 2]) for n in range(120)]
    start = threading.Barrier(2)
    reports = []

    def work(name: str) -> None:
        try:
            start.wait()
            worker = Deliverer(concurrency=8, worker_id=name)
            reports.append(worker.run(batch=True))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert receiver.ids() == {e.public_id: 1 for e in events}
    assert sum(report.claimed for report in reports) == len(events)
    assert set(Delivery.objects.values_list("state", "attempts")) == {("delivered", 1)}
    assert Attempt.objects.count() == len(events)
