from __future__ import annotations

import io
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from moderation import demo, services
from moderation.models import Image


class Command(BaseCommand):
    help = (
        "On an empty database, upload a dozen locally drawn sample images that the IMM emulator "
        "sorts into pass, review and block. DEMO_SEED=0 turns it off; --force seeds anyway."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="Seed even if images exist.")

    def handle(self, *args: Any, **options: Any) -> None:
        if os.environ.get("DEMO_SEED", "1").strip().lower() in {"0", "false", "no", "off"}:
            return
        if Image.objects.exists() and not options["force"]:
            return
        outcomes: dict[str, int] = {}
        for name, data in demo.samples():
            result = services.ingest(
                fp=io.BytesIO(data), filename=name, actor=None, via="demo_seed"
            )
            outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        self.stdout.write(
            f"Seeded sample images ({summary}); they go through IMM as the worker picks them up."
        )
