"""Red lines (golive.redlines): each figure from hand-built snapshots, logs and divergence days
against the value worked out by hand; the action taken once per crossing; who may change the
rules, and the refusal of bad numbers naming the field; the API."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from alerts.models import Alert, AlertRule
from controlplane.models import (
    AccountSnapshot,
    AuditEvent,
    Command,
    Engine,
    EngineLog,
    StageChange,
)
from golive import redlines, services
from golive.models import DivergenceDay, RedLine, RedLineEvent, RedLineState
from golive.redline_specs import CRITICAL_ERRORS, DIVERGENCE, MAX_DRAWDOWN, SHARPE

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)  # a Wednesday
STAGE_BEGAN = datetime(2026, 11, 20, 9, tzinfo=UTC)  # a Friday


def rule(kind: str) -> RedLine:
    return RedLine.objects.get(kind=kind)


def only(kind: str, **fields) -> RedLine:
    """Leave only ``kind`` enabled, with ``fields`` set (as a risk manager would, by the row)."""
    RedLine.objects.exclude(kind=kind).update(enabled=False)
    RedLine.objects.filter(kind=kind).update(enabled=True, **fields)
    return rule(kind)


@pytest.fixture
def shadow(make_engine) -> Engine:
    engine, _ = make_engine("shady", stage="shadow")
    StageChange.objects.filter(engine=engine, to_stage="shadow").update(at=STAGE_BEGAN)
    return engine


def snapshot(engine: Engine, ts: datetime, equity: str, seq: int) -> None:
    AccountSnapshot.objects.create(engine=engine, ts=ts, equity=Decimal(equity), cash=0, seq=seq)


def red_lines_rule() -> AlertRule:
    # The rule alerts/0010 ships (a transactional test before this one may have flushed it).
    found, _ = AlertRule.objects.get_or_create(
        name="Red lines", defaults={"metric": "red_line", "severity": "critical", "threshold": 0}
    )
    return found


def test_the_shipped_defaults():
    rows = {r.kind: r for r in RedLine.objects.all()}
    assert set(rows) == {MAX_DRAWDOWN, SHARPE, DIVERGENCE, CRITICAL_ERRORS}
    assert rows[MAX_DRAWDOWN].threshold_text == "above 15%"
    assert rows[SHARPE].threshold_text == "below 0 over 20 trading days"
    assert rows[DIVERGENCE].threshold_text == "at least 3 days"
    assert rows[CRITICAL_ERRORS].threshold_text == "at least 3 errors over 24 hours"
    assert all(r.enabled and r.action == "demote" and r.demote_to == "paper" for r in rows.values())
    assert all(r.changes.count() == 1 for r in rows.values())
    red = AlertRule.objects.get(name="Red lines")
    assert red.metric == "red_line" and red.severity == "critical"


# --- the figures -------------------------------------------------------------------------------


def test_max_drawdown_is_the_worst_fall_from_the_running_peak_in_the_stage(shadow):
    # Before the stage: a higher peak that must not count.
    snapshot(shadow, STAGE_BEGAN - timedelta(days=1), "200000", 1)
    for n, (hours, equity) in enumerate(((1, "100000"), (30, "120000"), (60, "100800"))):
        snapshot(shadow, STAGE_BEGAN + timedelta(hours=hours), equity, n + 2)
    snapshot(shadow, STAGE_BEGAN + timedelta(hours=90), "110000", 9)
    figure = redlines.max_drawdown(shadow, rule(MAX_DRAWDOWN), STAGE_BEGAN, NOW)
    # (120,000 - 100,800) / 120,000 = 16 %.
    assert figure.value == pytest.approx(16.0)
    assert Decimal(figure.data["peak"]) == Decimal("120000")
    assert Decimal(figure.data["trough"]) == Decimal("100800")


def test_max_drawdown_within_the_line_and_unknown_without_equity(shadow):
    assert redlines.max_drawdown(shadow, rule(MAX_DRAWDOWN), STAGE_BEGAN, NOW).value is None
    snapshot(shadow, STAGE_BEGAN + timedelta(hours=1), "120000", 1)
    snapshot(shadow, STAGE_BEGAN + timedelta(hours=2), "102100", 2)
    figure = redlines.max_drawdown(shadow, rule(MAX_DRAWDOWN), STAGE_BEGAN, NOW)
    # 17,900 / 120,000 = 14.9166... %: within 15 %.
    assert figure.value == pytest.approx(14.916666, abs=1e-5)
    only(MAX_DRAWDOWN)
    assert redlines.evaluate(NOW) == []


def sharpe_days(engine: Engine) -> None:
    # Friday's close, then Monday +1 %, Tuesday -1 %, Wednesday (so far) -1 %.
    days = (
        (datetime(2026, 11, 27, 20, tzinfo=UTC), "100000"),
        (datetime(2026, 11, 30, 20, tzinfo=UTC), "101000"),
        (datetime(2026, 12, 1, 20, tzinfo=UTC), "99990"),
        (datetime(2026, 12, 2, 10, tzinfo=UTC), "98990.1"),
    )
    for n, (ts, equity) in enumerate(days):
        snapshot(engine, ts, equity, n + 1)


def test_sharpe_over_the_rolling_window_of_trading_days(shadow):
    sharpe_days(shadow)
    line = only(SHARPE, window=3)
    figure = redlines.sharpe(shadow, line, STAGE_BEGAN, NOW)
    # Returns +0.01, -0.01, -0.01: mean -1/300, sample deviation 0.02/sqrt(3);
    # -(1/300) / (0.02/sqrt(3)) * sqrt(252) = -sqrt(756)/6 = -4.5826.
    assert figure.value == pytest.approx(-math.sqrt(756) / 6)
    assert figure.value == pytest.approx(-4.5826, abs=1e-4)
    assert figure.window == "3 trading days from 2026-11-30"
    assert figure.data["opening_equity"] is not None
    assert [day for day, _ in figure.data["closes"]] == ["2026-11-30", "2026-12-01", "2026-12-02"]


def test_sharpe_is_not_known_before_the_whole_window_lies_in_the_stage(shadow):
    sharpe_days(shadow)
    line = only(SHARPE, window=3)
    began = datetime(2026, 12, 1, tzinfo=UTC)
    assert redlines.sharpe(shadow, line, began, NOW).value is None
    # The default window: 20 weekdays back from Wednesday 2 December is Thursday 5 November.
    assert redlines.trading_days_back(date(2026, 12, 2), 20) == date(2026, 11, 5)
    assert redlines.trading_days_back(date(2026, 12, 6), 1) == date(2026, 12, 4)  # a Sunday


def diverging(engine: Engine, days: dict[date, float], stage: str = "shadow") -> None:
    for day, pct in days.items():
        DivergenceDay.objects.create(engine=engine, day=day, stage=stage, divergence_pct=pct)


def test_divergence_counts_trading_days_in_a_row_beyond_the_threshold(shadow, settings):
    settings.DIVERGENCE_LOG_ALERT_PCT = 10.0
    diverging(
        shadow,
        {
            date(2026, 11, 25): 30.0,  # beyond, but Thursday lies within
            date(2026, 11, 26): 5.0,
            date(2026, 11, 27): 12.0,  # Friday
            date(2026, 11, 30): 15.0,  # Monday: the weekend breaks no run
            date(2026, 12, 1): 11.0,
        },
    )
    figure = redlines.divergence(shadow, rule(DIVERGENCE), STAGE_BEGAN, NOW)
    assert figure.value == 3
    assert [d for d, _ in figure.data["days"]] == ["2026-12-01", "2026-11-30", "2026-11-27"]


def test_a_missing_weekday_or_another_stage_breaks_the_run(shadow, settings):
    settings.DIVERGENCE_LOG_ALERT_PCT = 10.0
    diverging(shadow, {date(2026, 11, 26): 40.0, date(2026, 11, 27): 40.0}, stage="paper")
    diverging(shadow, {date(2026, 11, 30): 12.0, date(2026, 12, 2): 12.0})  # Tuesday missing
    figure = redlines.divergence(shadow, rule(DIVERGENCE), STAGE_BEGAN, NOW)
    assert figure.value == 1


def test_critical_errors_counts_critical_logs_in_the_window_and_the_stage(shadow):
    def log(ts: datetime, level: str = "critical") -> None:
        EngineLog.objects.create(engine=shadow, ts=ts, level=level, message=f"{level} at {ts}")

    for hours in (1, 5, 23):
        log(NOW - timedelta(hours=hours))
    log(NOW - timedelta(hours=25))  # out of the 24 h window
    log(NOW - timedelta(hours=2), level="error")  # an error is not critical
    figure = redlines.critical_errors(shadow, rule(CRITICAL_ERRORS), STAGE_BEGAN, NOW)
    assert figure.value == 3
    assert len(figure.data["latest"]) == 3
    # A stage that began 4 h ago sees only the one logged since.
    began = NOW - timedelta(hours=4)
    assert redlines.critical_errors(shadow, rule(CRITICAL_ERRORS), began, NOW).value == 1


# --- the action --------------------------------------------------------------------------------


def crossing_drawdown(engine: Engine) -> None:
    snapshot(engine, STAGE_BEGAN + timedelta(hours=1), "120000", 1)
    snapshot(engine, STAGE_BEGAN + timedelta(hours=2), "100800", 2)


def test_a_crossing_pauses_demotes_records_and_alerts_once(shadow):
    red_lines_rule()
    crossing_drawdown(shadow)
    line = only(MAX_DRAWDOWN)
    (event,) = redlines.evaluate(NOW)
    shadow.refresh_from_db()
    assert shadow.stage == "paper" and shadow.mode == "paper"
    assert shadow.desired_state == "PAUSED"
    (pause,) = Command.objects.filter(engine=shadow)
    assert pause.kind == "pause" and pause.params == {"cancel_open": True}
    assert pause.issued_by_label == f"red line #{line.pk} max_drawdown"
    change = StageChange.objects.filter(engine=shadow).order_by("-at", "-pk").first()
    assert (change.from_stage, change.to_stage) == ("shadow", "paper")
    assert change.actor_label == f"red line #{line.pk} max_drawdown"
    assert AuditEvent.objects.filter(action="engine_stage", target_id=str(shadow.pk)).exists()
    assert event.value == pytest.approx(16.0) and event.threshold == 15
    assert event.stage == "shadow" and event.to_stage == "paper" and event.action == "demote"
    assert event.command_id == pause.pk and event.stage_change == change
    assert Decimal(event.figures["data"]["peak"]) == 120000
    alert = Alert.objects.get(engine=shadow)
    assert alert.pk == event.alert_id and alert.severity == "critical"
    assert "Maximum drawdown" in alert.summary and "demoted to paper" in alert.summary
    # Again, and again with the engine back at shadow with the same record: nothing twice (paper
    # is not watched; back at shadow, the crossing of this stage period was acted on).
    assert redlines.evaluate(NOW) == []
    Engine.objects.filter(pk=shadow.pk).update(stage="shadow", mode="shadow")
    assert redlines.evaluate(NOW) == []
    assert RedLineEvent.objects.count() == 1 and Command.objects.filter(engine=shadow).count() == 1


def test_two_evaluations_at_once_act_once(shadow, monkeypatch):
    crossing_drawdown(shadow)
    only(MAX_DRAWDOWN, action="pause")
    stale = RedLineState.objects.create(red_line=rule(MAX_DRAWDOWN), engine=shadow)
    assert len(redlines.evaluate(NOW)) == 1
    # A second worker that read the state before the first claimed it: its claim finds it moved.
    monkeypatch.setattr(
        RedLineState.objects, "get_or_create", lambda **kwargs: (stale, False), raising=False
    )
    assert redlines.evaluate(NOW) == []
    assert Command.objects.filter(engine=shadow).count() == 1


def test_pause_only_fires_again_after_the_figure_came_back_within(shadow):
    red_lines_rule()
    crossing_drawdown(shadow)
    only(MAX_DRAWDOWN, action="pause")
    (first,) = redlines.evaluate(NOW)
    shadow.refresh_from_db()
    assert shadow.stage == "shadow" and shadow.desired_state == "PAUSED"
    assert redlines.evaluate(NOW) == []
    # The risk manager raises the line above the fall, then lowers it again: a new crossing.
    RedLine.objects.filter(kind=MAX_DRAWDOWN).update(threshold=20)
    assert redlines.evaluate(NOW) == []
    RedLine.objects.filter(kind=MAX_DRAWDOWN).update(threshold=10)
    (second,) = redlines.evaluate(NOW)
    # Its alert, still open, was brought up to date: one alert, both events point at it.
    assert first.alert_id is not None and second.alert_id == first.alert_id
    assert Alert.objects.filter(engine=shadow).count() == 1
    assert "above 10%" in Alert.objects.get(engine=shadow).summary


def test_kill_and_a_demotion_target_not_below_the_stage(shadow, make_engine):
    crossing_drawdown(shadow)
    only(MAX_DRAWDOWN, action="kill")
    (event,) = redlines.evaluate(NOW)
    shadow.refresh_from_db()
    assert event.action == "kill" and shadow.desired_state == "HALTED" and shadow.stage == "shadow"
    assert Command.objects.get(engine=shadow).kind == "kill"

    other, _ = make_engine("other", stage="shadow")
    StageChange.objects.filter(engine=other).update(at=STAGE_BEGAN)
    crossing_drawdown(other)
    only(MAX_DRAWDOWN, action="demote", demote_to="shadow")
    (event,) = redlines.evaluate(NOW, engine_ids=[other.pk])
    other.refresh_from_db()
    assert event.action == "pause" and other.stage == "shadow" and other.desired_state == "PAUSED"


def test_paper_engines_are_not_watched(make_engine):
    engine, _ = make_engine("papery", stage="paper")
    crossing_drawdown(engine)
    only(MAX_DRAWDOWN)
    assert redlines.evaluate(NOW) == []


def test_the_minute_task_is_scheduled():
    from controlplane.config.schedules import PERIODIC_TASKS

    tasks = {spec["task"] for spec in PERIODIC_TASKS.values()}
    assert "golive.tasks.red_lines" in tasks


# --- the rules: rights, history, bad input -----------------------------------------------------


def _form(line: RedLine, **overrides) -> dict:
    form = {
        "enabled": "on",
        "threshold": str(line.threshold),
        "window": "" if line.window is None else str(line.window),
        "action": line.action,
        "demote_to": line.demote_to,
        "change_reason": "",
        "changes-TOTAL_FORMS": "0",
        "changes-INITIAL_FORMS": "0",
    }
    return {**form, **overrides}


def test_a_risk_manager_changes_a_red_line_with_a_reason_kept_in_its_history(risk_manager):
    client = Client()
    client.force_login(risk_manager)
    line = rule(MAX_DRAWDOWN)
    url = f"/admin/golive/redline/{line.pk}/change/"
    assert client.get("/admin/golive/redline/").status_code == 200
    done = client.post(
        url, _form(line, threshold="12", action="kill", change_reason="tighter after review")
    )
    assert done.status_code == 302
    line.refresh_from_db()
    assert line.threshold == 12 and line.action == "kill" and line.version == 2
    change = line.changes.first()
    assert change.changed_by_label == "rita-risk" and change.reason == "tighter after review"
    assert change.changes == {"threshold": ["15", "12"], "action": ["demote", "kill"]}
    audit = AuditEvent.objects.get(action="red_line_change", target_id=str(line.pk))
    assert audit.actor == "rita-risk" and audit.reason == "tighter after review"


@pytest.mark.parametrize(
    ("kind", "field", "value", "words"),
    [
        (MAX_DRAWDOWN, "threshold", "-5", "at least 0.1"),
        (MAX_DRAWDOWN, "threshold", "NaN", ""),
        (MAX_DRAWDOWN, "threshold", "Infinity", ""),
        (MAX_DRAWDOWN, "threshold", "1e30", ""),
        (MAX_DRAWDOWN, "threshold", "250", "at most 100"),
        (MAX_DRAWDOWN, "window", "5", "takes no window"),
        (SHARPE, "window", "100000", "3 to 260"),
        (SHARPE, "window", "-1", ""),
        (SHARPE, "window", "", "whole number"),
        (DIVERGENCE, "threshold", "2.5", "whole number"),
        (CRITICAL_ERRORS, "threshold", "0", "at least 1"),
        (MAX_DRAWDOWN, "action", "explode", ""),
        (MAX_DRAWDOWN, "demote_to", "full", ""),
    ],
)
def test_bad_numbers_are_refused_naming_the_field(risk_manager, kind, field, value, words):
    client = Client()
    client.force_login(risk_manager)
    line = rule(kind)
    before = (line.threshold, line.window, line.action, line.demote_to, line.version)
    response = client.post(
        f"/admin/golive/redline/{line.pk}/change/",
        _form(line, **{field: value, "change_reason": "try it"}),
    )
    assert response.status_code == 200
    errors = response.context_data["adminform"].form.errors
    assert field in errors, errors
    assert words in " ".join(errors[field])
    line.refresh_from_db()
    assert (line.threshold, line.window, line.action, line.demote_to, line.version) == before


def test_the_service_refuses_nan_and_nul_naming_the_field(risk_manager):
    line = rule(MAX_DRAWDOWN)
    line.threshold = Decimal("NaN")
    with pytest.raises(ValidationError) as caught:
        services.red_line_save(red_line=line, reason="why", actor=risk_manager)
    assert "threshold" in caught.value.message_dict
    line = rule(MAX_DRAWDOWN)
    line.threshold = Decimal(10)
    with pytest.raises(ValidationError) as caught:
        services.red_line_save(red_line=line, reason="a\x00b", actor=risk_manager)
    assert "change_reason" in caught.value.message_dict
    with pytest.raises(services.ReasonRequired):
        services.red_line_save(red_line=line, reason="  ", actor=risk_manager)
    assert rule(MAX_DRAWDOWN).threshold == 15


def test_only_risk_managers_change_red_lines(operator, viewer):
    operator.is_staff = True
    operator.save()
    client = Client()
    client.force_login(operator)
    line = rule(MAX_DRAWDOWN)
    url = f"/admin/golive/redline/{line.pk}/change/"
    response = client.post(url, _form(line, threshold="90", change_reason="looser"))
    assert response.status_code == 403
    for person in (operator, viewer):
        line.threshold = Decimal(90)
        with pytest.raises(services.PromotionForbidden):
            services.red_line_save(red_line=line, reason="looser", actor=person)
    assert rule(MAX_DRAWDOWN).threshold == 15 and rule(MAX_DRAWDOWN).changes.count() == 1


# --- where it shows ----------------------------------------------------------------------------


def test_the_api_and_the_page_show_the_events(shadow, viewer, outsider):
    crossing_drawdown(shadow)
    only(MAX_DRAWDOWN)
    (event,) = redlines.evaluate(NOW)
    client = Client()
    client.force_login(viewer)
    response = client.get("/api/v1/engines/shady/red-lines")
    assert response.status_code == 200
    (body,) = response.json()
    assert body["id"] == event.pk and body["kind"] == "max_drawdown"
    assert body["value"] == pytest.approx(16.0) and body["threshold"] == 15
    assert body["stage"] == "shadow" and body["to_stage"] == "paper"
    assert body["command_id"] == str(event.command_id)
    assert body["figures"]["data"]["trough_at"]
    assert client.get("/api/v1/engines/nobody/red-lines").status_code == 404
    page = client.get("/engines/shady/go-live/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'data-red-line-event="{event.pk}"' in html and "Maximum drawdown in the stage" in html
    assert "Shadow → Paper" in html
    stranger = Client()
    stranger.force_login(outsider)
    assert stranger.get("/api/v1/engines/shady/red-lines").status_code == 403
