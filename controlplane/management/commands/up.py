"""Run the whole product: embedded servers if needed, migrations, web, worker, beat (and engines).

Ctrl+C (SIGINT) or SIGTERM stops every process it started, the embedded servers included.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from controlplane.config import embedded
from controlplane.config.env import env_raw
from controlplane.config.serving import UVICORN_OPTIONS
from controlplane.roles import ADMIN


class Command(BaseCommand):
    help = (
        "Start web (uvicorn), Celery worker and beat together; embedded PostgreSQL/Redis if unset."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--demo", action="store_true", help="create the demo admin and run simulated engines"
        )
        parser.add_argument(
            "--engines", type=int, default=None, help="simulated engines (default 3 with --demo)"
        )
        parser.add_argument("--no-worker", action="store_true", help="do not start Celery")

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        if embedded.port_in_use(port, "127.0.0.1" if host in ("0.0.0.0", "") else host):
            raise CommandError(
                f"Port {port} is already in use by another program, so the web server cannot "
                f"start. Stop that program or choose another port: make demo PORT={port + 1}"
            )
        engines = (
            options["engines"] if options["engines"] is not None else (3 if options["demo"] else 0)
        )
        try:
            with embedded.embedded_services() as service_env:
                self._run(host, port, engines, options, service_env)
        except embedded.EmbeddedError as exc:
            raise CommandError(str(exc)) from None

    def _run(
        self,
        host: str,
        port: int,
        engines: int,
        options: dict[str, Any],
        service_env: dict[str, str],
    ) -> None:
        try:
            from honcho.manager import Manager
        except ImportError:
            raise CommandError(
                "manage.py up runs its processes with honcho, of the `embedded` extra: "
                "pip install -e '.[embedded]' (make demo installs it). A production deployment "
                "runs web, worker and beat as processes of their own (docs/operations.md)."
            ) from None

        env = {**os.environ, **service_env, "PYTHONUNBUFFERED": "1"}
        if options["demo"]:
            env.setdefault("CONTROLPLANE_ENV", "demo")
        self.stdout.write("==> Migrations: bringing the database up to date")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("Database migrated.")
        if options["demo"]:
            self._ensure_demo_admin()
        # Child processes open their own connections; do not hold ours open while they run.
        connections.close_all()

        # Celery's routine lines (each task received and succeeded, every few seconds) drown what
        # a person must see; warnings and errors still show. CELERY_LOG_LEVEL=INFO shows them all.
        celery_level = shlex.quote(os.environ.get("CELERY_LOG_LEVEL", "WARNING"))
        python = shlex.quote(sys.executable)
        manage = shlex.quote(str(settings.BASE_DIR / "manage.py"))
        manager = Manager()
        manager.add_process(
            "web",
            f"{python} -m uvicorn controlplane.config.asgi:application --host {shlex.quote(host)} "
            f"--port {port} {shlex.join(UVICORN_OPTIONS)}",
            env=env,
            cwd=str(settings.BASE_DIR),
        )
        if not options["no_worker"]:
            manager.add_process(
                "worker",
                # Threads: the tasks wait on PostgreSQL, SMTP and webhooks, not on the CPU, and
                # eight threads cost what two processes would (alert latency, bench/).
                f"{python} -m celery -A controlplane.config.celery --quiet worker "
                f"--loglevel {celery_level} "
                f"--pool threads "
                f"--concurrency 8 --without-gossip --without-mingle",
                env=env,
                cwd=str(settings.BASE_DIR),
            )
            manager.add_process(
                "beat",
                f"{python} -m celery -A controlplane.config.celery --quiet beat "
                f"--loglevel {celery_level}",
                env=env,
                cwd=str(settings.BASE_DIR),
            )
        if engines > 0:
            base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
            # The demo's engines start at different stages of the way to real money.
            staged = (
                " --stages paper,shadow,small_capital --seed-history" if options["demo"] else ""
            )
            manager.add_process(
                "engines",
                f"{python} {manage} simulate --engines {engines} --url {shlex.quote(base)} "
                f"--wait-for-server{staged}",
                env=env,
                cwd=str(settings.BASE_DIR),
            )
        started = ", ".join(
            ["web"]
            + ([] if options["no_worker"] else ["worker", "beat"])
            + ([f"{engines} simulated engines"] if engines > 0 else [])
        )
        self.stdout.write(f"==> Processes: starting {started}")
        shown_host = "localhost" if host in ("127.0.0.1", "0.0.0.0", "") else host
        self.stdout.write(
            self.style.SUCCESS(f"\n  Open http://{shown_host}:{port}/  (Ctrl+C stops everything)\n")
        )
        manager.loop()
        self.stdout.write("All processes stopped.")
        if manager.returncode not in (0, 130, 143, None):
            raise CommandError(f"a process exited with code {manager.returncode}")

    def _ensure_demo_admin(self) -> None:
        from django.contrib.auth.models import Group

        user_model = get_user_model()
        username = os.environ.get("DEMO_ADMIN_USERNAME", "admin")
        if user_model.objects.filter(username=username).exists():
            self.stdout.write(
                f"Demo admin '{username}' exists (its password was printed on the first run; "
                f"reset it with: python manage.py changepassword {username})."
            )
            return
        given = env_raw("DEMO_ADMIN_PASSWORD")  # or DEMO_ADMIN_PASSWORD_FILE
        password = given or secrets.token_urlsafe(12)
        user = user_model.objects.create_superuser(username=username, password=password, email="")
        user.groups.add(Group.objects.get(name=ADMIN))
        shown = "from DEMO_ADMIN_PASSWORD" if given else password
        self.stdout.write(
            self.style.WARNING(
                f"\n  Demo admin created: username '{username}', password {shown}\n"
                "  (shown once; it is not stored anywhere in clear text)\n"
            )
        )
