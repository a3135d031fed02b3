from __future__ import annotations

from django.apps import AppConfig


class GoLiveConfig(AppConfig):
    name = "golive"
    verbose_name = "Going live"

    def ready(self) -> None:
        from controlplane import events
        from golive import drills

        # The engines' answers to a drill's commands: its latencies, its release, its outcome.
        events.command_answered.connect(drills.on_command_answered, dispatch_uid="golive-drills")
