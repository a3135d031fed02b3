from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ControlPlaneConfig(AppConfig):
    name = "controlplane"
    verbose_name = "Engines"

    def ready(self) -> None:
        from controlplane import signals

        # Permissions of apps migrated after ours exist only once post_migrate has run.
        post_migrate.connect(signals.sync_roles_after_migrate, dispatch_uid="cp-sync-roles")
