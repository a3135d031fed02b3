"""Every periodic task, in one place, written to django_celery_beat's tables after each migrate.

Each entry: the task's dotted name, its schedule (seconds between runs, or a crontab in UTC) and
``expires`` (seconds): a run that waited longer than that in the queue is dropped, so a worker
that was down does not run a backlog of them at once.
"""

from __future__ import annotations

from typing import Any, TypedDict

from celery.schedules import crontab
from django.db import transaction


class PeriodicTaskSpec(TypedDict):
    task: str
    schedule: float | crontab
    expires: int


PERIODIC_TASKS: dict[str, PeriodicTaskSpec] = {
    # Beat's own heartbeat: a task that does nothing, so that its last run (in /metrics) says
    # beat, the broker and a worker were all alive then (docs/operations.md, metrics).
    "beat: heartbeat": {
        "task": "controlplane.tasks.heartbeat",
        "schedule": 15.0,
        "expires": 15,
    },
    "event log: create the coming days' partitions": {
        "task": "controlplane.tasks.ensure_event_partitions",
        "schedule": crontab(minute="15", hour="*/6"),
        "expires": 3 * 3600,
    },
    "event log: drop days past the retention": {
        "task": "controlplane.tasks.drop_old_event_partitions",
        "schedule": crontab(minute="30", hour="3"),
        "expires": 12 * 3600,
    },
    "samples, logs, snapshots: archive and drop days past the retention": {
        "task": "controlplane.tasks.archive_old_days",
        "schedule": crontab(minute="45", hour="3"),
        "expires": 12 * 3600,
    },
    "alerts: time-based rules, repeats and escalations": {
        "task": "alerts.sweep",
        "schedule": 5.0,
        "expires": 5,
    },
    "commands: expire undelivered commands past their expiry": {
        "task": "controlplane.tasks.expire_commands",
        "schedule": 30.0,
        "expires": 30,
    },
    "engines: end timed pauses whose time has passed": {
        "task": "controlplane.tasks.end_timed_pauses",
        "schedule": 5.0,
        "expires": 5,
    },
    "alerts: resend notifications a lost task or a killed worker left behind": {
        "task": "alerts.resend_stuck_notifications",
        "schedule": 15.0,
        "expires": 15,
    },
    "going live: the capital ramp's steps of small-capital engines": {
        "task": "golive.tasks.capital_ramp",
        "schedule": crontab(minute="10"),
        "expires": 3600,
    },
    "risk: portfolio limits (correlation, portfolio drawdown and daily loss, value at risk)": {
        "task": "risk.tasks.portfolio_limits",
        "schedule": 60.0,
        "expires": 60,
    },
    "going live: yesterday in each engine's divergence log": {
        "task": "golive.tasks.divergence_log",
        "schedule": crontab(minute="20", hour="0"),
        "expires": 3600,
    },
    "going live: red lines that stop a strategy": {
        "task": "golive.tasks.red_lines",
        "schedule": 60.0,
        "expires": 60,
    },
    "journal: tick the open incidents' checklists from the data": {
        "task": "journal.tasks.incident_checklists",
        "schedule": 30.0,
        "expires": 30,
    },
}

# The dotted names of the scheduled tasks: the ones whose last run is recorded.
SCHEDULED_TASKS = frozenset(spec["task"] for spec in PERIODIC_TASKS.values())


def _schedule_fields(schedule: float | crontab) -> dict[str, Any]:
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule

    if isinstance(schedule, crontab):
        row = CrontabSchedule.from_schedule(schedule)
        if row.pk is None:
            row.save()
        return {"crontab": row, "interval": None}
    interval, _ = IntervalSchedule.objects.get_or_create(
        every=int(schedule), period=IntervalSchedule.SECONDS
    )
    return {"interval": interval, "crontab": None}


def sync_periodic_tasks() -> list[str]:
    """Create or update the PeriodicTask row of every entry; returns the names written.

    Task, schedule and expiry follow the code; whether a task is enabled is left to whoever
    manages the rows in the admin.
    """
    from django_celery_beat.models import PeriodicTask

    written = []
    with transaction.atomic():
        for name, spec in PERIODIC_TASKS.items():
            fields = {
                "task": spec["task"],
                "expire_seconds": spec["expires"],
                "expires": None,
                "clocked": None,
                "solar": None,
                "one_off": False,
                **_schedule_fields(spec["schedule"]),
            }
            task = PeriodicTask.objects.filter(name=name).first() or PeriodicTask(name=name)
            if task.pk is not None and all(
                getattr(task, key) == value for key, value in fields.items()
            ):
                continue
            for key, value in fields.items():
                setattr(task, key, value)
            task.save()
            written.append(name)
    return written
