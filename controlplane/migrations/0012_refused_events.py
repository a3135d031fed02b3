"""Refused events: an event the database would not store is refused alone, and recorded.

The event log (controlplane_eventframe) takes a row for each refused event, its reason in the new
``refused`` column (NULL for the rows of stored batches): the event as it arrived is kept, as
evidence, beside the events stored. The per-event view shows stored events only, as before. The
engine row counts the refusals (``refused_events``) for the fleet view and /metrics; the alert
rule ``refused_events`` counts the last 15 minutes' rows.
"""

from django.db import migrations, models

FORWARD = """
ALTER TABLE controlplane_eventframe ADD COLUMN refused text;
CREATE OR REPLACE VIEW controlplane_engineevent AS
SELECT f.engine_id, (e.event ->> 'seq')::bigint AS seq, (e.event ->> 'kind')::varchar(16) AS kind,
       (e.event ->> 'ts')::timestamptz AS ts, f.received_at, e.event AS payload
FROM controlplane_eventframe f CROSS JOIN LATERAL json_array_elements(f.events) AS e(event)
WHERE f.refused IS NULL;
-- The alert rule counts an engine's recent refusals; the other rows cost this index nothing.
CREATE INDEX eventframe_refused_idx ON controlplane_eventframe (engine_id, received_at)
    WHERE refused IS NOT NULL;
"""

BACKWARD = """
DROP INDEX eventframe_refused_idx;
CREATE OR REPLACE VIEW controlplane_engineevent AS
SELECT f.engine_id, (e.event ->> 'seq')::bigint AS seq, (e.event ->> 'kind')::varchar(16) AS kind,
       (e.event ->> 'ts')::timestamptz AS ts, f.received_at, e.event AS payload
FROM controlplane_eventframe f CROSS JOIN LATERAL json_array_elements(f.events) AS e(event);
DELETE FROM controlplane_eventframe WHERE refused IS NOT NULL;
ALTER TABLE controlplane_eventframe DROP COLUMN refused;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0011_engine_stopped_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="engine",
            name="refused_events",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
