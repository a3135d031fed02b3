"""Fewer writes for each order and fill stored: the ingest's hottest path.

Indexes no query reads: fills by order, fills by instrument, orders by instrument. Only Django's
PROTECT check reads them, when an order or an instrument is deleted (rare, and it then scans the
table). Measured on the fill table, each cost every fill about 1.1 us of the database's time, a
fifth of what storing a fill costs it.

The order table's foreign keys go as the fill table's did (0005): each one is a trigger and a
lookup per order row at commit, and together they were a tenth of the database's time in
bench/ingest.py, where one event in ten is an order. The ingest checks the same things once a
batch, under the engine's row lock in the transaction that inserts: the engine row is locked and
the instruments upserted. Deletes go through Django, whose collector applies the models' CASCADE
and PROTECT rules itself. The model state keeps describing the relations (database-only SQL).

A fill's order is RESTRICT instead of PROTECT: an order with fills still cannot be deleted on its
own, but an engine can now be deleted with its orders and fills, which PROTECT refused.
"""

import django.db.models.deletion
from django.db import migrations, models

DROP_ORDER_FOREIGN_KEYS = """
ALTER TABLE controlplane_order
    DROP CONSTRAINT IF EXISTS controlplane_order_engine_id_329f0d9e_fk_controlplane_engine_id,
    DROP CONSTRAINT IF EXISTS controlplane_order_instrument_id_a0727f0b_fk_controlpl;
"""

ADD_ORDER_FOREIGN_KEYS = """
ALTER TABLE controlplane_order
    ADD CONSTRAINT controlplane_order_engine_id_329f0d9e_fk_controlplane_engine_id
        FOREIGN KEY (engine_id) REFERENCES controlplane_engine (id) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT controlplane_order_instrument_id_a0727f0b_fk_controlpl
        FOREIGN KEY (instrument_id) REFERENCES controlplane_instrument (id)
        DEFERRABLE INITIALLY DEFERRED;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0007_engine_counts"),
    ]

    operations = [
        migrations.AlterField(
            model_name="fill",
            name="instrument",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="fills",
                to="controlplane.instrument",
            ),
        ),
        migrations.AlterField(
            model_name="fill",
            name="order",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.RESTRICT,
                related_name="fills",
                to="controlplane.order",
            ),
        ),
        migrations.AlterField(
            model_name="order",
            name="instrument",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="orders",
                to="controlplane.instrument",
            ),
        ),
        migrations.RunSQL(DROP_ORDER_FOREIGN_KEYS, ADD_ORDER_FOREIGN_KEYS),
    ]
