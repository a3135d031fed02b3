"""Reads of the alerts app that pages and the admin share."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from alerts.models import AlertRule
from alerts.rule_metrics import RISK_LIMIT_METRIC


def rules_with_channel_counts() -> QuerySet[AlertRule]:
    """Every rule with ``channel_count``: its enabled notification channels (escalation ones
    apart: they are only told when nobody acknowledges)."""
    return AlertRule.objects.annotate(
        channel_count=Count("channels", filter=Q(channels__enabled=True), distinct=True)
    )


def rules_without_channel() -> list[AlertRule]:
    """Enabled rules whose alerts notify nobody: no enabled channel."""
    return list(rules_with_channel_counts().filter(enabled=True, channel_count=0).order_by("name"))


def risk_limit_channel_count() -> int:
    """The enabled channels risk-limit warnings and breaches reach: those of the enabled
    risk-limit rule (docs/risk.md). 0: they show in the app and notify nobody."""
    rule = rules_with_channel_counts().filter(metric=RISK_LIMIT_METRIC, enabled=True).first()
    return rule.channel_count if rule is not None else 0  # type: ignore[attr-defined]
