"""Exposure with each instrument's multiplier, in the account's currency (docs/risk.md,
"Exposure"): worked by hand, then measured by the post-trade limits after real batches."""

from __future__ import annotations

from decimal import Decimal

import pytest

from controlplane.gateway import batches, decoding
from controlplane.models import Engine
from controlplane.trading_math import exposure
from risk import evaluation, services
from risk.models import LimitState, RiskLimit
from tests.gateway import factories as f


def test_exposure_counts_the_multiplier_and_converts_the_currency_by_hand():
    # 2 E-mini contracts at 5,000 points, 50 dollars a point, in a dollar account.
    assert exposure(Decimal(2), Decimal(5000), Decimal(50), "USD", "USD", {}) == 500_000
    # Short 100 shares at 200 euros, a euro worth 1.1 dollars: 22,000 dollars.
    eur = exposure(Decimal(-100), Decimal(200), Decimal(1), "EUR", "USD", {"EUR": "1.1"})
    assert eur == Decimal("22000.0")
    # No rate for yen: unknown, not counted at 1.
    assert exposure(Decimal(100), Decimal(3000), Decimal(1), "JPY", "USD", {"EUR": "1.1"}) is None
    # An engine that never said its account currency accounts in the protocol's default (USD).
    assert exposure(Decimal(1), Decimal(10), Decimal(1), "USD", "", {}) == 10


@pytest.fixture(autouse=True)
def fresh_cache():
    evaluation.forget_cached_limits()
    yield
    evaluation.forget_cached_limits()


def _limit(actor, **fields) -> RiskLimit:
    limit = RiskLimit(**fields)
    services.limit_save(limit=limit, reason="desk policy", actor=actor)
    evaluation.forget_cached_limits()
    return limit


def _send(engine: Engine, *events) -> None:
    frames, result = batches.events(engine.pk, decoding.decode_frame(f.events_frame(*events)))
    assert result is not None and not result.errors, frames


def _value(limit: RiskLimit, engine: Engine) -> Decimal | None:
    state = LimitState.objects.filter(limit=limit, engine=engine).first()
    return state.value if state is not None else None


@pytest.mark.django_db
def test_the_limits_measure_the_multiplier_and_the_fx_rate_and_leave_unknown_rates_unmeasured(
    make_engine, risk_manager
):
    engine = make_engine("alpha")[0]
    gross = _limit(risk_manager, kind="max_gross_exposure_pct", threshold=Decimal(100))
    es_only = _limit(
        risk_manager,
        kind="max_position_pct",
        threshold=Decimal(100),
        scope="symbol",
        scope_value="ES",
    )
    _send(
        engine,
        f.instrument(1, "ES", asset_class="future", multiplier="50", currency="USD"),
        f.instrument(2, "SAP", currency="EUR", sector="Technology"),
        f.account(3, "1000000"),
        f.order(4, "o-1", symbol="ES", qty="2"),
        f.fill(5, "f-1", "o-1", symbol="ES", qty="2", price="5000"),
        f.order(6, "o-2", symbol="SAP", side="sell", qty="100"),
        f.fill(7, "f-2", "o-2", symbol="SAP", side="sell", qty="100", price="200"),
    )
    # No euro rate yet: the gross cannot be known, so it is not measured (not counted at 1);
    # the ES position alone still is: 500,000 of 1,000,000.
    assert _value(gross, engine) is None
    assert _value(es_only, engine) == Decimal(50)

    _send(engine, f.account_fx(8, "1000000", {"EUR": "1.1"}))
    # 500,000 + 100 x 200 x 1.1 = 522,000 of 1,000,000 equity.
    assert _value(gross, engine) == Decimal("52.2")
