"""Webhooks probed as an attacker (or a careless paste) would: addresses in every spelling, URLs
that parse one way here and another in httpx, a receiver that drips its answer, and the pages
that show a secret. Refused at registration, refused again at send, and the worker carries on."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from django.db import transaction
from django.utils import timezone

from moderation.events.models import Event
from moderation.events.outbox import emit
from moderation.webhooks import services, transport
from moderation.webhooks.models import Attempt, Delivery, Endpoint
from moderation.webhooks.transport import RefusedDestination, Result, Sender
from moderation.webhooks.worker import Deliverer

pytestmark = pytest.mark.django_db


def public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def deliver(**kwargs) -> Deliverer:
    worker = Deliverer(concurrency=2, worker_id="attack-worker", **kwargs)
    worker.run(batch=True)
    return worker


def an_event(image) -> Event:
    with transaction.atomic():
        return emit(image=image, type=Event.Type.APPROVED, data={"image": image.pk})


# --- where a webhook may go -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://2130706433/hook",  # 127.0.0.1 as one decimal number
        "https://0x7f.1/hook",  # 127.0.0.1 in hex, two parts
        "https://0177.0.0.1/hook",  # 127.0.0.1 in octal
        "https://[::ffff:127.0.0.1]/hook",
        "https://[0:0:0:0:0:ffff:7f00:1]/hook",
        "https://[::1]/hook",
        "https://[::ffff:a9fe:a9fe]/latest/meta-data/",  # 169.254.169.254, IPv4-mapped
        "https://[fe80::1%25eth0]/hook",
        "https://127.0.0.1:443@93.184.216.34/hook",
    ],
)
def test_loopback_metadata_and_userinfo_in_any_spelling_are_refused(url, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(RefusedDestination):
        transport.check_destination(url)


def test_an_allowed_host_is_matched_exactly_so_another_spelling_of_it_is_not_allowed(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    loopback = lambda host, port: ["127.0.0.1"]  # noqa: E731
    spellings = ("127.0.0.1.", "0x7f.1", "[::ffff:7f00:1]", "LOCALHOST")
    for host in spellings:
        with pytest.raises(RefusedDestination, match="https only"):
            transport.check_destination(f"http://{host}/hook", resolver=loopback)
        with pytest.raises(RefusedDestination, match="loopback"):
            transport.check_destination(f"https://{host}/hook", resolver=loopback)
    transport.check_destination("http://127.0.0.1/hook", resolver=loopback)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        # urlsplit drops a tab or a newline silently; httpx refuses the URL at every send.
        ("http://127.0.0.1:9/a\tb", "control or invisible character"),
        ("http://127.0.0.1:9/a\nb", "control or invisible character"),
        ("http://127.0.0.1:9/a\x01b", "control or invisible character"),
        # The system's resolver reads 010.010.010.010 as 8.8.8.8; httpx refuses it.
        ("https://010.010.010.010/hook", "not a URL"),
        # A zero-width space pasted into the name: the resolver's IDNA 2003 drops it, httpx's
        # IDNA 2008 refuses it.
        ("https://hooks.exa\u200bmple.com/hook", "control or invisible character"),
        ("https://\u2603.example/hook", "not a URL"),
    ],
)
def test_a_url_httpx_cannot_send_is_refused_at_registration(url, why):
    with pytest.raises(RefusedDestination, match=why):
        transport.check_destination(url, resolver=public)


def test_the_page_and_the_command_refuse_such_a_url_and_store_nothing(admin_client):
    response = admin_client.post("/webhooks/", {"url": "http://127.0.0.1:9/a\x01b"})
    assert response.status_code == 400
    assert "control or invisible character" in response.content.decode()
    with pytest.raises(services.WebhookError, match="control or invisible character"):
        services.add_endpoint(url="http://127.0.0.1:9/hook\tx", actor=None)
    assert not Endpoint.objects.exists()


def test_an_endpoint_stored_with_such_a_url_fails_its_attempts_and_the_worker_carries_on(
    make_image, receiver, caplog
):
    good = services.add_endpoint(url=receiver.url("/good"), actor=None)
    # Registered before the check existed: the row holds a URL httpx refuses to send to.
    bad = Endpoint.objects.create(url=receiver.url("/bad\tpath"))
    sent = an_event(make_image())

    report = deliver().report  # raised httpx.InvalidURL out of run() before

    assert report.errors == 0
    assert receiver.paths() == ["/good"]
    assert Delivery.objects.get(endpoint=good.endpoint).state == Delivery.State.DELIVERED
    failed = Delivery.objects.get(endpoint=bad)
    assert (failed.state, failed.attempts, failed.last_status) == ("pending", 1, "refused_address")
    attempt = Attempt.objects.get(delivery=failed)
    assert attempt.error == transport.REFUSED
    assert "control or invisible character" in attempt.response_head
    assert failed.next_attempt_at > timezone.now()  # a retry is scheduled, the lease is let go
    assert sent.public_id in receiver.ids()
    assert good.secret not in caplog.text


class Exploding(Sender):
    """A transport that fails in a way nothing expected, for one URL."""

    def send(self, url: str, *, body: bytes, headers: dict[str, str]) -> Result:
        if "/boom" in url:
            raise RuntimeError("something nobody planned for")
        return super().send(url, body=body, headers=headers)


def test_a_surprise_in_one_send_is_a_failed_attempt_not_a_stopped_worker(make_image, receiver):
    services.add_endpoint(url=receiver.url("/fine"), actor=None)
    boom = services.add_endpoint(url=receiver.url("/boom"), actor=None).endpoint
    an_event(make_image())

    with Exploding() as sender:
        report = deliver(sender=sender).report

    assert report.outcomes == {"delivered": 1, "failed attempt": 1}
    assert receiver.paths() == ["/fine"]
    attempt = Attempt.objects.get(endpoint=boom)
    assert (attempt.status_code, attempt.error) == (None, transport.ERROR)
    assert attempt.response_head == "the request could not be made: RuntimeError"
    assert Delivery.objects.get(endpoint=boom).leased_by == ""


# --- a receiver that drips its answer ---------------------------------------------------------


class Dripper:
    """Accepts one connection and answers a byte at a time, every `gap` seconds, forever."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        self.stopped = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(1)
            try:
                conn.recv(65536)
                answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000
                for byte in answer:
                    if self.stopped.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    self.sent += 1
                    time.sleep(self.gap)
            except OSError:
                return

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


