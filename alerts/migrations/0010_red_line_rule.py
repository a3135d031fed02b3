"""A default rule for the red lines (docs/going-live.md, "Red lines"): an engine that crosses one
is paused and demoted (or killed), and this critical alert tells the desk at once."""

from django.db import migrations

NAME = "Red lines"


def create(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.get_or_create(
        name=NAME,
        defaults={
            "metric": "red_line",
            "comparator": ">",
            "threshold": 0,
            "hysteresis": 0,
            "pending_s": 0,
            "severity": "critical",
            "action": "notify",
            "description": "An engine crossed a red line (docs/going-live.md): it was paused "
            "and demoted, or killed, as the red line says.",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0009_divergence_rule")]
    operations = [migrations.RunPython(create, remove)]
