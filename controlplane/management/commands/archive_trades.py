"""python manage.py archive_trades --older-than DAYS [--delete]: orders and fills to files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from controlplane import retention


def _days(raw: str) -> int:
    try:
        days = int(raw)
    except ValueError:
        raise CommandError(f"--older-than wants a whole number of days, not {raw!r}") from None
    if days < 1:
        raise CommandError(f"--older-than wants 1 day or more, not {days}")
    return days


class Command(BaseCommand):
    help = (
        "Archive orders and fills older than N days to gzip'd CSV files, a file a day, under "
        "ARCHIVE_DIR. Nothing is deleted unless --delete is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", required=True, metavar="DAYS", help="days kept")
        parser.add_argument("--dir", default=settings.ARCHIVE_DIR, help="the archive directory")
        parser.add_argument(
            "--delete",
            action="store_true",
            help="delete the archived fills, and the archived orders no longer working that "
            "have no fill left",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = _days(options["older_than"])
        try:
            written = retention.archive_trades(
                days, delete=options["delete"], root=Path(options["dir"])
            )
        except retention.ArchiveError as exc:
            raise CommandError(f"{exc}; nothing was deleted") from None
        for table, paths in written.items():
            self.stdout.write(f"{table}: {len(paths)} day(s) archived")
        self.stdout.write("Archived rows deleted." if options["delete"] else "Nothing deleted.")
