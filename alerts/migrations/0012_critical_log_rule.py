"""A default rule for an engine's critical log line: what an engine or its bridge writes for a
person to see at once (the Freqtrade bridge finding its bot trading again while killed,
docs/adapters.md). The Error burst rule waits for more than five error lines; this one pages at
the first critical line."""

from django.db import migrations

NAME = "Critical log line"


def create(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.get_or_create(
        name=NAME,
        defaults={
            "metric": "critical_count",
            "comparator": ">",
            "threshold": 0,
            "hysteresis": 0,
            "pending_s": 0,
            "severity": "critical",
            "action": "notify",
            "description": "The engine logged a line at critical level in the last 5 minutes.",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0011_capability_rule")]
    operations = [migrations.RunPython(create, remove)]
