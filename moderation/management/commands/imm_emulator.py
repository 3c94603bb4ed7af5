from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from moderation.imm.emulator import Emulator, RulesError


def _rate(value: str) -> float:
    rate = float(value)
    if not 0 <= rate <= 1:
        raise ValueError(value)
    return rate


class Command(BaseCommand):
    help = (
        "Run the local IMM emulator: IMM's wire protocol on HOST:PORT, images read from the "
        "project's storage, verdicts from the documented detector, notifications POSTed to the "
        "notify URL. Stops cleanly on Ctrl-C or SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Default: 127.0.0.1.")
        parser.add_argument(
            "--port", type=int, help="Default: IMM_EMULATOR_PORT; 0 picks a free port."
        )
        parser.add_argument(
            "--delay",
            type=float,
            help="Seconds a task stays Running before it finishes and is notified "
            "(default: IMM_EMULATOR_DELAY).",
        )
        parser.add_argument(
            "--latency-ms",
            type=float,
            metavar="MS",
            help="Answer every request this many milliseconds late, as IMM in a far region "
            "would; requests are still answered concurrently (default: IMM_EMULATOR_LATENCY_MS).",
        )
        parser.add_argument(
            "--manual-review",
            type=float,
            metavar="SECONDS",
            help="Follow each review verdict this many seconds later with IMM's manual review: "
            "a second notification saying pass or block (default: IMM_EMULATOR_MANUAL_REVIEW; "
            "unset or 0: off).",
        )
        parser.add_argument("--rules", help="Rules file (default: IMM_EMULATOR_RULES).")
        parser.add_argument(
            "--state",
            help="SQLite file that keeps tasks across restarts, or :memory: "
            "(default: IMM_EMULATOR_STATE).",
        )
        parser.add_argument(
            "--notify-url",
            help='Where notifications go (default: IMM_EMULATOR_NOTIFY_URL); "" for none.',
        )
        parser.add_argument(
            "--throttle-rps",
            type=float,
            default=0.0,
            help="Answer Throttling.User above this many requests a second (0: off).",
        )
        parser.add_argument(
            "--duplicate-rate",
            type=_rate,
            default=0.0,
            metavar="P",
            help="Probability that a notification is sent twice.",
        )
        parser.add_argument(
            "--drop-rate",
            type=_rate,
            default=0.0,
            metavar="P",
            help="Probability that a notification is never sent.",
        )
        parser.add_argument(
            "--reorder",
            action="store_true",
            help="Hold notifications and send each small batch in reverse order.",
        )
        parser.add_argument("--seed", type=int, help="Seed for the switches above.")

    def handle(self, *args: Any, **options: Any) -> None:
        def setting(option: str, name: str) -> Any:
            value = options[option]
            return getattr(settings, name) if value is None else value

        try:
            emulator = Emulator.from_settings(
                host=options["host"],
                port=setting("port", "IMM_EMULATOR_PORT"),
                delay=setting("delay", "IMM_EMULATOR_DELAY"),
                latency=setting("latency_ms", "IMM_EMULATOR_LATENCY_MS") / 1000,
                manual_review=setting("manual_review", "IMM_EMULATOR_MANUAL_REVIEW") or None,
                rules=setting("rules", "IMM_EMULATOR_RULES") or None,
                state=setting("state", "IMM_EMULATOR_STATE"),
                notify_url=setting("notify_url", "IMM_EMULATOR_NOTIFY_URL") or None,
                throttle_rps=options["throttle_rps"],
                duplicate_rate=options["duplicate_rate"],
                drop_rate=options["drop_rate"],
                reorder=options["reorder"],
                seed=options["seed"],
            )
        except (RulesError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        try:
            emulator.start()
        except OSError as exc:
            emulator.stop()
            raise CommandError(
                f"cannot listen on {emulator.host}:{emulator.port}: {exc.strerror or exc}"
            ) from None

        stopping = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stopping.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        self.stdout.write(emulator.describe(), ending="\n")
        self.stdout.flush()
        try:
            while not stopping.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            emulator.stop()
        self.stdout.write("IMM emulator stopped.")
