from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections, connection

from moderation.imm import inbox, pipeline


class Command(BaseCommand):
    help = (
        "Apply the IMM notifications waiting in the inbox (a loop of its own, every "
        f"{inbox.IDLE_WAIT} s when idle) and poll IMM for results no notification brought "
        "(after IMM_POLL_AFTER seconds, backing off), expire tasks past IMM's 7-day retention, "
        "match kept results (and delete those that matched nothing for 14 days) and resend "
        "images whose submission got lost. Runs until stopped; `--once` for one round. Several "
        "may run; `--inbox-only` and `--no-inbox` scale the two loops separately."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=10.0, help="Seconds between rounds.")
        parser.add_argument(
            "--once",
            action="store_true",
            help="One round, then exit (the inbox: what waits now, then exit).",
        )
        loops = parser.add_mutually_exclusive_group()
        loops.add_argument(
            "--inbox-only", action="store_true", help="Apply the inbox only; do not poll IMM."
        )
        loops.add_argument(
            "--no-inbox", action="store_true", help="Poll IMM only; another process applies."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        if not options["once"]:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        if options["once"]:
            if not options["no_inbox"]:
                self._apply_inbox_once()
            if not options["inbox_only"]:
                self._poll(stop, once=True, interval=options["interval"])
            return
        if options["inbox_only"]:
            inbox.run(stop=stop)
            return
        applier = None
        if not options["no_inbox"]:
            applier = threading.Thread(target=self._inbox_loop, args=(stop,), name="inbox")
            applier.start()
        try:
            self._poll(stop, once=False, interval=options["interval"])
        finally:
            stop.set()
            if applier is not None:
                applier.join()

    def _inbox_loop(self, stop: threading.Event) -> None:
        try:
            inbox.run(stop=stop)
        finally:
            connection.close()  # this thread's own connection

    def _apply_inbox_once(self) -> None:
        applied = failed = 0
        while (report := inbox.apply_waiting()).handled:
            applied, failed = applied + report.applied, failed + report.failed
        pruned = inbox.prune_applied()
        if applied or failed or pruned:
            self.stdout.write(f"inbox: applied {applied}, failed {failed}, pruned {pruned}")

    def _poll(self, stop: threading.Event, *, once: bool, interval: float) -> None:
        client = pipeline.make_client()
        while True:
            close_old_connections()
            report = pipeline.poll_once(client=client)
            if any(vars(report).values()):
                self.stdout.write(
                    ", ".join(f"{name} {count}" for name, count in vars(report).items())
                )
            if once or stop.wait(interval):
                break
