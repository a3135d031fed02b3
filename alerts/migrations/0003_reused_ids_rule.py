"""The rule that raises an alert when an engine reuses a fill_id or client_order_id: the event
is refused (docs/protocol.md), and this rule tells people, naming the id."""

from django.db import migrations

NAME = "Reused ids"


def create(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.get_or_create(
        name=NAME,
        defaults={
            "metric": "reused_ids",
            "comparator": ">",
            "threshold": 0,
            "hysteresis": 0,
            "pending_s": 0,
            "severity": "critical",
            "action": "notify",
            "description": "An engine sent a fill_id or client_order_id it had used for another "
            "fill or order; the event was refused.",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0002_default_rules")]
    operations = [migrations.RunPython(create, remove)]