def test_an_answer_dripped_a_byte_at_a_time_is_cut_at_the_total_deadline(monkeypatch):
    # Each byte comes well within any read timeout; only the total deadline ends it.
    monkeypatch.setattr(transport, "TOTAL_TIMEOUT", 0.5)
    dripper = Dripper(gap=0.02)
    try:
        with Sender() as sender:
            result = sender.send(f"http://127.0.0.1:{dripper.port}/hook", body=b"{}", headers={})
    finally:
        dripper.close()
    assert (result.status_code, result.error) == (None, transport.TIMEOUT)
    assert dripper.sent < 10_000


# --- pages that show a secret -----------------------------------------------------------------


def test_the_answers_that_show_a_secret_are_never_stored_by_a_cache(admin_client, receiver):
    added = admin_client.post("/webhooks/", {"url": receiver.url()})
    assert added.status_code == 201
    assert "whsec_" in added.content.decode()
    assert "no-store" in added["Cache-Control"]
    endpoint = Endpoint.objects.get()
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        rotated = admin_client.post(
            f"/webhooks/endpoints/{endpoint.pk}/", {"action": "rotate"}, **headers
        )
        assert "whsec_" in rotated.content.decode()
        assert "no-store" in rotated["Cache-Control"]
    assert "no-store" in admin_client.get("/webhooks/")["Cache-Control"]
