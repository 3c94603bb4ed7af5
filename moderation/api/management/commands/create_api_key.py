from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from moderation.api import keys


class Command(BaseCommand):
    help = (
        "Make an API key for a client (made first if it does not exist). The key is printed "
        "alone on the last line, once: only its hash is kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The client's name (letters, digits, . - _).")
        parser.add_argument(
            "--scopes",
            default="submit,read",
            help=f"Comma-separated, from: {', '.join(keys.SCOPES)} (default: all).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            scopes = keys.parse_scopes(options["scopes"])
            made = keys.create_key(client_name=options["name"], scopes=scopes, created_by=None)
        except keys.Invalid as exc:
            raise CommandError(str(exc)) from None
        record = made.record
        what = "new client" if made.client_created else "client"
        self.stderr.write(
            f"Key {record.display} for {what} {record.client.name}, scopes "
            f"{', '.join(record.scopes)}. It is shown once, below; keep it secret."
        )
        self.stdout.write(made.key)
