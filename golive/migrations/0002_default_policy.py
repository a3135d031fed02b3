"""The default promotion policy (docs/going-live.md): each step's criteria and thresholds."""

from decimal import Decimal

from django.db import migrations

REASON = "The default promotion policy, from the usual go-live practice."
# (from stage, key, threshold, upper bound): frozen here, as the code's defaults may change.
DEFAULTS = [
    ("backtest", "baseline_sharpe", "1", None),
    ("backtest", "baseline_max_drawdown_pct", "15", None),
    ("backtest", "baseline_profit_factor", "1.3", None),
    ("backtest", "baseline_history_days", "365", None),
    ("paper", "min_days", "14", None),
    ("paper", "min_round_trips", "30", None),
    ("paper", "return_vs_baseline_pct", "10", None),
    ("paper", "win_rate_vs_baseline_pp", "5", None),
    ("paper", "trade_count_ratio", "0.8", "1.25"),
    ("paper", "rejection_rate_pct", "1", None),
    ("paper", "error_logs", "0", None),
    ("paper", "disconnects_recovered", "1", None),
    ("shadow", "min_days", "7", None),
    ("shadow", "slippage_bps", "5", None),
    ("shadow", "unexplained_critical_alerts", "0", None),
    ("small_capital", "min_days", "28", None),
    ("small_capital", "sharpe_vs_paper_pct", "30", None),
    ("small_capital", "kill_drill_days", "30", None),
    ("small_capital", "post_trade_limit_kinds_missing", "0", None),
]


def create(apps, schema_editor):
    criterion_model = apps.get_model("golive", "PromotionCriterion")
    change_model = apps.get_model("golive", "PromotionCriterionChange")
    audit_model = apps.get_model("controlplane", "AuditEvent")
    for from_stage, key, threshold, high in DEFAULTS:
        criterion, created = criterion_model.objects.get_or_create(
            from_stage=from_stage,
            key=key,
            defaults={
                "threshold": Decimal(threshold),
                "threshold_high": Decimal(high) if high is not None else None,
                "version": 1,
                "updated_by": "system",
            },
        )
        if not created:
            continue
        changes = {"enabled": [None, True], "threshold": [None, threshold]}
        if high is not None:
            changes["threshold_high"] = [None, high]
        label = f"{from_stage}: {key}"
        change_model.objects.create(
            criterion=criterion,
            criterion_label=label,
            version=1,
            change="created",
            changed_by_label="system",
            reason=REASON,
            changes=changes,
        )
        audit_model.objects.create(
            actor="system",
            action="promotion_criterion_create",
            target_type="promotioncriterion",
            target_id=str(criterion.pk),
            target_label=label,
            reason=REASON,
            data={"version": 1, "changes": changes},
        )


class Migration(migrations.Migration):
    dependencies = [
        ("golive", "0001_promotion_policy"),
        ("controlplane", "0016_engine_stage"),
    ]

    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
