"""The capital ceiling's limit kind, and its default global limit (docs/risk.md): gross exposure
at most 100 % of an engine's capital ceiling, warnings at 80 and 90 %, a breach pauses."""

from decimal import Decimal

from django.db import migrations, models

REASON = "The default capital ceiling limit: the capital ramp's ceiling checked after trades."
CHANGES = {
    "kind": [None, "capital_ceiling_pct"],
    "scope": [None, "global"],
    "scope_value": [None, ""],
    "threshold": [None, "100"],
    "warning_levels": [None, [80, 90]],
    "action": [None, "pause"],
    "reduce_to_pct": [None, None],
    "enabled": [None, True],
    "description": [None, "Gross exposure within the capital ramp's ceiling"],
}


def create(apps, schema_editor):
    limit_model = apps.get_model("risk", "RiskLimit")
    change_model = apps.get_model("risk", "RiskLimitChange")
    audit_model = apps.get_model("controlplane", "AuditEvent")
    if limit_model.objects.filter(kind="capital_ceiling_pct").exists():
        return
    limit = limit_model.objects.create(
        kind="capital_ceiling_pct",
        scope="global",
        threshold=Decimal(100),
        warning_levels=[80, 90],
        action="pause",
        enabled=True,
        description=CHANGES["description"][1],
        version=1,
        updated_by="system",
    )
    label = f"#{limit.pk} capital_ceiling_pct 100 (all engines)"
    change_model.objects.create(
        limit=limit,
        limit_label=label,
        version=1,
        change="created",
        changed_by_label="system",
        reason=REASON,
        changes=CHANGES,
    )
    audit_model.objects.create(
        actor="system",
        action="risk_limit_create",
        target_type="risklimit",
        target_id=str(limit.pk),
        target_label=label,
        reason=REASON,
        data={"version": 1, "changes": CHANGES},
    )


class Migration(migrations.Migration):
    dependencies = [
        ("risk", "0001_risk_limits"),
        ("controlplane", "0019_engine_capital"),
    ]

    operations = [
        migrations.AlterField(
            model_name="risklimit",
            name="kind",
            field=models.CharField(
                choices=[
                    ("max_order_qty", "Max order quantity"),
                    ("max_order_notional", "Max order notional"),
                    ("price_collar_pct", "Price collar (% from last price)"),
                    ("max_order_rate", "Max orders per second"),
                    ("duplicate_order", "Duplicate order window (s)"),
                    ("max_position_pct", "Max position (% of equity)"),
                    ("max_sector_pct", "Max sector exposure (% of equity)"),
                    ("max_gross_exposure_pct", "Max gross exposure (% of equity)"),
                    ("max_daily_loss_pct", "Max daily loss (% of session start equity)"),
                    ("max_daily_loss", "Max daily loss (absolute)"),
                    ("max_drawdown_pct", "Max drawdown from high-water mark (%)"),
                    ("max_trades_per_day", "Max trades per day"),
                    ("max_rejection_rate_pct", "Max rejection rate (%)"),
                    ("capital_ceiling_pct", "Gross exposure (% of the engine's capital ceiling)"),
                ],
                max_length=32,
            ),
        ),
        migrations.RunPython(create, migrations.RunPython.noop),
    ]
