from __future__ import annotations

from django.apps import AppConfig


class GoLiveConfig(AppConfig):
    name = "golive"
    verbose_name = "Going live"
