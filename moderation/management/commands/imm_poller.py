from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from moderation.imm import pipeline


class Command(BaseCommand):
    help = (
        "Poll IMM for results no notification brought (after IMM_POLL_AFTER seconds, backing "
        "off), expire tasks past IMM's 7-day retention, match kept results (and delete those "
        "that matched nothing for 14 days) and resend images whose submission got lost. Runs "
        "until stopped; `--once` for one round."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=10.0, help="Seconds between rounds.")
        parser.add_argument("--once", action="store_true", help="One round, then exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        if not options["once"]:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        client = pipeline.make_client()
        while True:
            close_old_connections()
            report = pipeline.poll_once(client=client)
            if any(vars(report).values()):
                self.stdout.write(
                    ", ".join(f"{name} {count}" for name, count in vars(report).items())
                )
            if options["once"] or stop.wait(options["interval"]):
                break
