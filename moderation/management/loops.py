"""What the long-running worker commands (imm_submitter, deliver_webhooks) share: their options'
checks, and running a worker until a signal asks it to stop (a second one stops it at once)."""

from __future__ import annotations

import os
import signal
from typing import Any, Protocol

from django.core.management.base import BaseCommand, CommandError
from django.utils.crypto import get_random_string


class Report(Protocol):
    errors: int


class Worker(Protocol):
    @property
    def stopping(self) -> bool: ...

    def stop(self) -> None: ...

    def run(self, *, batch: bool = False) -> Any: ...


def worker_id(options: dict[str, Any], *, concurrency: int, prefix: str) -> str:
    """Check --concurrency (as resolved) and --interval; the --worker-id, or a random one."""
    if not 1 <= concurrency <= 256:
        raise CommandError(f"--concurrency must be from 1 to 256; got {concurrency}")
    if not options["interval"] > 0:
        raise CommandError(f"--interval must be a positive number; got {options['interval']}")
    chosen = options["worker_id"] or f"{prefix}-{get_random_string(12)}"
    if len(chosen) > 64:
        raise CommandError("--worker-id must be at most 64 characters")
    return str(chosen)


def run_until_stopped(
    command: BaseCommand, worker: Worker, *, batch: bool, finishing: str, stopping_now: str
) -> None:
    """Run `worker`; SIGINT or SIGTERM lets it finish what it holds, a second one exits at once.
    Prints its report; CommandError if a batch failed."""

    def shutdown(signum: int, frame: object) -> None:
        if worker.stopping:
            command.stderr.write(stopping_now)
            command.stderr.flush()
            os._exit(1)  # not sys.exit: that would wait for the requests in flight
        command.stderr.write(finishing)
        worker.stop()

    previous = {sig: signal.signal(sig, shutdown) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = worker.run(batch=batch)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    command.stdout.write(str(report))
    if report.errors:
        raise CommandError(f"{report.errors} batch(es) failed; the log says why")
