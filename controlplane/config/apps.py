from __future__ import annotations

from typing import Any

from django.apps import AppConfig, apps
from django.db import connections
from django.db.models.signals import post_migrate

from controlplane.config.schedules import sync_periodic_tasks


class WiringConfig(AppConfig):
    """The composition root as an app: wiring that runs once every app is loaded.

    Listed last in INSTALLED_APPS; it has no models.
    """

    name = "controlplane.config"
    label = "wiring"
    verbose_name = "Wiring"

    def ready(self) -> None:
        post_migrate.connect(
            sync_periodic_tasks_after_migrate,
            sender=apps.get_app_config("controlplane"),
            dispatch_uid="cp-sync-schedules",
        )


def sync_periodic_tasks_after_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    # A partial migrate (say, back to an old migration) may leave the scheduler's tables out.
    if "django_celery_beat_periodictask" in connections[using].introspection.table_names():
        sync_periodic_tasks()
