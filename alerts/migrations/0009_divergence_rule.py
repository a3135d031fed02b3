"""A default rule for the divergence log (docs/going-live.md): a day of an engine beyond its
threshold against the baseline raises a warning, resolved by a day within it."""

from django.db import migrations

NAME = "Divergence from the baseline"


def create(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.get_or_create(
        name=NAME,
        defaults={
            "metric": "divergence_day",
            "comparator": ">",
            "threshold": 0,
            "hysteresis": 0,
            "pending_s": 0,
            "severity": "warning",
            "action": "notify",
            "description": "A trading day of an engine's divergence log more than "
            "DIVERGENCE_LOG_ALERT_PCT apart from its baseline (docs/going-live.md): say what was "
            "found beside it.",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0008_statement_rule")]
    operations = [migrations.RunPython(create, remove)]
