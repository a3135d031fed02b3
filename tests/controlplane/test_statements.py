"""Broker statements (controlplane.statements): read whole or refused line by line with nothing
stored; reconciled against fills stored through the real ingest; every difference listed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from alerts.models import Alert
from controlplane import events
from controlplane.ingest.store import ingest_events
from controlplane.models import AuditEvent, BrokerStatement, Engine, StatementDifference
from controlplane.statements import StatementRefused, parse, statement_import
from engine_sdk import protocol as p

pytestmark = pytest.mark.django_db
SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "samples" / "broker-statement.csv"
DAY = datetime(2026, 12, 4, 14, 30, tzinfo=UTC)
D = Decimal
Kind = StatementDifference.Kind


def _order_and_fill(
    seq: int, order_id: str, fill_id: str, symbol: str, side: str, qty: str, price: str, fee: str
) -> list[p.Event]:
    return [
        p.OrderEvent(
            seq=seq,
            ts=DAY,
            client_order_id=order_id,
            symbol=symbol,
            side=side,  # type: ignore[arg-type]
            order_type="market",
            quantity=D(qty),
            status="filled",
            filled_quantity=D(qty),
        ),
        p.FillEvent(
            seq=seq + 1,
            ts=DAY,
            fill_id=fill_id,
            client_order_id=order_id,
            symbol=symbol,
            side=side,  # type: ignore[arg-type]
            quantity=D(qty),
            price=D(price),
            fee=D(fee),
        ),
    ]


@pytest.fixture
def engine(make_engine: Callable[..., tuple[Engine, str]]) -> Engine:
    """An engine whose ledger holds the sample statement's three trades, the broker's execution
    ids as its fill_ids."""
    engine, _ = make_engine("stmt-engine")
    ingest_events(
        engine_id=engine.pk,
        events=[
            *_order_and_fill(1, "3f9c0a1b2d4e-1", "EX-1001", "AAPL", "buy", "100", "190.25", "1"),
            *_order_and_fill(3, "3f9c0a1b2d4e-2", "EX-1002", "AAPL", "sell", "40", "191.1", "0.4"),
            *_order_and_fill(5, "3f9c0a1b2d4e-3", "EX-1003", "MSFT", "buy", "10", "402.5", "0.2"),
        ],
    )
    return engine


def test_the_sample_statement_matches_a_ledger_that_holds_its_trades(
    engine: Engine, risk_manager: User, django_capture_on_commit_callbacks: Callable
) -> None:
    announced: list[dict] = []

    def listen(sender: object, **kwargs: object) -> None:
        announced.append(kwargs)

    events.statement_reconciled.connect(listen, dispatch_uid="test-statement")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            statement = statement_import(
                engine=engine, data=SAMPLE.read_bytes(), actor=risk_manager, filename="s.csv"
            )
    finally:
        events.statement_reconciled.disconnect(dispatch_uid="test-statement")

    assert statement.matched, list(statement.differences.values_list("detail", flat=True))
    assert (statement.trades, statement.positions) == (3, 2)
    # The day's cash flow: 40 x 191.10 - 100 x 190.25 - 10 x 402.5 - 1.60 in fees
    # = 7,644 - 19,025 - 4,025 - 1.60.
    assert statement.ledger_summary == statement.broker_summary
    assert statement.broker_summary["cash_flow"] == "-15407.6"
    assert announced == [
        {
            "signal": events.statement_reconciled,
            "statement_id": statement.pk,
            "engine_id": engine.pk,
            "differences": 0,
        }
    ]
    audit = AuditEvent.objects.get(action="broker_statement_import")
    assert audit.data["differences"] == 0 and audit.actor == risk_manager.username


def test_every_kind_of_difference_is_listed_with_its_line(engine: Engine) -> None:
    data = (
        b"type,date,trade_id,order_id,symbol,side,quantity,price,fee\n"
        b"trade,2026-12-04,EX-1001,,AAPL,buy,100,190.30,1.00\n"  # line 2: price
        b"trade,2026-12-04,EX-1002,,AAPL,sell,40,191.10,0.55\n"  # line 3: fee
        b"trade,2026-12-04,EX-9999,,TSLA,buy,5,250,0\n"  # line 4: not in the ledger
        b"position,2026-12-04,,,AAPL,,55,,\n"  # line 5: the ledger has 60
        # MSFT's fill EX-1003 is not on the statement, nor is its position of 10.
    )

    statement = statement_import(engine=engine, data=data, actor=None)

    found = {
        (d.kind, d.line, d.symbol, d.ledger_value, d.broker_value)
        for d in statement.differences.all()
    }
    assert found == {
        (Kind.PRICE, 2, "AAPL", "190.25", "190.3"),
        (Kind.FEE, 3, "AAPL", "0.4", "0.55"),
        (Kind.MISSING_IN_LEDGER, 4, "TSLA", "", "buy 5 @ 250"),
        (Kind.MISSING_AT_BROKER, None, "MSFT", "buy 10 @ 402.5", ""),
        (Kind.POSITION, 5, "AAPL", "60", "55"),
        (Kind.POSITION, None, "MSFT", "10", "0"),
    }
    assert statement.differences_count == 6


def test_a_trade_is_matched_by_its_order_when_the_fill_id_is_the_engines_own(
    make_engine: Callable[..., tuple[Engine, str]],
) -> None:
    engine, _ = make_engine("own-ids")
    ingest_events(
        engine_id=engine.pk,
        events=_order_and_fill(1, "ord-7", "ord-7-fill-1", "AAPL", "buy", "10", "100", "0"),
    )
    data = (
        b"type,date,trade_id,order_id,symbol,side,quantity,price\n"
        b"trade,2026-12-04,BRK-1,ord-7,AAPL,buy,10,100\n"
        b"position,2026-12-04,,,AAPL,,10,\n"
    )

    assert statement_import(engine=engine, data=data, actor=None).matched


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        (b"", [(1, "the file is empty: a header line is needed")]),
        (b"\xff\xfe", [(0, "the file is not UTF-8 text (invalid start byte)")]),
        (
            b"type,date,symbol,qty\n",
            [
                (
                    1,
                    "unknown columns 'qty'; missing columns quantity "
                    "(expected type,date,trade_id,order_id,symbol,side,quantity,price,fee)",
                )
            ],
        ),
        (
            b"type,date,trade_id,symbol,side,quantity,price\n"
            b"trade,2026-12-04,T1,AAPL,buy,10,100\n"
            b"trade,2026-13-04,T2,AAPL,buy,10,100\n"
            b"trade,2026-12-04,T1,AAPL,buy,10,100\n"
            b"trade,2026-12-05,T3,AAPL,buy,10,100\n"
            b"trade,2026-12-04,T4,AAPL,hold,10,100\n"
            b"trade,2026-12-04,T5,AAPL,buy,-10,100\n"
            b"trade,2026-12-04,T6,AAPL,buy,10,NaN\n"
            b"trade,2026-12-04,T7,AAPL,buy,10\n"
            b"dividend,2026-12-04,T8,AAPL,buy,10,100\n"
            b"trade,2026-12-04,,AAPL,buy,10,100\n"
            b"trade,2026-12-04,T9,AAPL,buy,1.123456789,100\n"
            b"trade,9999-12-31,T10,AAPL,buy,1,100\n",
            [
                (3, "date '2026-13-04' is not a date (YYYY-MM-DD)"),
                (4, "trade_id 'T1' already on line 2"),
                (5, "date 2026-12-05 differs from 2026-12-04 (line 2): one statement is one day"),
                (6, "side must be buy or sell, got 'hold'"),
                (7, "quantity must be above 0, got -10"),
                (8, "price 'NaN' is not a finite number below 1e16"),
                (9, "6 fields where the header has 7"),
                (10, "type must be trade or position, got 'dividend'"),
                (11, "trade_id is missing"),
                (12, "quantity '1.123456789' has more than 8 decimal places"),
                (13, "date 9999-12-31 is outside 1900-01-01 to 2999-12-31"),
            ],
        ),
    ],
    ids=["empty", "not-utf8", "bad-header", "bad-lines"],
)
def test_a_bad_statement_is_refused_line_by_line_and_nothing_is_stored(
    engine: Engine, data: bytes, errors: list[tuple[int, str]]
) -> None:
    with pytest.raises(StatementRefused) as info:
        statement_import(engine=engine, data=data, actor=None)

    assert info.value.errors == errors
    assert not BrokerStatement.objects.exists()
    assert not AuditEvent.objects.filter(action="broker_statement_import").exists()


def test_a_position_may_be_short_and_a_header_in_any_order() -> None:
    statement = parse(
        b"symbol,quantity,type,date\nAAPL,-25,position,2026-12-04\n\nMSFT,0,position,2026-12-04\n"
    )
    assert [(h.line, h.symbol, h.quantity) for h in statement.positions] == [
        (2, "AAPL", D(-25)),
        (4, "MSFT", D(0)),
    ]


def test_the_admin_imports_for_a_risk_manager_and_refuses_an_operator(
    engine: Engine, risk_manager: User, operator: User
) -> None:
    client = Client()
    url = "/admin/controlplane/brokerstatement/add/"
    client.force_login(operator)
    assert client.get(url).status_code in (302, 403)

    client.force_login(risk_manager)
    bad = b"type,date,symbol,quantity\nposition,yesterday,AAPL,1\n"
    refused = client.post(url, {"engine": engine.pk, "file": _upload("bad.csv", bad)})
    assert refused.status_code == 200
    assert "line 2: date &#x27;yesterday&#x27; is not a date" in refused.content.decode()
    assert not BrokerStatement.objects.exists()

    done = client.post(url, {"engine": engine.pk, "file": _upload("s.csv", SAMPLE.read_bytes())})
    statement = BrokerStatement.objects.get()
    assert done.status_code == 302 and done["Location"].endswith(f"/{statement.pk}/change/")
    page = client.get(done["Location"]).content.decode()
    assert "matches the ledger" in page


def _upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="text/csv")


def test_differences_raise_a_critical_alert_that_a_matching_statement_of_the_day_resolves(
    engine: Engine, django_capture_on_commit_callbacks: Callable
) -> None:
    bad = SAMPLE.read_bytes().replace(b"190.25", b"190.35")
    with django_capture_on_commit_callbacks(execute=True):
        statement_import(engine=engine, data=bad, actor=None)
        # A second bad statement of the same day updates the alert rather than adding one.
        statement_import(engine=engine, data=bad, actor=None)

    alert = Alert.objects.get(engine=engine)
    assert (alert.state, alert.severity, alert.rule.metric) == (
        "firing",
        "critical",
        "statement_difference",
    )
    assert alert.source == "statement:2026-12-04"
    assert "differs from the ledger in 1 place (" in alert.summary

    with django_capture_on_commit_callbacks(execute=True):
        statement_import(engine=engine, data=SAMPLE.read_bytes(), actor=None)
    alert.refresh_from_db()
    assert alert.state == "resolved"
    assert "now matches the ledger" in alert.summary


def test_the_api_imports_and_lists_statements_and_refuses_bad_lines_by_number(
    engine: Engine, risk_manager: User, operator: User
) -> None:
    client = Client()
    url = f"/api/v1/engines/{engine.name}/statements"
    client.force_login(operator)
    refused = client.post(url, {"csv": SAMPLE.read_text()}, content_type="application/json")
    assert refused.status_code == 403
    assert "lacks the controlplane.import_statement permission" in refused.json()["detail"]

    client.force_login(risk_manager)
    bad = client.post(
        url,
        {"csv": "type,date,symbol,quantity\nposition,2026-12-04,AAPL,lots\n"},
        content_type="application/json",
    )
    assert bad.status_code == 400
    assert bad.json()["errors"] == {"line 2": "quantity 'lots' is not a number"}
    assert not BrokerStatement.objects.exists()
    unknown = client.post(
        "/api/v1/engines/nobody/statements", {"csv": "x"}, content_type="application/json"
    )
    assert unknown.status_code == 404

    done = client.post(
        url, {"csv": SAMPLE.read_text(), "filename": "d.csv"}, content_type="application/json"
    )
    assert done.status_code == 201, done.content
    body = done.json()
    assert (body["engine"], body["statement_date"], body["matched"]) == (
        engine.name,
        "2026-12-04",
        True,
    )
    assert body["differences"] == [] and body["broker_summary"]["cash_flow"] == "-15407.6"

    listed = client.get(url)
    assert listed.status_code == 200 and [s["id"] for s in listed.json()] == [body["id"]]


def test_a_statement_too_large_for_the_api_is_refused_by_name(engine: Engine, risk_manager: User):
    client = Client()
    client.force_login(risk_manager)
    body = {"csv": "type,date,symbol,quantity\n" + "position,2026-12-04,AAPL,1\n" * 120_000}
    answer = client.post(
        f"/api/v1/engines/{engine.name}/statements", body, content_type="application/json"
    )
    assert answer.status_code == 413
    assert "the request body is larger than this server takes" in answer.json()["detail"]
    assert not BrokerStatement.objects.exists()


def test_a_symbol_at_the_protocols_bound_is_read_and_one_beyond_is_refused_by_line() -> None:
    longest = "X" * p.MAX_SYMBOL_LENGTH
    header = b"symbol,quantity,type,date\n"
    statement = parse(header + f"{longest},5,position,2026-12-04\n".encode())
    assert [h.symbol for h in statement.positions] == [longest]

    with pytest.raises(StatementRefused) as info:
        parse(header + f"{longest}X,5,position,2026-12-04\n".encode())
    ((line, message),) = info.value.errors
    assert line == 2 and "symbol" in message
