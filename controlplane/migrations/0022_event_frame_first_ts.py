"""The event log's frames keep their first event's time beside when they arrived, and an index
that answers the go-live gate's recovery count from the index alone (golive.gates._event_log):
reading each frame's JSON for it cost half of a fleet's gate recompute (bench/golive.py)."""

from django.db import migrations

FORWARD = """
ALTER TABLE controlplane_eventframe ADD COLUMN first_ts timestamptz;
CREATE INDEX eventframe_engine_received_idx ON controlplane_eventframe
    (engine_id, received_at) INCLUDE (first_seq, last_seq, refused, first_ts);
"""
BACKWARD = """
DROP INDEX IF EXISTS eventframe_engine_received_idx;
ALTER TABLE controlplane_eventframe DROP COLUMN first_ts;
"""


class Migration(migrations.Migration):
    dependencies = [("controlplane", "0021_fill_market_price")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
