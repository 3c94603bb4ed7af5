from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from moderation.audit.note import NoteError, Signer, generate_signer_key


class Command(BaseCommand):
    help = (
        "Print a new audit signing key for AUDIT_SIGNING_KEY (or a file for "
        "AUDIT_SIGNING_KEY_FILE). NAME becomes the log's origin in every checkpoint, e.g. "
        "moderation.example.com/audit. Keep the key secret; pages show its verifier key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The log's name: no spaces and no '+'.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key = generate_signer_key(options["name"])
        except NoteError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(key)
        self.stderr.write(f"Verifier key (public): {Signer.from_key(key).verifier_key()}")
