"""A default rule for broker statements that differ from the ledger (docs/broker-statements.md):
a critical alert per engine and statement day, resolved by a statement of that day that matches."""

from django.db import migrations

NAME = "Broker statement differences"


def create(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.get_or_create(
        name=NAME,
        defaults={
            "metric": "statement_difference",
            "comparator": ">",
            "threshold": 0,
            "hysteresis": 0,
            "pending_s": 0,
            "severity": "critical",
            "action": "notify",
            "description": "A broker statement differs from the fill ledger: a trade or fill "
            "missing on one side, a price, quantity, fee or end-of-day position that differs "
            "(docs/broker-statements.md).",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0007_alert_explanation")]
    operations = [migrations.RunPython(create, remove)]
