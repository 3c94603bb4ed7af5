from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections, connection

from moderation.audit import checkpoints, sequencer

logger = logging.getLogger("moderation.audit.sequencer")

# Between batches when nothing was waiting; a full batch loops at once.
IDLE_SECONDS = 0.2
# After a database error (a restart, a lost connection), before trying again.
RETRY_SECONDS = 1.0
# How often a running sequencer says what it did.
REPORT_SECONDS = 10.0


class Command(BaseCommand):
    help = (
        "Give committed audit entries their positions in batches, extend the log's Merkle tree "
        "and sign a checkpoint after each batch. Runs until stopped (SIGTERM or Ctrl-C finish "
        "the batch in hand); `--once` sequences what is waiting, then exits. Safe to run twice: "
        "one sequences at a time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Sequence what waits, then exit.")
        parser.add_argument(
            "--batch",
            type=int,
            default=sequencer.DEFAULT_BATCH,
            help=f"Entries per batch (one transaction, one checkpoint); {sequencer.DEFAULT_BATCH} "
            "by default.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch"]
        if not 1 <= batch_size <= 100_000:
            raise CommandError("--batch must be from 1 to 100000")
        try:
            signer = checkpoints.signer()
        except checkpoints.NoSigningKey as exc:
            raise CommandError(f"the sequencer cannot sign checkpoints: {exc}") from None
        stop = threading.Event()
        if not options["once"]:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        self.stdout.write(f"Sequencing the audit log {signer.name} ({signer.verifier_key()}).")
        sequenced = integrated = 0
        reported = time.monotonic()
        size = None
        while not stop.is_set():
            if not connection.in_atomic_block:  # a caller's transaction (tests) is left alone
                close_old_connections()
            try:
                batch = sequencer.sequence_batch(signer=signer, batch_size=batch_size)
            except sequencer.SequencerError as exc:
                raise CommandError(f"the sequencer stopped: {exc}") from None
            except DatabaseError as exc:
                if options["once"]:
                    raise CommandError(f"the sequencer stopped on a database error: {exc}") from exc
                logger.exception("audit sequencer: database error; trying again")
                stop.wait(RETRY_SECONDS)
                continue
            if batch is not None:
                sequenced += batch.sequenced
                integrated += batch.integrated
                size = batch.tree_size
            if (sequenced or integrated) and time.monotonic() - reported >= REPORT_SECONDS:
                self._report(sequenced, integrated, size)
                sequenced = integrated = 0
                reported = time.monotonic()
            if batch is not None and batch.sequenced == batch_size:
                continue  # more may be waiting
            if options["once"] and batch is not None:
                break
            stop.wait(IDLE_SECONDS)
        if sequenced or integrated:
            self._report(sequenced, integrated, size)

    def _report(self, sequenced: int, integrated: int, size: int | None) -> None:
        parts = [f"{sequenced} entries sequenced"]
        if integrated:
            parts.append(f"{integrated} entries of the hash-chain era added to the tree")
        self.stdout.write(f"{', '.join(parts)}; tree size {size}.")
