"""python manage.py backup: one pg_dump of the database, the newest BACKUP_KEEP kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from controlplane import backups


class Command(BaseCommand):
    help = "Back the database up with pg_dump (custom format) and keep the newest N backups."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", default=settings.BACKUP_DIR, help="where backups are kept")
        parser.add_argument("--keep", type=int, default=settings.BACKUP_KEEP)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            path = backups.backup(Path(options["dir"]), keep=options["keep"])
        except backups.BackupError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Backed up to {path} ({path.stat().st_size:,} bytes).")
