"""A default rule on refused events: an event the control plane could not store was refused (and
kept in the event log with its reason); someone should look at the engine that sent it."""

from django.db import migrations

NAME = "Refused events"


def create(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.get_or_create(
        name=NAME,
        defaults={
            "metric": "refused_events",
            "comparator": ">",
            "threshold": 0,
            "hysteresis": 0,
            "pending_s": 0,
            "severity": "warning",
            "action": "notify",
            "description": "The control plane refused to store an event of the engine in the "
            "last 15 minutes (the event log keeps it, with the reason).",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    # The rule is data of this app only (its metric is named by a string): no dependency on the
    # engine columns that count refusals, so unapplying those never has to delete the rule.
    dependencies = [("alerts", "0004_orphaned_positions_rule")]
    operations = [migrations.RunPython(create, remove)]
