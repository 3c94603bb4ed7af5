from __future__ import annotations

import getpass
import os
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from moderation.accounts import create_user
from moderation.roles import ROLES


class Command(BaseCommand):
    help = "Create a user with one role: admin (uploads, sees everything) or reviewer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=sorted(ROLES))
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password-env",
            metavar="VAR",
            help="Read the password from this environment variable instead of prompting.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username, role = options["username"], options["role"]
        if options["password_env"]:
            name = options["password_env"]
            password = os.environ.get(name, "")
            if not password:
                raise CommandError(f"environment variable {name} is not set or empty")
        else:
            password = getpass.getpass(f"Password for {username}: ")
            if password != getpass.getpass("Again: "):
                raise CommandError("the two passwords differ")
        try:
            create_user(username=username, role=role, password=password, email=options["email"])
        except ValidationError as exc:
            raise CommandError("password refused: " + " ".join(exc.messages)) from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Created {role} {username!r}."))
