from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from moderation.audit.checkpoints import NoSigningKey
from moderation.audit.note import NoteError, Verifier
from moderation.audit.verify import LogBroken, save_check, verify_log


class Command(BaseCommand):
    help = (
        "Verify the audit log: every entry against its hashes and columns, positions without "
        "gaps, the Merkle tree against the stored subtrees and every checkpoint, and the latest "
        "checkpoint's signature. Prints the latest signed checkpoint (keep it somewhere else) "
        "and exits 0, or names the first fault and exits 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            metavar="CHECKPOINT_FILE",
            help="A signed checkpoint kept from an earlier run (or GET /audit/checkpoint): fails "
            "unless the log still holds it and only grew since.",
        )
        parser.add_argument(
            "--key",
            metavar="VERIFIER_KEY",
            help="The log's verifier key (<name>+<key id>+<base64 key>), for checking without "
            "the signing key; by default the configured signing key's.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        key = None
        if options["key"] is not None:
            try:
                key = Verifier.from_key(options["key"].strip())
            except NoteError as exc:
                raise CommandError(f"--key: {exc}") from None
        since = None
        if options["since"] is not None:
            try:
                since = Path(options["since"]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"--since: cannot read {options['since']}: {exc}") from None
        started = time.monotonic()
        try:
            report = verify_log(key=key, since=since)
        except NoSigningKey as exc:
            raise CommandError(f"{exc}, or pass --key") from None
        except LogBroken as broken:
            save_check(entries=broken.verified, root=b"", problem=str(broken), started=started)
            where = " at" if str(broken).startswith("entry #") else ":"
            self.stderr.write(self.style.ERROR(f"Audit log BROKEN{where} {broken}."))
            if broken.verified:
                self.stderr.write(f"The first {broken.verified} entries verified.")
            sys.exit(1)
        elapsed = time.monotonic() - started
        save_check(entries=report.entries, root=report.root, problem="", started=started)
        waiting = f", {report.waiting} waiting for a position" if report.waiting else ""
        self.stdout.write(
            self.style.SUCCESS(
                f"Audit log OK: {report.entries} entries verified in {elapsed:.2f} s{waiting}."
            )
        )
        for note in report.notes:
            self.stdout.write(note)
        if since is not None:
            self.stdout.write("The kept checkpoint is in the log, which only grew since.")
        latest = report.checkpoint
        if latest is None:
            self.stdout.write("No checkpoint yet.")
        else:
            self.stdout.write(
                f"Latest checkpoint, tree size {latest.size} (keep it elsewhere; check it later "
                "with --since FILE):"
            )
            self.stdout.write(report.checkpoint_note, ending="")
