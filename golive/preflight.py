"""Pre-flight checks: what must hold, right now, before an engine takes a step into real orders.

Each check reads what the control plane stores of the engine at this moment; one that cannot be
answered (the engine never reported what it needs) is ``passed=None``, which blocks the step as a
failure does. A step into real money (to small capital or full production) is taken only when
every check passes (docs/going-live.md, "Pre-flight checks").

Each check, when it passes, and where it is read from:

market_data_fresh     the engine's latest ``quote_age_ms`` metric, reported in the last 5
                      minutes, is at most 5,000 ms (metric samples)
broker_connected      its latest ``broker_connected`` metric, reported in the last 5 minutes,
                      is 1 (metric samples)
risk_system_active    it enforces the current revision of the risk limits (its heartbeats)
reconciliation_clean  no position of it differs from what its broker reports (positions)
monitoring_live       an enabled alert rule covers it, and an enabled notification channel
                      delivered a test in the last 7 days (alert rules, notifications)
kill_switch_drilled   a kill drill of it passed in the last 30 days (golive.drills)
clock_in_sync         its last heartbeat, in the last 5 minutes, put its clock within 1,000 ms
                      of the server's (heartbeats)
target_capital_set    a risk manager set its target capital, which its capital ceiling is a
                      share of (the engine)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.urls import reverse

from alerts.evaluation import applies_to
from alerts.models import AlertRule, Notification
from controlplane.models import REAL_MONEY_STAGES, Engine, MetricSample, Position
from golive import drills
from risk.selectors import limits_revision

FRESH = timedelta(minutes=5)
QUOTE_AGE_MAX_MS = 5_000
CLOCK_TOLERANCE_MS = 1_000
TEST_WITHIN = timedelta(days=7)
DRILL_WITHIN = timedelta(days=30)


@dataclass(frozen=True)
class Check:
    key: str
    label: str
    passed: bool | None  # None: not known, which blocks as a failure does
    detail: str  # what was found, or what is missing
    evidence: str | None = None


def needed(to_stage: str | None) -> bool:
    """Whether a step to ``to_stage`` needs the pre-flight checks: a step into real orders."""
    return to_stage in REAL_MONEY_STAGES


def checks(engine: Engine, now: datetime) -> list[Check]:
    page = reverse("dashboard:engine", args=[engine.name])
    return [
        _market_data(engine, now, page),
        _broker(engine, now, page),
        _risk(engine),
        _reconciliation(engine, page),
        _monitoring(engine, now),
        _kill_drill(engine, now),
        _clock(engine, now),
        _target_capital(engine),
    ]


def failures(engine: Engine, now: datetime) -> list[Check]:
    """The checks that do not pass (failed or not known)."""
    return [check for check in checks(engine, now) if check.passed is not True]


def _latest_metric(engine: Engine, name: str, now: datetime) -> MetricSample | None:
    return (
        MetricSample.objects.filter(engine=engine, name=name, ts__gte=now - FRESH)
        .order_by("-ts")
        .first()
    )


def _market_data(engine: Engine, now: datetime, page: str | None) -> Check:
    label = f"Market data fresh (quote age at most {QUOTE_AGE_MAX_MS:,} ms)"
    sample = _latest_metric(engine, "quote_age_ms", now)
    if sample is None:
        detail = "no quote_age_ms metric reported in the last 5 minutes"
        return Check("market_data_fresh", label, None, detail, page)
    passed = sample.value <= QUOTE_AGE_MAX_MS
    return Check("market_data_fresh", label, passed, f"quote age {sample.value:,.0f} ms", page)


def _broker(engine: Engine, now: datetime, page: str | None) -> Check:
    label = "Broker connected (as the engine reports)"
    sample = _latest_metric(engine, "broker_connected", now)
    if sample is None:
        detail = "no broker_connected metric reported in the last 5 minutes"
        return Check("broker_connected", label, None, detail, page)
    passed = sample.value >= 1
    detail = "connected" if passed else "the engine reports its broker disconnected"
    return Check("broker_connected", label, passed, detail, page)


def _risk(engine: Engine) -> Check:
    label = "Risk system active (the current limits enforced)"
    revision = limits_revision()
    enforced = engine.limits_version
    if enforced is None:
        detail = f"the engine reports no limits version; the current revision is {revision}"
        return Check("risk_system_active", label, False, detail, "/risk/")
    passed = enforced == revision
    detail = f"enforces revision {enforced}" + ("" if passed else f"; the current is {revision}")
    return Check("risk_system_active", label, passed, detail, "/risk/")


def _reconciliation(engine: Engine, page: str | None) -> Check:
    label = "Reconciliation clean (no position mismatch)"
    mismatched = Position.objects.filter(engine=engine, mismatch_since__isnull=False).count()
    if mismatched:
        detail = f"{mismatched} position{'s' if mismatched != 1 else ''} differ from the broker's"
        return Check("reconciliation_clean", label, False, detail, page)
    return Check("reconciliation_clean", label, True, "every position matches", page)


def _monitoring(engine: Engine, now: datetime) -> Check:
    label = "Monitoring live (an alert rule, a channel tested in the last 7 days)"
    rules = [rule for rule in AlertRule.objects.filter(enabled=True) if applies_to(rule, engine)]
    tested = (
        Notification.objects.filter(
            event=Notification.Event.TEST,
            status=Notification.Status.SENT,
            sent_at__gte=now - TEST_WITHIN,
            channel__enabled=True,
        )
        .order_by("-sent_at")
        .first()
    )
    missing = []
    if not rules:
        missing.append("no enabled alert rule covers the engine")
    if tested is None:
        missing.append("no enabled channel delivered a test in the last 7 days")
    if missing:
        return Check("monitoring_live", label, False, "; ".join(missing), "/admin/alerts/")
    detail = f"{len(rules)} rule{'s' if len(rules) != 1 else ''}; channel {tested.channel} tested"
    return Check("monitoring_live", label, True, detail, "/admin/alerts/")


def _kill_drill(engine: Engine, now: datetime) -> Check:
    label = "Kill switch drilled (a kill drill passed in the last 30 days)"
    evidence = reverse("dashboard:engine_golive", args=[engine.name]) + "#drills"
    drill = drills.last_passed([engine.pk]).get(engine.pk)
    if drill is None or drill.done_at is None or drill.done_at < now - DRILL_WITHIN:
        return Check(
            "kill_switch_drilled", label, False, "no kill drill passed in 30 days", evidence
        )
    ack = f"acknowledged in {drill.ack_ms:,} ms, " if drill.ack_ms is not None else ""
    detail = f"last on {drill.done_at:%Y-%m-%d}, {ack}done in {drill.done_ms or 0:,} ms"
    return Check("kill_switch_drilled", label, True, detail, evidence)


def _clock(engine: Engine, now: datetime) -> Check:
    label = f"Clock in sync (within {CLOCK_TOLERANCE_MS:,} ms of the server's)"
    if engine.clock_offset_ms is None or not engine.last_seen_at:
        return Check("clock_in_sync", label, None, "no heartbeat recorded its clock yet")
    if engine.last_seen_at < now - FRESH:
        return Check("clock_in_sync", label, None, "no heartbeat in the last 5 minutes")
    offset = engine.clock_offset_ms
    passed = abs(offset) <= CLOCK_TOLERANCE_MS
    return Check("clock_in_sync", label, passed, f"its clock is {offset:+,} ms off the server's")


def _target_capital(engine: Engine) -> Check:
    label = "Target capital set (its capital ceiling is a share of it)"
    page = reverse("dashboard:engine_golive", args=[engine.name]) + "#capital"
    if engine.target_capital is None:
        detail = "no target capital: a risk manager sets it on the go-live page"
        return Check("target_capital_set", label, False, detail, page)
    return Check("target_capital_set", label, True, f"{engine.target_capital:,.2f}", page)
