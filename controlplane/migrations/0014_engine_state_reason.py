"""Why an engine says it is in its state (its last state event's reason, for the operators'
pages), and an index to find the latest fleet-wide kill for the banner every page shows."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0013_desired_set_by_right"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="engine",
            name="reported_reason",
            field=models.CharField(blank=True, max_length=1024),
        ),
        migrations.AddField(
            model_name="engine",
            name="reported_reason_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="engine",
            name="reported_reason_state",
            field=models.CharField(
                blank=True,
                choices=[
                    ("ACTIVE", "Active"),
                    ("PAUSED", "Paused"),
                    ("REDUCING", "Reducing"),
                    ("HALTED", "Halted"),
                ],
                max_length=10,
            ),
        ),
        migrations.AddIndex(
            model_name="commandbatch",
            index=models.Index(
                condition=models.Q(("kind", "kill"), ("selector", "all")),
                fields=["-created_at"],
                name="batch_fleet_kill_idx",
            ),
        ),
    ]
