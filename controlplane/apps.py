from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ControlPlaneConfig(AppConfig):
    name = "controlplane"
    verbose_name = "Engines"

    def ready(self) -> None:
        # The login audit's receivers connect as the module loads (@receiver).
        from controlplane import login, partitions, roles  # noqa: F401

        post_migrate.connect(roles.sync_roles_after_migrate, dispatch_uid="cp-sync-roles")
        post_migrate.connect(
            partitions.ensure_partitions_after_migrate,
            sender=self,
            dispatch_uid="cp-ensure-partitions",
        )
