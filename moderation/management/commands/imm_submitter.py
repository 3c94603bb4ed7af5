from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from moderation.imm.submitter import Submitter
from moderation.management import loops


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
        worker_id = loops.worker_id(options, concurrency=concurrency, prefix="imm-submitter")
        submitter = Submitter(
            concurrency=concurrency, worker_id=worker_id, interval=options["interval"]
        )

        loops.run_until_stopped(
            self,
            submitter,
            batch=options["batch"],
            finishing="Finishing the tasks in hand (again to stop now)...",
            stopping_now="Stopping now; the poller resends the images in hand.",
        )
