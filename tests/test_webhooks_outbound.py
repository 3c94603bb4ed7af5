"""Where webhooks may go: https only, no redirects, no link-local or metadata addresses, private
and loopback addresses only for hosts an admin allows, checked at registration and at send."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from moderation.webhooks import services, transport
from moderation.webhooks.models import Endpoint
from moderation.webhooks.transport import RefusedDestination, Sender

pytestmark = pytest.mark.django_db


def public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/x", "https only"),
        ("ftp://hooks.example.com/x", "https://"),
        ("https://user:pw@hooks.example.com/x", "user name or password"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://100.100.100.200/latest/meta-data/", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://169.254.10.10/", "link-local"),
        ("https://[fe80::1]/", "link-local"),
        ("https://[::ffff:169.254.169.254]/", "metadata"),
        ("https://10.0.0.5/", "WEBHOOK_ALLOWED_HOSTS"),
        ("https://0.0.0.0/", "not a unicast"),
    ],
)
def test_it_refuses_to_register_a_destination_webhooks_may_not_reach(url, why, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(RefusedDestination, match=why):
        transport.check_destination(url)


def test_metadata_and_link_local_stay_refused_even_for_an_allowed_host(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["169.254.169.254", "100.100.100.200", "metadata.internal"]
    for url in ("http://169.254.169.254/", "http://100.100.100.200/"):
        with pytest.raises(RefusedDestination, match="metadata"):
            transport.check_destination(url)
    with pytest.raises(RefusedDestination, match="metadata"):
        transport.check_destination(
            "http://metadata.internal/", resolver=lambda host, port: ["169.254.169.254"]
        )


def test_loopback_is_refused_unless_the_host_is_allowed(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(RefusedDestination, match="https only"):
        transport.check_destination("http://127.0.0.1:9/hook")
    with pytest.raises(RefusedDestination, match="loopback"):
        transport.check_destination("https://127.0.0.1:9/hook")
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    transport.check_destination("http://127.0.0.1:9/hook")


def test_a_public_name_is_accepted_at_registration():
    transport.check_destination("https://hooks.example.com/x", resolver=public)


def test_a_name_resolving_to_a_private_address_is_refused_even_if_one_address_is_public():
    with pytest.raises(RefusedDestination, match=r"10\.1\.2\.3"):
        transport.check_destination(
            "https://hooks.example.com/x", resolver=lambda h, p: ["93.184.216.34", "10.1.2.3"]
        )


def test_the_page_and_the_command_refuse_a_metadata_url(admin_client):
    response = admin_client.post("/webhooks/", {"url": "https://100.100.100.200/hook"})
    assert response.status_code == 400
    assert "metadata address" in response.content.decode()
    with pytest.raises(CommandError, match="metadata address"):
        call_command("add_webhook", "https://169.254.169.254/hook")
    assert not Endpoint.objects.exists()


def test_sending_to_loopback_not_allowed_is_refused_at_connect_time(receiver, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    services.add_endpoint(url=receiver.url(), actor=None)
    settings.WEBHOOK_ALLOWED_HOSTS = []  # the admin took it off the list since
    with Sender() as sender:
        result = sender.send(receiver.url(), body=b"{}", headers={})
    assert result.status_code is None
    assert result.error == transport.REFUSED
    assert receiver.received == []


def test_a_name_that_resolves_elsewhere_at_send_time_is_refused_dns_rebinding(receiver):
    # Registered while the name pointed at a public address...
    transport.check_destination("https://hooks.example.test/x", resolver=public)
    # ...and at send time it points at the receiver on loopback, or at the metadata service.
    for address, why in (("127.0.0.1", "loopback"), ("169.254.169.254", "metadata")):
        with Sender(resolver=lambda host, port, a=address: [a]) as sender:
            result = sender.send(
                f"https://hooks.example.test:{receiver.port}/x", body=b"{}", headers={}
            )
        assert result.error == transport.REFUSED
        assert why in result.head
    assert receiver.received == []


def test_an_allowed_host_is_reached_on_loopback(receiver, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    with Sender() as sender:
        result = sender.send(receiver.url(), body=b"{}", headers={"webhook-id": "msg_1"})
    assert (result.status_code, result.ok, result.head) == (200, True, "ok")
    assert receiver.ids() == {"msg_1": 1}


def test_a_redirect_is_not_followed_and_counts_as_a_failure(receiver):
    receiver.status, receiver.location = 302, "/elsewhere"
    with Sender() as sender:
        result = sender.send(receiver.url("/hook"), body=b"{}", headers={})
    assert (result.status_code, result.ok) == (302, False)
    assert receiver.paths() == ["/hook"]


def test_only_the_first_bytes_of_a_long_answer_are_kept(receiver):
    receiver.reply = b"x" * 100_000
    with Sender() as sender:
        result = sender.send(receiver.url(), body=b"{}", headers={})
    assert result.ok
    assert result.head == "x" * 200


def test_a_receiver_slower_than_the_total_limit_times_out(receiver, monkeypatch):
    monkeypatch.setattr(transport, "TOTAL_TIMEOUT", 0.3)
    receiver.delay = 1.0
    with Sender() as sender:
        result = sender.send(receiver.url(), body=b"{}", headers={})
    assert (result.status_code, result.error) == (None, transport.TIMEOUT)


def test_nothing_listening_is_a_connect_error(settings):
    with Sender() as sender:
        result = sender.send("http://127.0.0.1:9/hook", body=b"{}", headers={})
    assert result.error == transport.CONNECT


def test_webhooks_http_lives_in_one_module():
    from pathlib import Path

    package = Path(transport.__file__).parent
    importers = sorted(
        path.name
        for path in package.rglob("*.py")
        if "import httpx" in path.read_text() or "import httpcore" in path.read_text()
    )
    assert importers == ["transport.py"]
