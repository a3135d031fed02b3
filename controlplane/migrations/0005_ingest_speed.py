"""The fill table without foreign-key triggers or a redundant index: the ingest's hottest write.

A foreign key costs PostgreSQL one trigger and one lookup per inserted row, checked at commit:
three of them made up over half of the database time of storing a fill. The ingest checks the
same things set-based, once a batch, in the transaction that inserts (controlplane.ingest): the
engine row is locked, the instruments are upserted, and a fill whose order this engine never
reported is refused with an error. Deletes go through Django, whose collector applies the
models' CASCADE and PROTECT rules itself.

The single-column engine index duplicates the leading column of two others
(fill_unique_id and fill_engine_recent_idx); every insert paid for it.

The model state is left as it is (this is database-only), so the fields keep describing the
relations; altering them later makes Django look the constraint names up, and it finds none.
"""

from django.db import migrations

FORWARD = """
ALTER TABLE controlplane_fill
    DROP CONSTRAINT IF EXISTS controlplane_fill_engine_id_6baa0d4f_fk_controlplane_engine_id,
    DROP CONSTRAINT IF EXISTS controlplane_fill_order_id_ecedc7d2_fk_controlplane_order_id,
    DROP CONSTRAINT IF EXISTS controlplane_fill_instrument_id_cbee614f_fk_controlpl;
DROP INDEX IF EXISTS controlplane_fill_engine_id_6baa0d4f;
"""

BACKWARD = """
CREATE INDEX IF NOT EXISTS controlplane_fill_engine_id_6baa0d4f ON controlplane_fill (engine_id);
ALTER TABLE controlplane_fill
    ADD CONSTRAINT controlplane_fill_engine_id_6baa0d4f_fk_controlplane_engine_id
        FOREIGN KEY (engine_id) REFERENCES controlplane_engine (id) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT controlplane_fill_order_id_ecedc7d2_fk_controlplane_order_id
        FOREIGN KEY (order_id) REFERENCES controlplane_order (id) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT controlplane_fill_instrument_id_cbee614f_fk_controlpl
        FOREIGN KEY (instrument_id) REFERENCES controlplane_instrument (id)
        DEFERRABLE INITIALLY DEFERRED;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0004_commands_guards"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
