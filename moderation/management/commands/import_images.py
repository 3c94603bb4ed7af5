from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from moderation import services


def _walk(paths: list[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


class Command(BaseCommand):
    help = (
        "Import image files and folders (recursively) with the same checks as the upload page. "
        "Exits 0 when it ran, even if some files were refused; the summary names each one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument(
            "--as",
            dest="username",
            help="Record this user as the uploader (default: the system).",
        )
        parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = None
        if options["username"]:
            actor = get_user_model().objects.filter(username=options["username"]).first()
            if actor is None:
                raise CommandError(f"no user named {options['username']!r}")
        files = list(_walk(options["paths"]))
        stored, duplicates, refused = 0, 0, []
        progress = tqdm(files, unit="file", disable=options["no_progress"], file=self.stderr._out)
        for path in progress:
            progress.set_postfix_str(path.name[-30:], refresh=False)
            try:
                with path.open("rb") as fp:
                    result = services.ingest(
                        fp=fp, filename=path.name, actor=actor, via="import_images"
                    )
            except OSError as exc:
                refused.append((path, f"cannot be read: {exc.strerror or exc}"))
                continue
            if result.outcome == "stored":
                stored += 1
            elif result.outcome == "duplicate":
                duplicates += 1
            else:
                refused.append((path, result.reason))
        self.stdout.write(
            f"{len(files)} file(s): {stored} stored, {duplicates} duplicate(s), "
            f"{len(refused)} refused."
        )
        for path, reason in refused:
            self.stdout.write(f"  refused {path}: {reason}")
