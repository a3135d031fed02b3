"""The weekly report's beat schedule: Monday 07:00 in REPORT_TIMEZONE.

Created once and then left to the admin: a later migrate does not overwrite an edited schedule
(which is why it is not in controlplane.config.schedules, whose entries follow the code on every
migrate).
"""

from __future__ import annotations

import json
import zoneinfo

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import migrations
from django.utils import timezone

NAME = "reports: weekly performance report by e-mail"
TASK = "dashboard.tasks.send_weekly_reports"


def create_schedule(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    if PeriodicTask.objects.filter(name=NAME).exists():
        return
    tz = settings.REPORT_TIMEZONE
    if tz not in zoneinfo.available_timezones():
        raise ImproperlyConfigured(f"REPORT_TIMEZONE={tz!r} is not an IANA timezone name.")
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="0",
        hour="7",
        day_of_week="1",
        day_of_month="*",
        month_of_year="*",
        timezone=zoneinfo.ZoneInfo(tz),
    )
    PeriodicTask.objects.create(
        name=NAME,
        task=TASK,
        crontab=crontab,
        kwargs=json.dumps({}),
        expire_seconds=6 * 3600,  # a run that waited that long is dropped; the next Monday's is not
        description="The previous ISO week's report to every user who asked for it (profile).",
    )
    # Tell a running beat that its schedule changed.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0001_reports"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
