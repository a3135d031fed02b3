"""A fill's fee in its own currency, through the real store: converted into the instrument's
currency (the realised P&L's) at the engine's latest FX rates, or left out, and said so in the
engine's log, when a rate is unknown. The fill keeps its fee as reported."""

from __future__ import annotations

from decimal import Decimal

import pytest

from controlplane.ingest.store import ingest_events
from controlplane.models import Engine, EngineLog, Fill, Position
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def engine(engine_and_token) -> Engine:
    return engine_and_token[0]


def _ingest(engine: Engine, *events):
    return ingest_events(engine_id=engine.pk, events=list(events))


def _round_trip(start: int, symbol: str, **fee: str) -> list:
    """Buy 1 at 100 and sell it at 110: 10 of P&L times the multiplier, less the fees."""
    return [
        f.order(start, f"o-{start}", symbol=symbol, qty="1"),
        f.fill(start + 1, f"f-{start}", f"o-{start}", symbol=symbol, qty="1", price="100", **fee),
        f.order(start + 2, f"s-{start}", symbol=symbol, side="sell", qty="1"),
        f.fill(
            start + 3,
            f"g-{start}",
            f"s-{start}",
            symbol=symbol,
            side="sell",
            qty="1",
            price="110",
            **fee,
        ),
    ]


def _pnl(engine: Engine, symbol: str) -> Decimal:
    return Position.objects.get(engine=engine, instrument__symbol=symbol).realized_pnl


def test_a_fee_in_bnb_comes_off_a_usdt_pairs_pnl_at_the_engines_rate(engine):
    result = _ingest(
        engine,
        f.account_fx(1, "50000", {"BNB": "600"}, currency="USDT"),
        f.instrument(2, "BTC/USDT", asset_class="crypto", currency="USDT"),
        *_round_trip(3, "BTC/USDT", fee="0.001", fee_currency="BNB"),
    )
    assert result.errors == []
    # 10 USDT less two fees of 0.001 BNB at 600 USDT.
    assert _pnl(engine, "BTC/USDT") == Decimal("8.8")
    fills = Fill.objects.filter(engine=engine).values_list("fee", "fee_currency")
    assert set(fills) == {(Decimal("0.001"), "BNB")}
    assert not EngineLog.objects.filter(engine=engine, level="error").exists()


def test_an_account_currency_fee_comes_off_a_foreign_instruments_pnl_in_its_currency(engine):
    # A dollar account trading a euro instrument: each 1.1 dollar fee is one euro.
    _ingest(
        engine,
        f.account_fx(1, "50000", {"EUR": "1.1"}),
        f.instrument(2, "SX5E", currency="EUR"),
        *_round_trip(3, "SX5E", fee="1.1"),
    )
    assert _pnl(engine, "SX5E") == Decimal(8)


def test_the_rates_of_an_earlier_batch_convert_a_later_batchs_fees(engine):
    _ingest(engine, f.account_fx(1, "50000", {"BNB": "500"}, currency="USDT"))
    _ingest(
        engine,
        f.instrument(2, "ETH/USDT", currency="USDT"),
        *_round_trip(3, "ETH/USDT", fee="0.002", fee_currency="BNB"),
    )
    assert _pnl(engine, "ETH/USDT") == Decimal(8)


def test_a_fee_without_a_known_rate_is_left_out_and_the_engines_log_names_it(engine):
    result = _ingest(
        engine,
        f.account_fx(1, "50000", {}, currency="USDT"),
        f.instrument(2, "BTC/USDT", currency="USDT"),
        *_round_trip(3, "BTC/USDT", fee="0.001", fee_currency="BNB"),
    )
    # Stored and acked: the fee is the only thing left out, never counted as 0.001 USDT.
    assert result.errors == [] and result.ack_seq == 6
    assert _pnl(engine, "BTC/USDT") == Decimal(10)
    assert Fill.objects.filter(engine=engine, fee_currency="BNB").count() == 2
    lines = EngineLog.objects.filter(
        engine=engine, level="error", context__code="fee_not_converted"
    )
    assert sorted(line.context["fill_id"] for line in lines) == ["f-3", "g-3"]
    line = lines.get(context__fill_id="f-3")
    assert "BNB" in line.message and "'f-3'" in line.message
    assert line.context["missing_rates"] == ["BNB"]
    assert (line.context["fee"], line.context["fee_currency"]) == ("0.001", "BNB")


def test_an_instrument_whose_currency_has_no_rate_leaves_an_account_fee_out(engine):
    _ingest(
        engine,
        f.account_fx(1, "50000", {}),
        f.instrument(2, "SX5E", currency="EUR"),
        *_round_trip(3, "SX5E", fee="2"),
    )
    assert _pnl(engine, "SX5E") == Decimal(10)
    line = EngineLog.objects.get(engine=engine, context__fill_id="f-3")
    assert line.context["missing_rates"] == ["EUR"] and line.level == "error"


def test_a_new_account_currency_forgets_the_old_rates_for_the_fees_of_its_batch(engine):
    _ingest(engine, f.account_fx(1, "50000", {"BNB": "600"}, currency="USDT"))
    _ingest(
        engine,
        f.account_fx(2, "50000", {}, currency="USDC"),
        f.instrument(3, "BTC/USDC", currency="USDC"),
        *_round_trip(4, "BTC/USDC", fee="0.001", fee_currency="BNB"),
    )
    # The BNB rate was into USDT: it does not convert into USDC.
    assert _pnl(engine, "BTC/USDC") == Decimal(10)
    assert EngineLog.objects.filter(engine=engine, context__code="fee_not_converted").count() == 2


def test_fees_in_the_account_currency_of_an_instrument_in_it_count_as_before(engine):
    # No account event ever: the protocol's default USD, as the bare instrument's currency.
    _ingest(engine, *_round_trip(1, "AAPL", fee="0.5"))
    assert _pnl(engine, "AAPL") == Decimal(9)
