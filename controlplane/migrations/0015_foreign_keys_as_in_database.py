"""The models say what the database holds: no foreign keys for the fills' engine, order and
instrument (0005), the orders' engine and instrument (0008), the commands' engine, batch and
issuer (0010), and no index of its own for the fills' engine (0005).

Those migrations dropped the constraints and the index with SQL alone and left the model state
describing them. This records the state only: the database already is this way, so nothing runs
(an AlterField would look the dropped constraints up and find none).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

STATE = [
    migrations.AlterField(
        model_name="command",
        name="batch",
        field=models.ForeignKey(
            blank=True,
            db_constraint=False,
            null=True,
            on_delete=django.db.models.deletion.SET_NULL,
            related_name="commands",
            to="controlplane.commandbatch",
        ),
    ),
    migrations.AlterField(
        model_name="command",
        name="engine",
        field=models.ForeignKey(
            db_constraint=False,
            db_index=False,
            on_delete=django.db.models.deletion.CASCADE,
            related_name="commands",
            to="controlplane.engine",
        ),
    ),
    migrations.AlterField(
        model_name="command",
        name="issued_by",
        field=models.ForeignKey(
            blank=True,
            db_constraint=False,
            null=True,
            on_delete=django.db.models.deletion.SET_NULL,
            to=settings.AUTH_USER_MODEL,
        ),
    ),
    migrations.AlterField(
        model_name="fill",
        name="engine",
        field=models.ForeignKey(
            db_constraint=False,
            db_index=False,
            on_delete=django.db.models.deletion.CASCADE,
            related_name="fills",
            to="controlplane.engine",
        ),
    ),
    migrations.AlterField(
        model_name="fill",
        name="instrument",
        field=models.ForeignKey(
            db_constraint=False,
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
            db_constraint=False,
            db_index=False,
            on_delete=django.db.models.deletion.RESTRICT,
            related_name="fills",
            to="controlplane.order",
        ),
    ),
    migrations.AlterField(
        model_name="order",
        name="engine",
        field=models.ForeignKey(
            db_constraint=False,
            db_index=False,
            on_delete=django.db.models.deletion.CASCADE,
            related_name="orders",
            to="controlplane.engine",
        ),
    ),
    migrations.AlterField(
        model_name="order",
        name="instrument",
        field=models.ForeignKey(
            db_constraint=False,
            db_index=False,
            on_delete=django.db.models.deletion.PROTECT,
            related_name="orders",
            to="controlplane.instrument",
        ),
    ),
]


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0014_engine_state_reason"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.SeparateDatabaseAndState(state_operations=STATE)]
