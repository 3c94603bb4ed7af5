from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, close_old_connections, connection

from moderation.management import loops
from reviews.dashboard import rollups

logger = logging.getLogger("reviews.dashboard")


@dataclass
class LoopReport:
    passes: int = 0
    errors: int = 0
    last: rollups.PassReport | None = None

    def __str__(self) -> str:
        if self.last is None:
            return f"{self.passes} rollup passes, {self.errors} failed."
        return (
            f"{self.passes} rollup passes, {self.errors} failed; the last recomputed "
            f"{self.last.hours} hours in {self.last.seconds:.2f} s, {self.last.waiting} items "
            f"waiting, final up to {self.last.settled_until:%Y-%m-%d %H:%M:%S}."
        )


class RollupLoop:
    """One pass every `interval` seconds until stopped; a failed pass is logged and retried."""

    def __init__(self, *, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, batch: bool = False) -> LoopReport:
        report = LoopReport()
        while not self.stopping:
            if not connection.in_atomic_block:  # a caller's transaction (tests) is left alone
                close_old_connections()
            try:
                report.last = rollups.run_pass()
                report.passes += 1
            except DatabaseError:
                logger.exception("rollups: the pass failed; the next one redoes its hours")
                report.errors += 1
            if batch:
                break
            self._stop.wait(self.interval)
        return report


class Command(BaseCommand):
    help = (
        "Keep the team dashboard's hourly rollups up to date: every --interval seconds, "
        "recompute the hours not yet final from the decisions, images and audit log, and "
        "snapshot the review queue. Runs until stopped; `--batch` makes one pass, then exits. "
        "Safe to run twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval",
            type=float,
            default=60.0,
            help="Seconds between passes (default: 60).",
        )
        parser.add_argument("--batch", action="store_true", help="Make one pass, then exit.")
        parser.add_argument("--worker-id", default=None, help="Named in the log (default: random).")

    def handle(self, *args: Any, **options: Any) -> None:
        worker_id = loops.worker_id(options, concurrency=1, prefix="oversight-rollups")
        self.stdout.write(f"Rollups for the team dashboard ({worker_id}).")
        loops.run_until_stopped(
            self,
            RollupLoop(interval=options["interval"]),
            batch=options["batch"],
            finishing="Finishing the pass in hand (again to stop now)...",
            stopping_now="Stopping now; the next pass redoes the hours this one had not saved.",
        )
