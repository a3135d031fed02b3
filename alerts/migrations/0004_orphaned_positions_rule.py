"""A default rule for an engine that stops or goes silent while holding positions
(docs/alerts.md, orphaned positions)."""

from django.db import migrations

NAME = "Orphaned positions"


def create(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.get_or_create(
        name=NAME,
        defaults={
            "metric": "orphaned_exposure",
            "comparator": ">",
            "threshold": 0,
            "hysteresis": 0,
            "pending_s": 0,
            "severity": "critical",
            "action": "notify",
            "description": "An engine that stopped or went silent still holds positions: "
            "nobody manages them.",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0003_reused_ids_rule")]
    operations = [migrations.RunPython(create, remove)]
