"""Instrument declarations and FX rates from the engines (docs/protocol.md, "Instruments and FX
rates"): over HTTP and the socket, refused by name when hostile or contradicting what is stored,
with nothing stored changed."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from controlplane.audit import AuditEvent
from controlplane.models import AccountSnapshot, EngineLog, Fill, Instrument, Position
from engine_sdk import protocol as p
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db

URL = "/api/v1/engine/events"


def post(client, token: str, body: bytes | str) -> list[dict]:
    response = client.post(
        URL, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_a_declaration_over_http_describes_the_instrument_and_the_fills_use_its_multiplier(
    client, engine_and_token
):
    engine, token = engine_and_token
    declared = f.instrument(
        1,
        "ES",
        asset_class="future",
        multiplier="50",
        currency="USD",
        tick_size="0.25",
        sector="Index",
    )
    answers = post(
        client,
        token,
        f.events_frame(
            declared,
            f.order(2, "o-1", symbol="ES", qty="2"),
            f.fill(3, "f-1", "o-1", symbol="ES", qty="2", price="5000"),
            f.order(4, "o-2", symbol="ES", side="sell", qty="2"),
            f.fill(5, "f-2", "o-2", symbol="ES", side="sell", qty="2", price="5010"),
        ),
    )
    assert answers == [{"type": "ack", "seq": 5}]
    es = Instrument.objects.get(symbol="ES")
    assert (es.asset_class, es.multiplier, es.currency) == ("future", Decimal(50), "USD")
    assert (es.tick_size, es.sector, es.described_by) == (Decimal("0.25"), "Index", "engine alpha")
    # 2 contracts x 10 points x 50: the ledger's P&L counts the declared multiplier.
    assert Position.objects.get(engine=engine, instrument=es).realized_pnl == Decimal(1000)
    audit = AuditEvent.objects.get(action="instrument.declared")
    assert audit.actor == "engine alpha"
    assert audit.data["changes"]["multiplier"] == ["1", "50"]


def test_an_agreeing_or_completing_declaration_is_taken_and_a_contradicting_one_refused(
    client, make_engine
):
    _, first = make_engine("first")
    second_engine, second = make_engine("second")
    post(client, first, f.events_frame(f.instrument(1, "ES", multiplier="50")))
    # The same multiplier again, and a sector not described yet: taken.
    same = post(
        client, second, f.events_frame(f.instrument(1, "ES", multiplier="50", sector="Index"))
    )
    assert same == [{"type": "ack", "seq": 1}]
    # Another multiplier: refused whole (its currency too), naming the field; the ack covers it.
    answers = post(
        client,
        second,
        f.events_frame(f.instrument(2, "ES", multiplier="5", currency="EUR"), f.metric(3)),
    )
    error, ack = answers
    assert (error["code"], error["field"], error["seq"]) == (
        "instrument_conflict",
        "events[0].multiplier",
        2,
    )
    assert "multiplier 50" in error["message"] and "engine first" in error["message"]
    assert ack == {"type": "ack", "seq": 3}
    es = Instrument.objects.get(symbol="ES")
    assert (es.multiplier, es.currency, es.sector) == (Decimal(50), "USD", "Index")
    assert EngineLog.objects.filter(
        engine=second_engine, level="error", context__code="instrument_conflict"
    ).exists()


def test_an_instrument_a_person_described_is_not_changed_by_an_engine(client, engine_and_token):
    _, token = engine_and_token
    Instrument.objects.create(symbol="NQ", multiplier=20, described_by="user risk")
    [error, _] = post(client, token, f.events_frame(f.instrument(1, "NQ", multiplier="2")))
    assert error["code"] == "instrument_conflict"
    assert Instrument.objects.get(symbol="NQ").multiplier == 20


def _raw_instrument(**fields: object) -> dict:
    event = json.loads(p.encode(f.instrument(1, "ES", multiplier="50")))
    event.update(fields)
    return event


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"multiplier": "NaN"}, "multiplier"),
        ({"multiplier": "Infinity"}, "multiplier"),
        ({"multiplier": "-50"}, "multiplier"),
        ({"multiplier": "0"}, "multiplier"),
        ({"multiplier": "1e15"}, "multiplier"),
        ({"multiplier": "0.0000001"}, "multiplier"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "U" * 17}, "currency"),
        ({"currency": ""}, "currency"),
        ({"currency": "US-D"}, "currency"),
        ({"currency": "US\u0000"}, "currency"),
        ({"tick_size": "-0.25"}, "tick_size"),
        ({"symbol": "X" * (p.MAX_SYMBOL_LENGTH + 1)}, "symbol"),
        ({"symbol": "E\u0000S"}, "symbol"),
        ({"sector": "s" * 65}, "sector"),
        ({"asset_class": "tulips"}, "asset_class"),
    ],
)
def test_a_hostile_declaration_is_refused_naming_the_field_and_nothing_changes(
    client, engine_and_token, fields, field
):
    _, token = engine_and_token
    Instrument.objects.create(symbol="ES", multiplier=50, described_by="")
    frame = {"type": "events", "events": [_raw_instrument(**fields)]}
    error, ack = post(client, token, json.dumps(frame))
    assert (error["code"], error["field"]) == ("invalid_event", f"events[0].{field}")
    assert ack == {"type": "ack", "seq": 1}
    es = Instrument.objects.get(symbol="ES")
    assert (es.multiplier, es.currency, es.described_by) == (Decimal(50), "USD", "")
    assert not AuditEvent.objects.filter(action="instrument.declared").exists()


@pytest.mark.parametrize(
    ("rates", "field"),
    [
        ({"EUR": "NaN"}, "fx_rates.EUR"),
        ({"EUR": "-1.1"}, "fx_rates.EUR"),
        ({"EUR": "0"}, "fx_rates.EUR"),
        ({"EUR": "1e9"}, "fx_rates.EUR"),
        ({"eur": "1.1"}, "fx_rates"),
        ({"": "1.1"}, "fx_rates"),
        ({"U" * 17: "1.1"}, "fx_rates"),
        ({"E\u0000R": "1.1"}, "fx_rates"),
    ],
)
def test_hostile_fx_rates_are_refused_naming_the_field(client, engine_and_token, rates, field):
    engine, token = engine_and_token
    event = json.loads(p.encode(f.account(1, "1000")))
    event["fx_rates"] = rates
    error, _ = post(client, token, json.dumps({"type": "events", "events": [event]}))
    assert (error["code"], error["field"]) == ("invalid_event", f"events[0].{field}")
    engine.refresh_from_db()
    assert engine.fx_rates == {} and engine.equity is None


def test_fx_rates_keep_each_currencys_latest_and_a_new_account_currency_starts_afresh(
    client, engine_and_token
):
    engine, token = engine_and_token
    post(client, token, f.events_frame(f.account_fx(1, "1000", {"EUR": "1.1", "JPY": "0.0067"})))
    post(client, token, f.events_frame(f.account_fx(2, "1000", {"EUR": "1.08"}), f.account(3, "9")))
    engine.refresh_from_db()
    assert engine.account_currency == "USD"
    assert engine.fx_rates == {"EUR": "1.08", "JPY": "0.0067"}
    post(client, token, f.events_frame(f.account_fx(4, "900", {"USD": "0.92"}, currency="EUR")))
    engine.refresh_from_db()
    assert (engine.account_currency, engine.fx_rates) == ("EUR", {"USD": "0.92"})


def test_a_crypto_engine_declares_a_usdt_pair_reports_rates_and_pays_its_fee_in_bnb(
    client, engine_and_token
):
    engine, token = engine_and_token
    answers = post(
        client,
        token,
        f.events_frame(
            f.account_fx(1, "50000", {"BNB": "600.5", "1INCH": "0.25"}, currency="USDT"),
            f.instrument(2, "BTC/USDT", asset_class="crypto", currency="USDT"),
            f.order(3, "o-1", symbol="BTC/USDT", qty="0.5"),
            f.fill(
                4,
                "f-1",
                "o-1",
                symbol="BTC/USDT",
                qty="0.5",
                price="60000",
                fee="0.01",
                fee_currency="BNB",
            ),
        ),
    )
    assert answers == [{"type": "ack", "seq": 4}]
    assert Instrument.objects.get(symbol="BTC/USDT").currency == "USDT"
    engine.refresh_from_db()
    assert (engine.account_currency, engine.fx_rates) == (
        "USDT",
        {"BNB": "600.5", "1INCH": "0.25"},
    )
    # Kept exactly as reported.
    fill = Fill.objects.get(engine=engine, fill_id="f-1")
    assert (fill.fee, fill.fee_currency) == (Decimal("0.01"), "BNB")


def test_an_account_currency_of_sixteen_characters_is_kept_whole(client, engine_and_token):
    engine, token = engine_and_token
    answers = post(client, token, f.events_frame(f.account_fx(1, "10", {}, currency="A" * 16)))
    assert answers == [{"type": "ack", "seq": 1}]
    assert AccountSnapshot.objects.get(engine=engine).currency == "A" * 16


@pytest.mark.parametrize("code", ["usd", "U", "US-D", "", "U" * 17, "US\u0000"])
def test_the_admin_holds_a_persons_currency_to_the_protocols_codes(code):
    with pytest.raises(ValidationError) as refused:
        Instrument(symbol="ES", currency=code).full_clean()
    assert "currency" in refused.value.message_dict
    for accepted in ("USD", "USDT", "1INCH"):
        Instrument(symbol="ES", currency=accepted).full_clean()
