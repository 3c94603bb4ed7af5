from __future__ import annotations

import os
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.crypto import get_random_string

from moderation.imm.submitter import Submitter


class Command(BaseCommand):
    help = (
        "Send images to IMM: runs the submit_image tasks queued at upload (and their retries) "
        "many at a time, IMM_SUBMIT_CONCURRENCY by default, within the IMM_MAX_QPS budget every "
        "process shares. Runs until stopped (a second Ctrl-C stops at once); `--batch` runs "
        "what is ready, then exits. Several may run: each claims its own tasks."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Requests in flight at once (default: IMM_SUBMIT_CONCURRENCY).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=0.5,
            help="Seconds between looks at an empty queue (default: 0.5).",
        )
        parser.add_argument("--batch", action="store_true", help="Run the ready tasks, then exit.")
        parser.add_argument(
            "--worker-id",
            default=None,
            help="Recorded on each task it runs (default: a random id).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        concurrency = options["concurrency"]
        if concurrency is None:
            concurrency = settings.IMM_SUBMIT_CONCURRENCY
        if not 1 <= concurrency <= 256:
            raise CommandError(f"--concurrency must be from 1 to 256; got {concurrency}")
        if not options["interval"] > 0:
            raise CommandError(f"--interval must be a positive number; got {options['interval']}")
        worker_id = options["worker_id"] or f"imm-submitter-{get_random_string(12)}"
        if len(worker_id) > 64:
            raise CommandError("--worker-id must be at most 64 characters")
        submitter = Submitter(
            concurrency=concurrency, worker_id=worker_id, interval=options["interval"]
        )

        def shutdown(signum: int, frame: object) -> None:
            if submitter.stopping:
                self.stderr.write("Stopping now; the poller resends the images in hand.")
                self.stderr.flush()
                os._exit(1)  # not sys.exit: that would wait for the requests in flight
            self.stderr.write("Finishing the tasks in hand (again to stop now)...")
            submitter.stop()

        previous = {sig: signal.signal(sig, shutdown) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            report = submitter.run(batch=options["batch"])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write(str(report))
        if report.errors:
            raise CommandError(f"{report.errors} batch(es) failed; the log says why")
