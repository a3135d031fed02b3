from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import task_success

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.config.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_success.connect
def _record_periodic_run(sender: Any = None, **kwargs: Any) -> None:
    # Only the scheduled tasks: their last runs are the sweeps' heartbeats in /metrics. Imported
    # here, not at the top: Django's settings are not loaded when this module is.
    from controlplane import heartbeats
    from controlplane.config.schedules import SCHEDULED_TASKS

    name = getattr(sender, "name", None)
    if name in SCHEDULED_TASKS:
        heartbeats.task_ran(name)
