"""The rules a new installation starts with. Channels are added per site; until a rule has one,
its alerts show in the app (toast, badge, alerts page) and notify nobody."""

from django.db import migrations

DEFAULT_RULES = [
    # name, metric, comparator, threshold, hysteresis, pending_s, severity, action, description
    (
        "Engine down",
        "heartbeat_age_s",
        ">",
        15,
        5,
        0,
        "critical",
        "notify",
        "Nothing heard from the engine for 15 s.",
    ),
    (
        "Daily loss",
        "daily_pnl_pct",
        "<",
        -3,
        0.5,
        0,
        "critical",
        "notify",
        "Day P&L below -3 % of the session start equity.",
    ),
    (
        "Drawdown",
        "drawdown_pct",
        ">",
        10,
        1,
        0,
        "warning",
        "notify",
        "More than 10 % below the equity high-water mark.",
    ),
    (
        "Error burst",
        "error_count",
        ">",
        5,
        1,
        0,
        "warning",
        "notify",
        "More than 5 errors logged in 5 minutes.",
    ),
    (
        "Rejections",
        "rejection_rate_pct",
        ">",
        20,
        5,
        30,
        "warning",
        "notify",
        "More than 20 % of the last 15 minutes' orders rejected.",
    ),
    (
        "Slippage",
        "slippage_bps",
        ">",
        25,
        5,
        60,
        "warning",
        "notify",
        "Fills slip more than 25 bps on average over 15 minutes.",
    ),
    (
        "Stale quotes",
        "quote_age_ms",
        ">",
        2000,
        500,
        10,
        "warning",
        "notify",
        "The engine's newest quote is more than 2 s old.",
    ),
    (
        "Position mismatch",
        "position_mismatch_s",
        ">",
        60,
        0,
        0,
        "critical",
        "notify",
        "Ledger and broker positions have disagreed for over a minute.",
    ),
    (
        "Risk limits",
        "risk_limit",
        ">",
        0,
        0,
        0,
        "critical",
        "notify",
        "Warnings and breaches of the risk limits (docs/risk.md) go to this rule's channels.",
    ),
]


def create(apps, schema_editor):
    rule = apps.get_model("alerts", "AlertRule")
    for (
        name,
        metric,
        comparator,
        threshold,
        hysteresis,
        pending_s,
        severity,
        action,
        text,
    ) in DEFAULT_RULES:
        rule.objects.get_or_create(
            name=name,
            defaults={
                "metric": metric,
                "comparator": comparator,
                "threshold": threshold,
                "hysteresis": hysteresis,
                "pending_s": pending_s,
                "severity": severity,
                "action": action,
                "description": text,
            },
        )


def remove(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(
        name__in=[r[0] for r in DEFAULT_RULES]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_alerts")]
    operations = [migrations.RunPython(create, remove)]
