"""A default rule for what an engine cannot enforce (docs/protocol.md, "Capabilities"): a command
of a kind it said it does not handle is failed rather than sent, and pre-trade limits of kinds it
cannot enforce are flagged; this alert tells the desk, who would otherwise believe them in
force."""

from django.db import migrations

NAME = "Cannot enforce"


def create(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.get_or_create(
        name=NAME,
        defaults={
            "metric": "capability_missing",
            "comparator": ">",
            "threshold": 0,
            "hysteresis": 0,
            "pending_s": 0,
            "severity": "warning",
            "action": "notify",
            "description": "An engine was sent a command or limit it said in its hello it "
            "cannot enforce: the command failed unsent, or the limit is not in force there.",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0010_red_line_rule")]
    operations = [migrations.RunPython(create, remove)]
