"""The Webhooks page and its actions (admins only), and manage.py add_webhook."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from standardwebhooks.webhooks import Webhook

from moderation.events.models import Event
from moderation.events.outbox import emit
from moderation.models import AuditEntry
from moderation.webhooks import services, signing
from moderation.webhooks.models import Attempt, Delivery, Endpoint

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def endpoint(db):
    return services.add_endpoint(url="https://127.0.0.1/hook", actor=None).endpoint


def test_admins_see_the_page_in_the_navigation(admin_client, endpoint):
    page = admin_client.get("/webhooks/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<a href="/webhooks/" aria-current="page">Webhooks</a>' in html
    assert "https://127.0.0.1/hook" in html
    assert "5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h" in html
    assert "whsec_" not in html  # the secret is shown only to whoever made it, once


def test_reviewers_get_403_for_the_page_and_every_action(reviewer_client, endpoint):
    assert reviewer_client.get("/webhooks/").status_code == 403
    assert reviewer_client.post("/webhooks/", {"url": "https://127.0.0.1/x"}).status_code == 403
    action = reviewer_client.post(f"/webhooks/endpoints/{endpoint.pk}/", {"action": "disable"})
    assert action.status_code == 403
    assert reviewer_client.post("/webhooks/deliveries/1/resend").status_code == 403
    assert "/webhooks/" not in reviewer_client.get("/reviews/").content.decode()
    assert Endpoint.objects.get().enabled
    assert Endpoint.objects.count() == 1


def test_adding_an_endpoint_shows_its_secret_once_and_audits_it(admin_client, admin_user, endpoint):
    response = admin_client.post(
        "/webhooks/",
        {
            "url": "https://127.0.0.1/platform",
            "description": "the platform",
            "event_types": ["image.approved", "image.rejected"],
        },
    )
    assert response.status_code == 201
    endpoint = Endpoint.objects.get(url="https://127.0.0.1/platform")
    secret = signing.secret(endpoint)
    html = response.content.decode()
    assert html.count(secret) == 1  # in its own panel, not beside every endpoint's row
    assert endpoint.event_types == ["image.approved", "image.rejected"]
    assert endpoint.created_by == admin_user
    entry = AuditEntry.objects.get(action="webhook.endpoint_added", actor=admin_user)
    assert entry.detail["endpoint"] == endpoint.pk
    assert secret not in entry.content.decode()
    assert secret.removeprefix("whsec_") not in str(entry.detail)
    assert secret not in admin_client.get("/webhooks/").content.decode()
    # The secret shown is the one signatures are made with.
    headers = signing.Signer.for_endpoint(endpoint).headers(msg_id="evt_x", payload=b"{}")
    assert Webhook(secret).verify(b"{}", headers) == {}


def test_a_bad_endpoint_is_refused_with_the_reason_and_the_form_kept(admin_client):
    response = admin_client.post(
        "/webhooks/", {"url": "http://hooks.example.com/x", "description": "mine"}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "https only" in html
    assert 'value="mine"' in html
    response = admin_client.post(
        "/webhooks/", {"url": "https://127.0.0.1/x", "event_types": ["image.deleted"]}
    )
    assert response.status_code == 400
    assert "unknown event type" in response.content.decode()
    assert not Endpoint.objects.exists()


def test_disabling_with_htmx_swaps_the_row_and_audits(admin_client, endpoint):
    response = admin_client.post(f"/webhooks/endpoints/{endpoint.pk}/", {"action": "disable"}, **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith(f'<tr id="endpoint-{endpoint.pk}">')
    assert "<html" not in html
    assert "Disabled" in html
    assert 'value="enable"' in html
    assert response["Vary"].count("HX-Request") == 1
    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert AuditEntry.objects.filter(action="webhook.endpoint_disabled").count() == 1
    # Again: already disabled, a 409 with the row and the reason.
    again = admin_client.post(f"/webhooks/endpoints/{endpoint.pk}/", {"action": "disable"}, **HX)
    assert again.status_code == 409
    assert "already disabled" in again.content.decode()


def test_enabling_without_htmx_redirects_to_the_page(admin_client, endpoint):
    services.set_enabled(endpoint_id=endpoint.pk, enabled=False, actor=None)
    response = admin_client.post(f"/webhooks/endpoints/{endpoint.pk}/", {"action": "enable"})
    assert response.status_code == 302
    assert response["Location"] == "/webhooks/"
    endpoint.refresh_from_db()
    assert endpoint.enabled
    assert "Endpoint" in admin_client.get("/webhooks/").content.decode()


def test_rotating_shows_the_new_secret_once_with_or_without_htmx(admin_client, endpoint):
    before = signing.secret(endpoint)
    response = admin_client.post(f"/webhooks/endpoints/{endpoint.pk}/", {"action": "rotate"}, **HX)
    endpoint.refresh_from_db()
    after = signing.secret(endpoint)
    assert after != before
    assert after in response.content.decode()
    full = admin_client.post(f"/webhooks/endpoints/{endpoint.pk}/", {"action": "rotate"})
    endpoint.refresh_from_db()
    assert full.status_code == 200
    assert signing.secret(endpoint) in full.content.decode()
    assert "<html" in full.content.decode()
    assert AuditEntry.objects.filter(action="webhook.secret_rotated").count() == 2


def test_an_unknown_action_or_endpoint_is_a_clear_4xx(admin_client, endpoint):
    assert (
        admin_client.post(f"/webhooks/endpoints/{endpoint.pk}/", {"action": "x"}).status_code == 400
    )
    assert admin_client.post("/webhooks/endpoints/999/", {"action": "disable"}).status_code == 404
    assert admin_client.get(f"/webhooks/endpoints/{endpoint.pk}/").status_code == 405
    assert admin_client.post("/webhooks/deliveries/999/resend").status_code == 404


def test_resending_a_failed_delivery_with_htmx_swaps_its_row(admin_client, endpoint, make_image):
    with transaction.atomic():
        emit(image=make_image(), type=Event.Type.REJECTED, data={})
    delivery = Delivery.objects.get()
    Delivery.objects.filter(pk=delivery.pk).update(state="failed", attempts=8, last_status="500")
    Attempt.objects.create(
        delivery=delivery,
        endpoint=endpoint,
        number=8,
        attempted_at=delivery.created_at,
        status_code=500,
        latency_ms=12,
        response_head="<h1>broken</h1>",
    )
    page = admin_client.get(f"/webhooks/?endpoint={endpoint.pk}").content.decode()
    assert "Resend" in page
    assert "&lt;h1&gt;broken&lt;/h1&gt;" in page  # the answer's first bytes, escaped
    response = admin_client.post(f"/webhooks/deliveries/{delivery.pk}/resend", **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith(f'<tr id="delivery-{delivery.pk}">')
    assert "Pending" in html
    assert "Resend" not in html
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("pending", 0)
    again = admin_client.post(f"/webhooks/deliveries/{delivery.pk}/resend", **HX)
    assert again.status_code == 409
    assert AuditEntry.objects.filter(action="webhook.delivery_resent").count() == 1


def test_the_banner_names_an_auto_disabled_endpoint_on_admin_pages_only(
    admin_client, reviewer_client, endpoint
):
    Endpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False, disabled_automatically=True, disabled_reason="Every attempt failed."
    )
    assert "Webhooks are not being delivered" in admin_client.get("/webhooks/").content.decode()
    assert (
        "Webhooks are not being delivered" not in reviewer_client.get("/reviews/").content.decode()
    )
    services.set_enabled(endpoint_id=endpoint.pk, enabled=True, actor=None)
    assert "Webhooks are not being delivered" not in admin_client.get("/images/").content.decode()


def test_an_admin_disabling_an_endpoint_raises_no_banner(admin_client, endpoint):
    services.set_enabled(endpoint_id=endpoint.pk, enabled=False, actor=None)
    assert "Webhooks are not being delivered" not in admin_client.get("/images/").content.decode()


def test_add_webhook_prints_the_secret_alone_on_its_last_line():
    out = io.StringIO()
    call_command(
        "add_webhook",
        "https://127.0.0.1/hook",
        "--events",
        "image.approved,image.undone",
        stdout=out,
    )
    last = out.getvalue().splitlines()[-1]
    endpoint = Endpoint.objects.get()
    assert last == signing.secret(endpoint)
    assert last.startswith("whsec_")
    assert endpoint.event_types == ["image.approved", "image.undone"]
    assert AuditEntry.objects.get(action="webhook.endpoint_added").actor is None


def test_add_webhook_refuses_an_unknown_event_type_and_a_missing_key(settings):
    with pytest.raises(CommandError, match="unknown event type"):
        call_command("add_webhook", "https://127.0.0.1/hook", "--events", "image.deleted")
    settings.WEBHOOK_SECRET_KEY = ""
    with pytest.raises(CommandError, match="WEBHOOK_SECRET_KEY is not set"):
        call_command("add_webhook", "https://127.0.0.1/hook")
    assert not Endpoint.objects.exists()


def test_without_the_key_adding_and_rotating_refuse_clearly_and_change_nothing(
    admin_client, endpoint, settings
):
    salt = endpoint.secret_salt
    settings.WEBHOOK_SECRET_KEY = ""
    response = admin_client.post("/webhooks/", {"url": "https://127.0.0.1/other"})
    assert response.status_code == 503
    assert "WEBHOOK_SECRET_KEY is not set" in response.content.decode()
    rotate = admin_client.post(f"/webhooks/endpoints/{endpoint.pk}/", {"action": "rotate"})
    assert rotate.status_code == 503
    endpoint.refresh_from_db()
    assert endpoint.secret_salt == salt
    assert Endpoint.objects.count() == 1
