"""Risk limits on the server: validation, history, the push to engines, post-trade evaluation."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client

from controlplane.models import AuditEvent, Command, Engine, Instrument, Position
from risk import evaluation, selectors, services
from risk.models import LimitState, RiskEvent, RiskLimit, RiskLimitChange

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    evaluation.forget_cached_limits()
    yield
    evaluation.forget_cached_limits()


# The limit the risk migrations ship (the capital ceiling's): the tests add theirs beside it.
SHIPPED = "capital_ceiling_pct"


def save(actor, reason="desk policy", **fields) -> RiskLimit:
    limit = RiskLimit(**fields)
    services.limit_save(limit=limit, reason=reason, actor=actor)
    return limit


# --- the admin ------------------------------------------------------------------------------------


def admin_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


FORM = {
    "kind": "max_daily_loss_pct",
    "scope": "global",
    "scope_value": "",
    "threshold": "5",
    "warning_levels": "50,75,90",
    "action": "kill",
    "reduce_to_pct": "",
    "enabled": "on",
    "description": "",
    "change_reason": "new desk policy",
    "changes-TOTAL_FORMS": "0",
    "changes-INITIAL_FORMS": "0",
}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", "-5", "The threshold must be above zero."),
        ("threshold", "150", "is a percentage: at most 100."),
        ("warning_levels", "50,120", "each above 0 and below 100"),
        ("warning_levels", "90,50", "lowest first"),
        ("change_reason", "", "This field is required."),
    ],
)
def test_bad_values_in_the_admin_are_refused_with_a_clear_message(
    risk_manager, field, value, message
):
    response = admin_client(risk_manager).post("/admin/risk/risklimit/add/", {**FORM, field: value})

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not RiskLimit.objects.exclude(kind=SHIPPED).exists()
    assert not RiskLimitChange.objects.exclude(limit__kind=SHIPPED).exists()


def test_a_risk_manager_adds_and_changes_a_limit_and_the_history_says_who_what_why(
    risk_manager, second_risk_manager
):
    client = admin_client(risk_manager)
    assert client.post("/admin/risk/risklimit/add/", FORM).status_code == 302
    limit = RiskLimit.objects.exclude(kind=SHIPPED).get()

    response = admin_client(second_risk_manager).post(
        f"/admin/risk/risklimit/{limit.pk}/change/",
        {**FORM, "threshold": "3", "change_reason": "volatile week"},
    )

    assert response.status_code == 302
    limit.refresh_from_db()
    assert (limit.threshold, limit.version, limit.updated_by) == (Decimal(3), 2, "rex-risk")
    latest = limit.changes.first()
    assert latest.changes == {"threshold": ["5", "3"]}
    assert (latest.changed_by_label, latest.reason) == ("rex-risk", "volatile week")
    page = admin_client(risk_manager).get(f"/admin/risk/risklimit/{limit.pk}/change/")
    assert "volatile week" in page.content.decode()
    audit = AuditEvent.objects.filter(action="risk_limit_change").get()
    assert audit.reason == "volatile week" and audit.data["changes"] == {"threshold": ["5", "3"]}


def test_operators_and_viewers_cannot_edit_limits(operator, viewer):
    for user in (operator, viewer):
        response = admin_client(user).post("/admin/risk/risklimit/add/", FORM)
        assert response.status_code == 302 and "/login/" in response["Location"]
    assert not RiskLimit.objects.exclude(kind=SHIPPED).exists()


def test_a_risk_manager_by_role_alone_edits_limits_in_the_admin_with_a_reason(risk_manager):
    # Made a risk manager by the group only, as docs/operations.md says to: no is_staff flag.
    User.objects.filter(pk=risk_manager.pk).update(is_staff=False)
    client = admin_client(User.objects.get(pk=risk_manager.pk))

    assert "Risk limits" in client.get("/admin/").content.decode()
    without_reason = client.post("/admin/risk/risklimit/add/", {**FORM, "change_reason": " "})
    assert "This field is required." in without_reason.content.decode()
    assert not RiskLimit.objects.exclude(kind=SHIPPED).exists()
    assert client.post("/admin/risk/risklimit/add/", FORM).status_code == 302

    limit = RiskLimit.objects.exclude(kind=SHIPPED).get()
    assert (limit.updated_by, limit.changes.get().reason) == ("rita-risk", "new desk policy")
    assert "/admin/" in client.get("/risk/").content.decode()  # the header's Admin link


def test_a_staff_operator_still_cannot_change_a_limit(operator, risk_manager):
    limit = save(risk_manager, kind="max_daily_loss_pct", scope="global", threshold=5)
    User.objects.filter(pk=operator.pk).update(is_staff=True)
    client = admin_client(User.objects.get(pk=operator.pk))

    response = client.post(f"/admin/risk/risklimit/{limit.pk}/change/", {**FORM, "threshold": "50"})

    assert response.status_code == 403
    limit.refresh_from_db()
    assert (limit.threshold, limit.version) == (Decimal(5), 1)


def test_a_limit_needs_a_reason_and_valid_scope(risk_manager):
    with pytest.raises(services.ReasonRequired):
        save(risk_manager, reason=" ", kind="max_order_qty", threshold=Decimal(10))
    with pytest.raises(ValidationError) as caught:
        save(
            risk_manager,
            kind="max_order_qty",
            threshold=Decimal(10),
            scope="engine",
            scope_value="ghost",
        )
    assert "No engine is named 'ghost'" in str(caught.value)
    with pytest.raises(ValidationError, match="its action is 'alert only'"):
        save(risk_manager, kind="max_order_qty", threshold=Decimal(10), action="kill")
    with pytest.raises(ValidationError, match="how much of each position to keep"):
        save(risk_manager, kind="max_sector_pct", threshold=Decimal(30), action="reduce")
    assert not RiskLimit.objects.exclude(kind=SHIPPED).exists()


def test_an_unchanged_save_records_nothing(risk_manager):
    limit = save(risk_manager, kind="max_order_qty", threshold=Decimal(10))
    assert services.limit_save(limit=limit, reason="again", actor=risk_manager) is None
    assert limit.changes.count() == 1


# --- what engines are sent ------------------------------------------------------------------------


def test_an_engine_gets_the_pretrade_limits_that_apply_to_it(make_engine, risk_manager):
    alpha = make_engine("alpha", strategy_tags=["momentum"])[0]
    save(risk_manager, kind="max_order_qty", threshold=Decimal(500))
    save(
        risk_manager,
        kind="max_order_notional",
        threshold=Decimal(10000),
        scope="tag",
        scope_value="meanrev",
    )
    collar = save(
        risk_manager,
        kind="price_collar_pct",
        threshold=Decimal(5),
        scope="symbol",
        scope_value="AAPL",
    )
    save(risk_manager, kind="max_daily_loss_pct", threshold=Decimal(3), action="kill")

    revision, limits = selectors.pretrade_limits_for(alpha)

    assert revision == RiskLimitChange.objects.latest("pk").pk
    assert [limit["kind"] for limit in limits] == ["max_order_qty", "price_collar_pct"]
    assert limits[1] == {
        "id": collar.pk,
        "kind": "price_collar_pct",
        "threshold": "5",
        "scope": "symbol",
        "scope_value": "AAPL",
    }


def test_a_change_is_pushed_to_connected_engines_as_set_limits(
    make_engine, risk_manager, django_capture_on_commit_callbacks
):
    alpha = make_engine("alpha")[0]
    offline = make_engine("beta")[0]
    Engine.objects.filter(pk=alpha.pk).update(connected=True)

    with django_capture_on_commit_callbacks(execute=True):
        save(risk_manager, kind="max_order_qty", threshold=Decimal(500))
    with django_capture_on_commit_callbacks(execute=True):
        second = save(
            risk_manager,
            kind="max_order_qty",
            threshold=Decimal(50),
            scope="symbol",
            scope_value="TSLA",
        )

    pushed = Command.objects.filter(kind="set_limits").order_by("created_at")
    assert {c.engine for c in pushed} == {alpha}
    assert offline not in {c.engine for c in pushed}
    first, latest = pushed
    assert first.status == "superseded"  # never delivered: the newer revision replaces it
    assert latest.params["limits_version"] == selectors.limits_revision()
    assert [limit["id"] for limit in latest.params["limits"]][-1] == second.pk
    assert latest.issued_by_label.startswith("risk limits r")


# --- post-trade evaluation ------------------------------------------------------------------------


def set_day(engine: Engine, *, start: str, now: str) -> None:
    Engine.objects.filter(pk=engine.pk).update(
        session_start_equity=Decimal(start),
        equity=Decimal(now),
        day_pnl=Decimal(now) - Decimal(start),
        high_water_mark=Decimal(start),
    )


def test_a_daily_loss_warns_at_each_level_then_kills_once(make_engine, risk_manager):
    engine = make_engine("alpha")[0]
    limit = save(risk_manager, kind="max_daily_loss_pct", threshold=Decimal(2), action="kill")

    kinds = []
    for equity in ("99500", "99000", "98500", "98200", "98100", "97900", "97800"):
        set_day(engine, start="100000", now=equity)
        kinds += [(e.kind, e.level) for e in evaluation.evaluate_engine(engine.pk)]

    assert kinds == [("warning", 50), ("warning", 75), ("warning", 90), ("breach", 100)]
    kill = Command.objects.get(kind="kill")
    assert kill.issued_by_label == f"limit #{limit.pk} max_daily_loss_pct"
    assert kill.issued_by is None and "max daily loss" in kill.reason.lower()
    assert Engine.objects.get(pk=engine.pk).desired_state == "HALTED"
    breach = RiskEvent.objects.get(kind="breach")
    assert breach.command == kill and breach.utilisation == pytest.approx(105.0)
    state = LimitState.objects.get()
    assert (state.level, round(state.utilisation)) == ("breached", 110)  # 2.2 % at the end


def test_a_breach_clears_only_below_the_hysteresis_and_the_kill_stays(make_engine, risk_manager):
    engine = make_engine("alpha")[0]
    save(risk_manager, kind="max_daily_loss", threshold=Decimal(1000), action="kill")
    set_day(engine, start="100000", now="98900")
    evaluation.evaluate_engine(engine.pk)

    set_day(engine, start="100000", now="99020")  # 98 %: inside the hysteresis band
    assert evaluation.evaluate_engine(engine.pk) == []
    set_day(engine, start="100000", now="99100")  # 90 %
    (cleared,) = evaluation.evaluate_engine(engine.pk)
    set_day(engine, start="100000", now="98800")  # breached again: the engine is already HALTED
    (again,) = evaluation.evaluate_engine(engine.pk)

    assert cleared.kind == "cleared"
    assert again.kind == "breach" and again.command is None
    assert Command.objects.filter(kind="kill").count() == 1
    assert Engine.objects.get(pk=engine.pk).desired_state == "HALTED"


def test_a_sector_over_its_limit_is_reduced(make_engine, risk_manager):
    engine = make_engine("alpha")[0]
    tech = [Instrument.objects.create(symbol=s, sector="tech") for s in ("AAPL", "MSFT")]
    energy = Instrument.objects.create(symbol="XOM", sector="energy")
    for instrument, quantity in ((tech[0], 100), (tech[1], 100), (energy, 50)):
        Position.objects.create(
            engine=engine,
            instrument=instrument,
            quantity=Decimal(quantity),
            avg_price=Decimal(100),
            last_price=Decimal(100),
        )
    Engine.objects.filter(pk=engine.pk).update(equity=Decimal(50000))
    limit = save(
        risk_manager,
        kind="max_sector_pct",
        threshold=Decimal(30),
        action="reduce",
        reduce_to_pct=Decimal(50),
    )

    (breach,) = evaluation.evaluate_engine(engine.pk)

    assert breach.kind == "breach"
    assert "sector tech" in breach.message
    assert float(breach.value) == pytest.approx(40.0)  # 20,000 of 50,000
    reduce = Command.objects.get(kind="reduce")
    assert reduce.params == {"target_pct": 50.0}
    assert reduce.issued_by_label == f"limit #{limit.pk} max_sector_pct"


def test_a_limit_for_another_engine_or_disabled_is_not_evaluated(make_engine, risk_manager):
    alpha = make_engine("alpha")[0]
    make_engine("beta")
    save(
        risk_manager,
        kind="max_daily_loss",
        threshold=Decimal(10),
        action="kill",
        scope="engine",
        scope_value="beta",
    )
    save(risk_manager, kind="max_daily_loss", threshold=Decimal(10), action="kill", enabled=False)
    set_day(alpha, start="1000", now="900")

    assert evaluation.evaluate_engine(alpha.pk) == []
    assert not Command.objects.exists()


# --- the risk page --------------------------------------------------------------------------------


def test_the_risk_page_shows_each_engines_utilisation_and_old_limits(
    make_engine, risk_manager, viewer, outsider, django_assert_max_num_queries
):
    engine = make_engine("alpha")[0]
    save(risk_manager, kind="max_order_qty", threshold=Decimal(500))
    save(risk_manager, kind="max_daily_loss", threshold=Decimal(1000), action="pause")
    set_day(engine, start="100000", now="99200")  # 80 % of the limit: amber
    evaluation.evaluate_engine(engine.pk)
    Engine.objects.filter(pk=engine.pk).update(connected=True, limits_version=1)

    client = admin_client(viewer)
    with django_assert_max_num_queries(12):
        page = client.get("/risk/").content.decode()

    assert "enforced before each order" in page
    assert 'class="util-fill util-amber" style="width: 80%"' in page
    assert 'id="stale-limits"' in page and "<strong>alpha</strong> (r1)" in page
    assert "at 80% of its limit" in page
    assert "Edit limits in the admin" not in page
    assert admin_client(outsider).get("/risk/").status_code == 403
    assert "Edit limits in the admin" in admin_client(risk_manager).get("/risk/").content.decode()


def test_leaving_the_last_warning_level_raises_a_cleared_event(make_engine, risk_manager):
    engine = make_engine("alpha")[0]
    save(risk_manager, kind="max_daily_loss", threshold=Decimal(1000), action="alert")
    set_day(engine, start="100000", now="99400")  # 60 %
    (warning,) = evaluation.evaluate_engine(engine.pk)
    set_day(engine, start="100000", now="99520")  # 48 %: inside the hysteresis band
    assert evaluation.evaluate_engine(engine.pk) == []

    set_day(engine, start="100000", now="99600")  # 40 %
    (cleared,) = evaluation.evaluate_engine(engine.pk)

    assert (warning.kind, warning.level) == ("warning", 50)
    assert (cleared.kind, cleared.level) == ("cleared", 0)
    assert "back under its warning levels" in cleared.message
    assert LimitState.objects.get().level == "ok"


def test_a_limit_switched_off_starts_afresh_when_switched_on_again(make_engine, risk_manager):
    engine = make_engine("alpha")[0]
    limit = save(risk_manager, kind="max_daily_loss", threshold=Decimal(1000), action="alert")
    set_day(engine, start="100000", now="99400")
    evaluation.evaluate_engine(engine.pk)
    limit.enabled = False
    services.limit_save(limit=limit, reason="pause this limit", actor=risk_manager)
    assert LimitState.objects.get().level == "ok"

    limit.enabled = True
    services.limit_save(limit=limit, reason="back on", actor=risk_manager)
    evaluation.forget_cached_limits()
    (warning,) = evaluation.evaluate_engine(engine.pk)

    assert (warning.kind, warning.level) == ("warning", 50)
