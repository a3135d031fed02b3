from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("controlplane", "0010_command_fewer_writes")]

    operations = [
        migrations.AddField(
            model_name="engine",
            name="stopped_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
