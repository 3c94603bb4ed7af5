from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from moderation.accounts import create_user

DEMO = [
    ("admin", "admin", "DEMO_ADMIN_PASSWORD"),
    ("reviewer", "reviewer", "DEMO_REVIEWER_PASSWORD"),
]


class Command(BaseCommand):
    help = (
        "Make sure the demo admin and demo reviewer exist. Passwords come from "
        "DEMO_ADMIN_PASSWORD / DEMO_REVIEWER_PASSWORD, or are generated and printed once."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model().objects
        for username, role, variable in DEMO:
            password = os.environ.get(variable, "")
            existing = users.filter(username=username).first()
            if existing is not None:
                if password and not existing.check_password(password):
                    existing.set_password(password)
                    existing.save(update_fields=["password"])
                    self.stdout.write(f"Demo {role} {username!r}: password set from {variable}.")
                continue
            generated = not password
            if generated:
                password = secrets.token_urlsafe(12)
            create_user(username=username, role=role, password=password, validate=False)
            shown = f"password {password}" if generated else f"password from {variable}"
            self.stdout.write(
                self.style.SUCCESS(f"Created demo {role} {username!r} with {shown}")
                + (" (shown once; keep it)" if generated else "")
            )
