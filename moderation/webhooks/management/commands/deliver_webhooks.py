from __future__ import annotations

import os
import signal
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.crypto import get_random_string

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
        if not 1 <= concurrency <= 256:
            raise CommandError(f"--concurrency must be from 1 to 256; got {concurrency}")
        if not options["interval"] > 0:
            raise CommandError(f"--interval must be a positive number; got {options['interval']}")
        worker_id = options["worker_id"] or f"webhooks-{get_random_string(12)}"
        if len(worker_id) > 64:
            raise CommandError("--worker-id must be at most 64 characters")
        try:
            signing.require_key()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        deliverer = Deliverer(
            concurrency=concurrency, worker_id=worker_id, interval=options["interval"]
        )

        def shutdown(signum: int, frame: object) -> None:
            if deliverer.stopping:
                self.stderr.write("Stopping now; the deliveries in hand go again later.")
                self.stderr.flush()
                os._exit(1)  # not sys.exit: that would wait for the requests in flight
            self.stderr.write("Finishing the deliveries in hand (again to stop now)...")
            deliverer.stop()

        previous = {sig: signal.signal(sig, shutdown) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            report = deliverer.run(batch=options["batch"])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write(str(report))
        if report.errors:
            raise CommandError(f"{report.errors} batch(es) failed; the log says why")
