"""Indexes that hold what the going-live gates and comparison read of a period (golive.gates):
the fills, orders, account snapshots and latency samples come from the index alone, as an
engine's rows are spread over as many table pages as there are rows. fill_trip_idx gives the
round trips their fills in order (per instrument, by ts and seq)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0024_instrument_tick_size_and_fx_rates"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="accountsnapshot",
            name="snapshot_engine_ts_idx",
        ),
        migrations.RemoveIndex(
            model_name="fill",
            name="fill_engine_recent_idx",
        ),
        migrations.RemoveIndex(
            model_name="metricsample",
            name="metric_engine_name_ts_idx",
        ),
        migrations.RemoveIndex(
            model_name="order",
            name="order_engine_recent_idx",
        ),
        migrations.AddIndex(
            model_name="accountsnapshot",
            index=models.Index(
                fields=["engine", "ts", "seq"], include=("equity",), name="snapshot_engine_ts_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="fill",
            index=models.Index(
                fields=["engine", "-ts"],
                include=("side", "price", "expected_price", "market_price"),
                name="fill_engine_recent_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="fill",
            index=models.Index(
                fields=["engine", "instrument", "ts", "seq"],
                include=("side", "quantity", "price", "fee"),
                name="fill_trip_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="metricsample",
            index=models.Index(
                fields=["engine", "name", "ts"],
                include=("value",),
                name="metric_engine_name_ts_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="order",
            index=models.Index(
                fields=["engine", "-created_at"],
                include=("status", "filled_quantity"),
                name="order_engine_recent_idx",
            ),
        ),
    ]
