from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from moderation.audit.log import ChainBroken, ChainHead, save_check, walk_chain


class Command(BaseCommand):
    help = (
        "Walk the audit log's hash chain in order. Prints how many entries verified and the "
        "chain's head (COUNT:SHA256, keep it somewhere else) and exits 0, or names the first "
        "entry that was edited, deleted or inserted and exits 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--expect-head",
            metavar="COUNT:SHA256",
            help="A head printed by an earlier run; fails if that entry is no longer on the chain.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        expected = None
        # `is not None`: an empty value (an unset shell variable) must not skip the check.
        if options["expect_head"] is not None:
            try:
                expected = ChainHead.parse(options["expect_head"])
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        started = time.monotonic()
        head = ChainHead(0, "")
        try:
            for head in walk_chain():
                if (
                    expected
                    and head.count == expected.count
                    and head.last_hash != expected.last_hash
                ):
                    raise ChainBroken(
                        head.count,
                        None,
                        f"its hash is {head.last_hash}, not the expected head's "
                        f"{expected.last_hash}: the chain was rewritten up to here",
                    )
        except ChainBroken as broken:
            save_check(head=head, problem=str(broken), seconds=time.monotonic() - started)
            self.stderr.write(self.style.ERROR(f"Audit chain BROKEN at {broken}."))
            if head.count:
                self.stderr.write(f"The first {head.count} entries verified.")
            sys.exit(1)
        if expected and head.count < expected.count:
            save_check(
                head=head,
                problem=f"entries after #{head.count} were cut (expected #{expected.count})",
                seconds=time.monotonic() - started,
            )
            self.stderr.write(
                self.style.ERROR(
                    f"Audit chain BROKEN: it has {head.count} entries but the expected head is "
                    f"entry #{expected.count}: entries were cut from the end."
                )
            )
            sys.exit(1)
        elapsed = time.monotonic() - started
        save_check(head=head, problem="", seconds=elapsed)
        self.stdout.write(
            self.style.SUCCESS(f"Audit chain OK: {head.count} entries verified in {elapsed:.2f} s.")
        )
        if expected:
            self.stdout.write(f"Expected head #{expected.count} is on the chain.")
        self.stdout.write(f"Head: {head}" if head.count else "Head: (empty chain)")
