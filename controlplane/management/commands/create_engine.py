from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from controlplane import services
from controlplane.models import Mode, Stage


class Command(BaseCommand):
    help = "Register a trading engine and print its token once (only its hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="unique slug, e.g. momo-us-1")
        parser.add_argument("--mode", choices=Mode.values, default=Mode.PAPER)
        parser.add_argument(
            "--stage",
            # Every stage is a choice, so that one above paper gets the service's explanation.
            choices=Stage.values,
            default=None,
            help="backtest or paper (default: the mode's, else paper); shadow and above are "
            "reached through the gates (docs/going-live.md)",
        )
        parser.add_argument("--broker", default="")
        parser.add_argument("--account", default="")
        parser.add_argument(
            "--tag", action="append", default=[], dest="tags", help="strategy tag (repeatable)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            engine, token = services.engine_create(
                name=options["name"],
                mode=options["mode"],
                stage=options["stage"],
                broker=options["broker"],
                account=options["account"],
                strategy_tags=options["tags"],
                actor_label="manage.py create_engine",
            )
        except ValidationError as exc:
            problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise CommandError(f"Engine not created: {problems}") from None
        where = f"id {engine.pk}, {engine.mode}, stage {engine.stage}"
        self.stdout.write(f"Engine {engine.name} ({where}) created.")
        self.stdout.write("Token (shown once; store it in the engine's secrets):")
        self.stdout.write(token)
