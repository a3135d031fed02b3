"""A default rule for stage violations: an engine whose stage sends no real orders said hello in
live mode; it was refused and HALTED, and someone must find out why it runs live."""

from django.db import migrations

NAME = "Stage violations"


def create(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.get_or_create(
        name=NAME,
        defaults={
            "metric": "stage_violation",
            "comparator": ">",
            "threshold": 0,
            "hysteresis": 0,
            "pending_s": 0,
            "severity": "critical",
            "action": "notify",
            "description": "An engine said hello in live mode before its stage allows real "
            "orders: refused and HALTED (docs/going-live.md).",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0005_refused_events_rule")]
    operations = [migrations.RunPython(create, remove)]
