"""The Freqtrade bridge's own logic, in-process and without a bot: fills from filled amounts,
fee shares, replay after a crash, and hostile answers from the bot's API."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from engine_sdk import protocol as p
from engine_sdk.adapters.freqtrade import (
    BadAnswer,
    BotApiError,
    BotUnreachable,
    BridgeConfig,
    FillLedger,
    FreqtradeApi,
    FreqtradeBridge,
    load_ledger,
    parse_trade,
    positions,
)
from engine_sdk.client import EngineClient
from engine_sdk.config import ClientConfig, HelloInfo
from tests.servers import free_port

D = Decimal


def order(**over: Any) -> dict[str, Any]:
    base = {
        "order_id": "dry_run_buy_BTC/USDT_1",
        "ft_order_side": "buy",
        "order_type": "limit",
        "amount": D("1.0"),
        "filled": D("0"),
        "cost": D("0"),
        "safe_price": D("100"),
        "status": "open",
        "is_open": True,
        "order_timestamp": 1_765_000_000_000,
        "order_filled_timestamp": None,
    }
    return base | over


def trade(*orders: dict[str, Any], **over: Any) -> dict[str, Any]:
    base = {
        "trade_id": 7,
        "pair": "BTC/USDT",
        "is_open": True,
        "is_short": False,
        "amount": D("1.0"),
        "open_rate": D("100"),
        "fee_open": D("0.001"),
        "fee_close": D("0.001"),
        "fee_open_currency": "USDT",
        "fee_close_currency": "USDT",
        "quote_currency": "USDT",
        "orders": list(orders),
    }
    return base | over


def derive(ledger: FillLedger, raw: dict[str, Any]) -> list[p.Event]:
    events, marks = ledger.derive(parse_trade(raw))
    ledger.apply(marks)
    return events


def fills(events: list[p.Event]) -> list[p.FillEvent]:
    return [e for e in events if isinstance(e, p.FillEvent)]


def test_each_growth_of_a_filled_amount_is_one_fill_priced_from_the_cost_with_its_fee_share():
    ledger = FillLedger()

    first = derive(ledger, trade(order(filled=D("0.3"), cost=D("30.0"))))
    second = derive(
        ledger, trade(order(filled=D("1.0"), cost=D("101.4"), status="closed", is_open=False))
    )

    [order_event, fill] = first
    assert isinstance(order_event, p.OrderEvent)
    assert (order_event.status, order_event.filled_quantity) == ("partially_filled", D("0.3"))
    assert (fill.side, fill.quantity, fill.price, fill.fee) == ("buy", D("0.3"), D(100), D("0.03"))
    assert fill.client_order_id == order_event.client_order_id
    [order_event, fill] = second
    assert (order_event.status, order_event.avg_fill_price) == ("filled", D("101.4"))
    # 71.4 for 0.7 more: 102 each; the fee is what the order's fee grew by.
    assert (fill.quantity, fill.price, fill.fee) == (D("0.7"), D(102), D("0.0714"))
    assert fill.fill_id != fills(first)[0].fill_id
    assert derive(ledger, trade(order(filled=D("1.0"), cost=D("101.4"), status="closed"))) == []


def test_fee_shares_add_up_to_the_fee_of_the_whole_order_whatever_the_rounding():
    ledger = FillLedger()
    steps = [(D("0.33333"), D("33.3330001")), (D("0.66667"), D("66.87")), (D("1.0"), D("100.13"))]
    shares = []
    for filled, cost in steps:
        raw = trade(order(filled=filled, cost=cost), fee_open=D("0.00075"))
        shares += [f.fee for f in fills(derive(ledger, raw))]

    assert len(shares) == 3
    assert sum(shares) == (D("100.13") * D("0.00075")).quantize(D("0.00000001"))


def test_a_replay_after_a_crash_gives_the_same_fills_under_the_same_ids(tmp_path: Path):
    raw = trade(order(filled=D("0.5"), cost=D("50.5")))
    ledger = FillLedger()
    # Reported but the marks never saved (a crash in between): the next run derives the same.
    crashed, _ = ledger.derive(parse_trade(raw))
    again, marks = ledger.derive(parse_trade(raw))
    assert [(f.fill_id, f.quantity, f.price, f.fee) for f in fills(crashed)] == [
        (f.fill_id, f.quantity, f.price, f.fee) for f in fills(again)
    ]
    # Saved and read back by the next run: nothing to report again.
    ledger.apply(marks)
    path = tmp_path / "freqtrade-bridge.json"
    path.write_text(json.dumps(ledger.to_json()))
    assert load_ledger(path).derive(parse_trade(raw))[0] == []


def test_an_unreadable_record_of_reported_fills_stops_the_bridge_rather_than_count_again(
    tmp_path: Path,
):
    path = tmp_path / "freqtrade-bridge.json"
    path.write_text('{"orders": {"7|x": {"filled": "nonsense"}}}')
    with pytest.raises(SystemExit, match="record of reported fills cannot be read"):
        load_ledger(path)
    assert load_ledger(tmp_path / "absent.json").marks == {}


def test_a_filled_amount_that_shrinks_is_refused_and_the_marks_stay():
    ledger = FillLedger()
    derive(ledger, trade(order(filled=D("0.5"), cost=D("50"))))
    before = dict(ledger.marks)

    with pytest.raises(BadAnswer, match=r"shows filled 0\.2, less than the 0\.5 already reported"):
        ledger.derive(parse_trade(trade(order(filled=D("0.2"), cost=D("20")))))
    assert ledger.marks == before


def test_a_short_enters_selling_and_exits_buying_and_its_position_is_negative():
    raw = trade(
        order(order_id="e", ft_order_side="sell", filled=D("1"), cost=D("100"), status="closed"),
        order(order_id="x", ft_order_side="buy", filled=D("0.4"), cost=D("39.6")),
        is_short=True,
        amount=D("0.6"),
    )
    events = derive(FillLedger(), raw)
    assert [(f.side, f.quantity) for f in fills(events)] == [("sell", D(1)), ("buy", D("0.4"))]
    assert positions([parse_trade(raw)]) == {"BTC/USDT": (D("-0.6"), D("100"))}


def test_a_fee_charged_in_another_currency_is_reported_at_its_stake_value():
    # 0.1 is the fee's value in USDT (cost x rate): labelled BNB it would be counted as 0.1 BNB.
    raw = trade(order(filled=D("1"), cost=D("100")), fee_open_currency="BNB")
    [fill] = fills(derive(FillLedger(), raw))
    assert (fill.fee, fill.fee_currency) == (D("0.1"), None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trade_id": "7"}, "trade.trade_id is '7', expected a positive integer"),
        ({"trade_id": True}, "trade.trade_id is True"),
        ({"pair": ""}, "trade 7.pair is ''"),
        ({"pair": "BTC\x00USDT"}, "trade 7.pair"),
        ({"pair": "X" * 129}, "trade 7.pair"),
        ({"is_open": "yes"}, "is_open / is_short are 'yes' / False, not bools"),
        ({"fee_open": D("1.5")}, "trade 7.fee_open is 1.5, expected a fee rate"),
        ({"fee_open": float("nan")}, "trade 7.fee_open is nan, expected a number"),
        ({"amount": D("-1")}, "trade 7.amount is -1"),
        ({"orders": {"0": {}}}, "trade 7.orders: expected a list, got dict"),
        ({"orders": ["x"]}, "trade 7.orders[0]: expected an object, got str"),
        ({"orders": [order(filled=D("-0.1"))]}, "orders[0].filled is -0.1, expected from 0"),
        (
            {"orders": [order(filled=D("2"))]},
            "orders[0].filled is 2, expected from 0 to the amount",
        ),
        ({"orders": [order(amount=D("0"))]}, "orders[0].amount is 0, expected more than 0"),
        ({"orders": [order(amount=True)]}, "orders[0].amount is True, expected a number"),
        ({"orders": [order(amount="1")]}, "orders[0].amount is '1', expected a number"),
        ({"orders": [order(amount=D("1e20"))]}, "expected a finite number"),
        ({"orders": [order(cost=D("-5"))]}, "orders[0].cost is -5"),
        (
            {"orders": [order(filled=D("1"), cost=D("0"), safe_price=None)]},
            "a filled amount of 1 with no cost and no price",
        ),
        ({"orders": [order(ft_order_side="long")]}, "ft_order_side is 'long'"),
        ({"orders": [order(ft_is_entry=False)]}, "ft_is_entry contradicts ft_order_side 'buy'"),
        ({"orders": [order(order_id="")]}, "orders[0].order_id is ''"),
        ({"orders": [order(order_timestamp=-1)]}, "order_timestamp is -1"),
    ],
)
def test_a_malformed_trade_is_refused_whole_naming_the_field(change, message):
    ledger = FillLedger()
    with pytest.raises(BadAnswer) as info:
        ledger.derive(parse_trade(trade(order()) | change))
    assert message in str(info.value)
    assert ledger.marks == {}


# --- the REST client against a bot that answers badly -----------------------------------------


class HostileBot:
    """A local HTTP server answering each path with a canned (status, body)."""

    def __init__(self, answers: dict[str, tuple[int, bytes]]) -> None:
        self.answers = answers
        self.auth: list[str | None] = []
        bot = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                bot.auth.append(self.headers.get("Authorization"))
                status, body = bot.answers.get(self.path.split("?")[0], (404, b'{"detail":"x"}'))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown() waits for it, at every test's end.
        serve = lambda: self.server.serve_forever(poll_interval=0.05)  # noqa: E731
        threading.Thread(target=serve, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hostile() -> Iterator[HostileBot]:
    bot = HostileBot({})
    yield bot
    bot.server.shutdown()
    bot.server.server_close()


def test_the_client_sends_basic_auth_and_reads_numbers_as_decimals(hostile: HostileBot):
    hostile.answers["/api/v1/status"] = (200, json.dumps([trade(order())], default=float).encode())
    [raw] = FreqtradeApi(hostile.url, "ft", "pw").open_trades()
    assert hostile.auth == ["Basic ZnQ6cHc="]
    assert isinstance(raw["orders"][0]["safe_price"], Decimal)


@pytest.mark.parametrize(
    ("path", "answer", "error", "message"),
    [
        ("/api/v1/status", (200, b"<html>proxy</html>"), BadAnswer, "the answer is not JSON"),
        ("/api/v1/status", (200, b'{"trades": []}'), BadAnswer, "expected a list, got dict"),
        ("/api/v1/status", (401, b'{"detail":"Unauthorized"}'), BotApiError, "HTTP 401"),
        ("/api/v1/status", (500, b"boom"), BotApiError, "GET /status: HTTP 500 boom"),
        ("/api/v1/trades", (200, b'{"trades": []}'), BadAnswer, "total_trades is None"),
        ("/api/v1/trades", (200, b'{"trades": {}, "total_trades": 1}'), BadAnswer, "trades.trades"),
    ],
)
def test_a_bad_answer_from_the_bot_is_a_clear_error(hostile, path, answer, error, message):
    hostile.answers[path] = answer
    api = FreqtradeApi(hostile.url, "ft", "pw")
    call = (
        api.open_trades
        if path.endswith("status")
        else lambda: api.closed_trades(limit=5, by_id=True)
    )
    with pytest.raises(error, match=message):
        call()


def test_a_bot_that_is_down_is_unreachable_not_wrong():
    api = FreqtradeApi(f"http://127.0.0.1:{free_port()}", "ft", "pw", timeout=2)
    with pytest.raises(BotUnreachable, match="GET /show_config: bot unreachable"):
        api.show_config()


# --- the bridge's loop against a bot that answers badly, then well ----------------------------


def journaled(client: EngineClient) -> list[p.Event]:
    return [p.decode_event(raw) for _, raw in client.writer.journal.unacked]


async def run_until(bridge: FreqtradeBridge, condition: Any, within_s: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        async with asyncio.timeout(within_s):
            # What is awaited is written by the bridge's loop and an HTTP server's thread.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task


def test_the_bridge_reports_a_bad_answer_once_emits_nothing_of_it_and_recovers(
    hostile: HostileBot, tmp_path: Path
):
    good = trade(order(filled=D("0.5"), cost=D("50.5")))
    hostile.answers.update(
        {
            "/api/v1/show_config": (200, b'{"state": "running", "stake_currency": "USDT"}'),
            "/api/v1/trades": (200, b'{"trades": [], "total_trades": 0}'),
            "/api/v1/balance": (200, b'{"stake": "USDT", "total": 1000, "currencies": []}'),
            # The filled amount is a string: refused, naming the field.
            "/api/v1/status": (
                200,
                json.dumps([good | {"orders": [order(filled="0.5")]}], default=float).encode(),
            ),
        }
    )

    async def scenario() -> tuple[list[p.Event], list[p.Event]]:
        client = EngineClient(
            f"ws://127.0.0.1:{free_port()}/ws/engine/v1",  # no server: events stay journaled
            "token",
            journal_dir=tmp_path / "journal",
            hello=HelloInfo(
                engine_build="t", config_hash="t", mode="paper", broker="b", account="a"
            ),
            config=ClientConfig(fsync=False, backoff_max_s=0.5),
            enforces_limits=False,
        )
        await client.start()
        try:
            bridge = FreqtradeBridge(
                FreqtradeApi(hostile.url, "ft", "pw"),
                client,
                tmp_path / "journal",
                config=BridgeConfig(poll_interval_s=0.05, fsync=False),
            )
            await run_until(
                bridge, lambda: any(isinstance(e, p.LogEvent) for e in journaled(client))
            )
            await run_until(bridge, lambda: len(hostile.auth) > 12)  # more polls, same bad answer
            bad = journaled(client)
            hostile.answers["/api/v1/status"] = (200, json.dumps([good], default=float).encode())
            await run_until(
                bridge, lambda: any(isinstance(e, p.FillEvent) for e in journaled(client))
            )
            return bad, journaled(client)[len(bad) :]
        finally:
            await client.close()

    bad, recovered = asyncio.run(scenario())

    [error] = [e for e in bad if isinstance(e, p.LogEvent)]  # once, not once per poll
    assert error.level == "error"
    assert "trade 7.orders[0].filled is '0.5', expected a number" in error.message
    assert not [e for e in bad if isinstance(e, (p.OrderEvent, p.FillEvent, p.PositionEvent))]
    [fill] = [e for e in recovered if isinstance(e, p.FillEvent)]
    assert (fill.quantity, fill.price, fill.fee) == (D("0.5"), D(101), D("0.0505"))
    # What was reported is on disk for the next run.
    saved = json.loads((tmp_path / "journal" / "freqtrade-bridge.json").read_text())
    assert next(iter(saved["orders"].values()))["filled"] == "0.5"


# --- the trading state enforced on the bot ----------------------------------------------------


class StatefulBot(HostileBot):
    """A bot's state as its REST API changes it (/pause, /start), its one open trade, and the
    calls it received, in order."""

    def __init__(self) -> None:
        super().__init__({})
        self.state = "running"
        self.calls: list[str] = []
        self.open = [trade(order(filled=D("1"), cost=D("100"), status="closed", is_open=False))]
        self.refresh()

    def refresh(self) -> None:
        config = {"state": self.state, "stake_currency": "USDT"}
        self.answers.update(
            {
                "/api/v1/show_config": (200, json.dumps(config).encode()),
                "/api/v1/status": (200, json.dumps(self.open, default=float).encode()),
                "/api/v1/trades": (200, b'{"trades": [], "total_trades": 0}'),
                "/api/v1/balance": (200, b'{"stake": "USDT", "total": 1000, "currencies": []}'),
                "/api/v1/pause": (200, b'{"status": "paused"}'),
                "/api/v1/start": (200, b'{"status": "starting"}'),
                "/api/v1/forceexit": (200, b'{"result": "ok"}'),
            }
        )

    def on_post(self, path: str) -> None:
        self.calls.append(path.removeprefix("/api/v1"))
        if path.endswith("/pause"):
            self.state = "paused"
        elif path.endswith("/start"):
            self.state = "running"
        self.refresh()


@pytest.fixture
def stateful() -> Iterator[StatefulBot]:
    bot = StatefulBot()
    handler = bot.server.RequestHandlerClass
    get = handler.do_GET

    def post(request: BaseHTTPRequestHandler) -> None:
        bot.on_post(request.path)
        get(request)

    handler.do_POST = post  # type: ignore[attr-defined]
    yield bot
    bot.server.shutdown()
    bot.server.server_close()


def test_the_bridge_holds_the_bot_to_the_engines_state_and_says_when_the_latch_was_broken(
    stateful: StatefulBot, tmp_path: Path
):
    async def scenario() -> list[p.Event]:
        client = EngineClient(
            f"ws://127.0.0.1:{free_port()}/ws/engine/v1",
            "token",
            journal_dir=tmp_path / "journal",
            hello=HelloInfo(
                engine_build="t", config_hash="t", mode="paper", broker="b", account="a"
            ),
            config=ClientConfig(fsync=False, backoff_max_s=0.5),
            enforces_limits=False,
        )
        await client.start()
        try:
            bridge = FreqtradeBridge(
                FreqtradeApi(stateful.url, "ft", "pw"),
                client,
                tmp_path / "journal",
                config=BridgeConfig(poll_interval_s=0.05, fsync=False),
            )
            # A pause (a command's, the dead-man's): the next poll pauses the bot.
            client.gate.pause(reason="dead-man: no server for 15 s")
            await run_until(bridge, lambda: stateful.state == "paused")
            # Its end starts the bot again.
            client.gate.resume(reason="dead-man: server is back")
            await run_until(bridge, lambda: stateful.state == "running")
            assert stateful.calls == ["/pause", "/start"]

            # A kill: the bot is paused while the SDK halts, before the kill could be acked.
            stateful.calls.clear()
            client.gate.halt(reason="kill by rita")
            assert stateful.calls == ["/pause"]
            await run_until(bridge, lambda: bridge._held)
            assert not [e for e in journaled(client) if isinstance(e, p.LogEvent)]

            # Started again behind the bridge: paused again, its trade exited, and said so.
            stateful.state = "running"
            stateful.refresh()
            await run_until(bridge, lambda: "/forceexit" in stateful.calls)
            assert stateful.calls == ["/pause", "/pause", "/forceexit"]
            assert stateful.state == "paused"
            await run_until(bridge, lambda: client.writer.journal.last_seq == client.last_seq)
            return journaled(client)
        finally:
            await client.close()

    events = asyncio.run(scenario())
    [line] = [e for e in events if isinstance(e, p.LogEvent)]
    assert line.level == "critical"
    assert line.message.startswith("freqtrade bot found running while the engine is HALTED")
    assert line.context == {"bot_state": "running", "trading_state": "HALTED", "relatched": True}


def test_one_unreadable_trade_does_not_hold_back_the_others_fills_but_holds_back_positions(
    hostile: HostileBot, tmp_path: Path
):
    good = trade(order(order_id="g", filled=D("1"), cost=D("100")), trade_id=8)
    bad = trade(order(order_id="b", filled=D("1"), cost=D("-1")), trade_id=9)
    hostile.answers.update(
        {
            "/api/v1/show_config": (200, b'{"state": "running", "stake_currency": "USDT"}'),
            "/api/v1/trades": (200, b'{"trades": [], "total_trades": 0}'),
            "/api/v1/balance": (200, b'{"stake": "USDT", "total": 1000, "currencies": []}'),
            "/api/v1/status": (200, json.dumps([bad, good], default=float).encode()),
        }
    )

    async def scenario() -> list[p.Event]:
        client = EngineClient(
            f"ws://127.0.0.1:{free_port()}/ws/engine/v1",
            "token",
            journal_dir=tmp_path / "journal",
            hello=HelloInfo(
                engine_build="t", config_hash="t", mode="paper", broker="b", account="a"
            ),
            config=ClientConfig(fsync=False, backoff_max_s=0.5),
            enforces_limits=False,
        )
        await client.start()
        try:
            bridge = FreqtradeBridge(
                FreqtradeApi(hostile.url, "ft", "pw"),
                client,
                tmp_path / "journal",
                config=BridgeConfig(poll_interval_s=0.05, fsync=False),
            )
            await run_until(
                bridge, lambda: any(isinstance(e, p.LogEvent) for e in journaled(client))
            )
            return journaled(client)
        finally:
            await client.close()

    events = asyncio.run(scenario())
    [fill] = [e for e in events if isinstance(e, p.FillEvent)]
    assert fill.client_order_id.startswith("ft8-")
    [error] = [e for e in events if isinstance(e, p.LogEvent)]
    assert "trade 9.orders[0].cost is -1" in error.message
    assert not [e for e in events if isinstance(e, p.PositionEvent)]
