"""Red lines that stop a strategy (docs/going-live.md, "Red lines"), with the shipped defaults:
each rule enabled, demoting to paper."""

from decimal import Decimal

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

REASON = "The default red lines, from the usual go-live practice."
# (kind, threshold, window, label): frozen here, as the code's defaults may change.
DEFAULTS = [
    ("max_drawdown", "15", None, "Maximum drawdown in the stage"),
    ("sharpe", "0", 20, "Live Sharpe ratio over a rolling window"),
    ("divergence", "3", None, "Trading days in a row beyond the divergence threshold"),
    ("critical_errors", "3", 24, "Critical errors the engine logged"),
]


def create(apps, schema_editor):
    red_line_model = apps.get_model("golive", "RedLine")
    change_model = apps.get_model("golive", "RedLineChange")
    audit_model = apps.get_model("controlplane", "AuditEvent")
    for kind, threshold, window, label in DEFAULTS:
        red_line, created = red_line_model.objects.get_or_create(
            kind=kind,
            defaults={
                "threshold": Decimal(threshold),
                "window": window,
                "action": "demote",
                "demote_to": "paper",
                "version": 1,
                "updated_by": "system",
            },
        )
        if not created:
            continue
        changes = {
            "enabled": [None, True],
            "threshold": [None, threshold],
            "window": [None, window],
            "action": [None, "demote"],
            "demote_to": [None, "paper"],
        }
        change_model.objects.create(
            red_line=red_line,
            red_line_label=label,
            version=1,
            change="created",
            changed_by_label="system",
            reason=REASON,
            changes=changes,
        )
        audit_model.objects.create(
            actor="system",
            action="red_line_create",
            target_type="redline",
            target_id=str(red_line.pk),
            target_label=label,
            reason=REASON,
            data={"version": 1, "changes": changes},
        )


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0023_stage_labels"),
        ("golive", "0008_divergence_log"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="RedLine",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("max_drawdown", "Maximum drawdown in the stage"),
                            ("sharpe", "Live Sharpe ratio over a rolling window"),
                            ("divergence", "Trading days in a row beyond the divergence threshold"),
                            ("critical_errors", "Critical errors the engine logged"),
                        ],
                        editable=False,
                        max_length=20,
                        unique=True,
                    ),
                ),
                ("enabled", models.BooleanField(default=True)),
                ("threshold", models.DecimalField(decimal_places=6, max_digits=18)),
                (
                    "window",
                    models.PositiveIntegerField(
                        blank=True,
                        help_text="Trading days or hours, for the rules that take one.",
                        null=True,
                    ),
                ),
                (
                    "action",
                    models.CharField(
                        choices=[
                            ("demote", "pause, then demote to the target stage"),
                            ("pause", "pause only"),
                            ("kill", "kill (flatten, latched)"),
                        ],
                        default="demote",
                        max_length=10,
                    ),
                ),
                (
                    "demote_to",
                    models.CharField(
                        choices=[
                            ("backtest", "Backtest"),
                            ("paper", "Paper"),
                            ("shadow", "Shadow"),
                            ("small_capital", "Small capital"),
                        ],
                        default="paper",
                        help_text="Where a demotion sends the engine (an engine at or below it is only paused).",
                        max_length=16,
                    ),
                ),
                ("version", models.PositiveIntegerField(default=0, editable=False)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("updated_by", models.CharField(blank=True, editable=False, max_length=150)),
            ],
            options={
                "verbose_name": "red line",
                "ordering": ["pk"],
            },
        ),
        migrations.CreateModel(
            name="RedLineChange",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("red_line_label", models.CharField(max_length=200)),
                ("version", models.PositiveIntegerField()),
                ("change", models.CharField(default="changed", max_length=10)),
                ("changed_by_label", models.CharField(max_length=150)),
                ("changed_at", models.DateTimeField(auto_now_add=True)),
                ("reason", models.TextField()),
                ("changes", models.JSONField(default=dict, help_text="{field: [old, new]}")),
                (
                    "changed_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "red_line",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="changes",
                        to="golive.redline",
                    ),
                ),
            ],
            options={
                "ordering": ["-changed_at", "-pk"],
            },
        ),
        migrations.CreateModel(
            name="RedLineEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("kind", models.CharField(max_length=20)),
                ("label", models.CharField(max_length=200)),
                ("at", models.DateTimeField(auto_now_add=True)),
                (
                    "stage",
                    models.CharField(
                        choices=[
                            ("backtest", "Backtest"),
                            ("paper", "Paper"),
                            ("shadow", "Shadow"),
                            ("small_capital", "Small capital"),
                            ("full", "Full production"),
                        ],
                        max_length=16,
                    ),
                ),
                (
                    "action",
                    models.CharField(
                        choices=[
                            ("demote", "pause, then demote to the target stage"),
                            ("pause", "pause only"),
                            ("kill", "kill (flatten, latched)"),
                        ],
                        max_length=10,
                    ),
                ),
                (
                    "to_stage",
                    models.CharField(
                        blank=True,
                        choices=[
                            ("backtest", "Backtest"),
                            ("paper", "Paper"),
                            ("shadow", "Shadow"),
                            ("small_capital", "Small capital"),
                            ("full", "Full production"),
                        ],
                        max_length=16,
                    ),
                ),
                ("value", models.FloatField()),
                ("threshold", models.DecimalField(decimal_places=6, max_digits=18)),
                ("threshold_text", models.CharField(max_length=200)),
                ("window", models.PositiveIntegerField(blank=True, null=True)),
                ("period_start", models.DateTimeField(blank=True, null=True)),
                ("figures", models.JSONField(default=dict)),
                ("message", models.TextField()),
                (
                    "command_id",
                    models.UUIDField(blank=True, help_text="The pause or the kill.", null=True),
                ),
                ("alert_id", models.BigIntegerField(blank=True, null=True)),
                (
                    "engine",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="red_line_events",
                        to="controlplane.engine",
                    ),
                ),
                (
                    "red_line",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="events",
                        to="golive.redline",
                    ),
                ),
                (
                    "stage_change",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="controlplane.stagechange",
                    ),
                ),
            ],
            options={
                "ordering": ["-at", "-pk"],
                "indexes": [models.Index(fields=["engine", "-at"], name="red_line_event_engine")],
            },
        ),
        migrations.CreateModel(
            name="RedLineState",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("crossed", models.BooleanField(default=False)),
                ("period_start", models.DateTimeField(blank=True, null=True)),
                ("value", models.FloatField(blank=True, null=True)),
                ("evaluated_at", models.DateTimeField(blank=True, null=True)),
                (
                    "engine",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="controlplane.engine",
                    ),
                ),
                (
                    "red_line",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="states",
                        to="golive.redline",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("red_line", "engine"), name="red_line_state_unique"
                    )
                ],
            },
        ),
        migrations.RunPython(create, migrations.RunPython.noop),
    ]
