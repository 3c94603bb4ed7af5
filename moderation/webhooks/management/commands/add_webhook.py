from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from moderation.events.models import Event
from moderation.webhooks import services


class Command(BaseCommand):
    help = (
        "Register a webhook endpoint. Prints its signing secret (whsec_...) alone on the last "
        "line: it is shown this once and stored nowhere."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("url", help="https://... (http only for WEBHOOK_ALLOWED_HOSTS)")
        parser.add_argument(
            "--events",
            default="",
            help=f"Comma-separated event types (default: all): {','.join(Event.Type.values)}",
        )
        parser.add_argument("--description", default="", help="A note for the webhooks page.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            created = services.add_endpoint(
                url=options["url"],
                event_types=options["events"].split(","),
                description=options["description"],
                actor=None,
            )
        except (services.WebhookError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from None
        endpoint = created.endpoint
        self.stdout.write(
            f"Endpoint {endpoint.pk} registered for {endpoint.url} ({endpoint.event_types_label})."
        )
        self.stdout.write("Its signing secret, shown this once:")
        self.stdout.write(created.secret)
