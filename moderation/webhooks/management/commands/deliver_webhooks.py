from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from moderation.management import loops
from moderation.webhooks import signing
from moderation.webhooks.worker import Deliverer


class Command(BaseCommand):
    help = (
        "Deliver webhooks: sends due deliveries, WEBHOOK_CONCURRENCY at a time, signed, and "
        "retries failures for about 27 hours. Runs until stopped (a second Ctrl-C stops at "
        "once; the deliveries in hand are sent again once their lease lapses); `--batch` sends "
        "what is due, then exits. Several may run: each claims its own deliveries."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Requests in flight at once (default: WEBHOOK_CONCURRENCY).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=0.5,
            help="Seconds between looks when nothing is due (default: 0.5).",
        )
        parser.add_argument("--batch", action="store_true", help="Send what is due, then exit.")
        parser.add_argument(
            "--worker-id", default=None, help="Recorded on each attempt (default: random)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        concurrency = options["concurrency"] or settings.WEBHOOK_CONCURRENCY
        worker_id = loops.worker_id(options, concurrency=concurrency, prefix="webhooks")
        try:
            signing.require_key()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        deliverer = Deliverer(
            concurrency=concurrency, worker_id=worker_id, interval=options["interval"]
        )

        loops.run_until_stopped(
            self,
            deliverer,
            batch=options["batch"],
            finishing="Finishing the deliveries in hand (again to stop now)...",
            stopping_now="Stopping now; the deliveries in hand go again later.",
        )
