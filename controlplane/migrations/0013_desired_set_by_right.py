"""The right that set (or holds) an engine's desired state: a resume needs it too."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("controlplane", "0012_refused_events")]

    operations = [
        migrations.AddField(
            model_name="engine",
            name="desired_set_by_right",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
    ]
