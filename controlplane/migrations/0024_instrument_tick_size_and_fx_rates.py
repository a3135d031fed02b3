"""Instrument metadata from the engines (docs/protocol.md, "Instruments and FX rates"): an
instrument's tick size and who described it, an engine's account currency and latest FX rates.

Rows a person already completed in the admin (anything but the bare defaults) count as described
by a person, so that no engine's declaration overwrites them."""

from django.db import migrations, models

MARK_DESCRIBED = """
    UPDATE controlplane_instrument SET described_by = 'user (before declarations)'
    WHERE sector <> '' OR multiplier <> 1 OR currency <> 'USD' OR asset_class <> 'equity'
"""


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0023_stage_labels"),
    ]

    operations = [
        migrations.AddField(
            model_name="engine",
            name="account_currency",
            field=models.CharField(blank=True, default="", max_length=16),
        ),
        migrations.AddField(
            model_name="engine",
            name="fx_rates",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="instrument",
            name="described_by",
            field=models.CharField(blank=True, default="", max_length=160),
        ),
        migrations.AddField(
            model_name="instrument",
            name="tick_size",
            field=models.DecimalField(blank=True, decimal_places=10, max_digits=20, null=True),
        ),
        migrations.RunSQL(MARK_DESCRIBED, migrations.RunSQL.noop),
    ]
