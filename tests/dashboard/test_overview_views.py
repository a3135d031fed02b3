"""The fleet overview and the engine page as the server renders them, before any live update."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from controlplane import services
from controlplane.commands import issuing
from controlplane.ingest.store import ingest_events
from controlplane.models import Engine, Instrument, Position
from dashboard import overview
from engine_sdk import protocol as p
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db

MakeEngine = Callable[..., tuple[Engine, str]]


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response: object) -> str:
    return html.unescape(response.content.decode())  # type: ignore[attr-defined]


def row_html(page: str, name: str) -> str:
    match = re.search(rf'<tr data-engine="{name}".*?</tr>', page, re.S)
    assert match, f"no row for {name}"
    return match.group(0)


def now_events(engine: Engine, *events: p.Event) -> None:
    ingest_events(engine_id=engine.pk, events=list(events))


@pytest.fixture
def trading(make_engine: MakeEngine) -> Engine:
    """alpha: connected, traded today, a position the engine reports differently, an error log."""
    engine, _ = make_engine("alpha", mode="live", strategy_tags=["momentum"])
    now = datetime.now(UTC)
    now_events(
        engine,
        p.AccountEvent(
            seq=1, ts=now - timedelta(seconds=30), equity=Decimal("100000"), cash=Decimal("100000")
        ),
        p.OrderEvent(
            seq=2,
            ts=now,
            client_order_id="o-1",
            symbol="AAPL",
            side="buy",
            order_type="market",
            quantity=Decimal(10),
            status="accepted",
            expected_price=Decimal("200"),
        ),
        p.FillEvent(
            seq=3,
            ts=now,
            fill_id="f-1",
            client_order_id="o-1",
            symbol="AAPL",
            side="buy",
            quantity=Decimal(10),
            price=Decimal("200.10"),
        ),
        p.OrderEvent(
            seq=4,
            ts=now,
            client_order_id="o-2",
            symbol="MSFT",
            side="sell",
            order_type="limit",
            quantity=Decimal(5),
            limit_price=Decimal("410"),
            status="accepted",
        ),
        p.OrderEvent(
            seq=5,
            ts=now,
            client_order_id="o-3",
            symbol="MSFT",
            side="sell",
            order_type="limit",
            quantity=Decimal(5),
            limit_price=Decimal("400"),
            status="rejected",
        ),
        p.PositionEvent(seq=6, ts=now, symbol="AAPL", quantity=Decimal(12)),
        p.AccountEvent(seq=7, ts=now, equity=Decimal("98765.43"), cash=Decimal("96764.43")),
        p.MetricEvent(seq=8, ts=now, name="latency_ms", value=12.34),
        p.LogEvent(seq=9, ts=now, level="error", message="market data gap on MSFT"),
        p.StateEvent(seq=10, ts=now, trading_state="ACTIVE", reason="start"),
    )
    Engine.objects.filter(pk=engine.pk).update(connected=True, last_seen_at=now)
    engine.refresh_from_db()
    return engine


# --- fleet ----------------------------------------------------------------------------------------


def test_the_fleet_shows_each_engine_with_its_figures_signs_and_badges(
    trading: Engine, make_engine: MakeEngine, operator: User
) -> None:
    make_engine("bravo", mode="paper", strategy_tags=["fx"])

    page = text(client_for(operator).get("/"))

    alpha = row_html(page, "alpha")
    link = '<a class="engine-link" href="/engines/alpha/" title="alpha · momentum">alpha</a>'
    assert link in alpha
    assert re.search(r'class="conn conn-online"[^>]*>online <span class="age">\d+s</span>', alpha)
    assert '<span class="state state-active">ACTIVE</span>' in alpha
    assert 'data-col="equity">98,765.43<' in alpha
    # Day P&L and drawdown carry their sign and colour.
    assert 'class="num neg" data-col="day_pnl">\u22121,234.57<' in alpha
    assert 'class="num neg" data-col="drawdown_pct">\u22121.23%<' in alpha
    assert 'data-col="gross_exposure">2,001<' in alpha
    assert '1 position differs from what the engine reports">≠ 1</span>' in alpha
    assert 'data-col="working_orders">2<' in alpha  # o-1 was only reported accepted
    assert 'title="1 of 3 orders today">33.3%<' in alpha
    assert 'data-col="latency_ms">12.3 ms<' in alpha
    bravo = row_html(page, "bravo")
    assert '<span class="conn conn-offline"' in bravo and ">offline</span>" in bravo
    assert 'data-col="equity">—<' in bravo
    assert 'class="num zero" data-col="day_pnl">0.00<' in bravo
    # The totals row adds up the fleet.
    totals = re.search(r'<tr id="fleet-totals">.*?</tr>', page, re.S).group(0)  # type: ignore[union-attr]
    assert '<span class="v-online">1</span> of <span class="v-engines">2</span> online' in totals
    assert 'data-total="equity">98,765.43<' in totals
    # Live updates are wired, with the times localised by the browser.
    assert 'data-snapshot-url="/live/fleet.json"' in page
    assert "js/live.js" in page and "js/fleet.js" in page
    assert 'id="live-banner"' in page


def test_a_positive_day_pnl_is_written_with_a_plus_in_green(
    make_engine: MakeEngine, viewer: User
) -> None:
    engine, _ = make_engine("gain", mode="paper")
    now_events(engine, f.account(1, "1000"), f.account(2, "1250.5"))

    page = text(client_for(viewer).get("/"))

    assert 'class="num pos" data-col="day_pnl">+250.50<' in row_html(page, "gain")


def test_the_fleet_filters_by_mode_and_by_tag(make_engine: MakeEngine, viewer: User) -> None:
    make_engine("alpha", mode="live", strategy_tags=["momentum"])
    make_engine("bravo", mode="paper", strategy_tags=["momentum", "fx"])
    make_engine("charlie", mode="paper", strategy_tags=["meanrev"])
    client = client_for(viewer)

    def names(query: str) -> list[str]:
        return re.findall(r'<tr data-engine="([\w-]+)"', text(client.get(f"/{query}")))

    assert names("") == ["alpha", "bravo", "charlie"]
    assert names("?mode=paper") == ["bravo", "charlie"]
    assert names("?tag=momentum") == ["alpha", "bravo"]
    assert names("?mode=paper&tag=momentum") == ["bravo"]
    page = text(client.get("/?mode=paper&tag=momentum"))
    assert 'data-snapshot-url="/live/fleet.json?mode=paper&tag=momentum"' in page
    # Every tag stays offered in the menu, whatever is filtered.
    assert all(f'<option value="{t}"' in page for t in ("fx", "meanrev", "momentum"))
    assert "No engine matches these filters." in text(client.get("/?tag=nope"))


def _fleet_of(n_engines: int, positions_each: int) -> None:
    instruments = Instrument.objects.bulk_create(
        Instrument(symbol=f"S{i:04d}", sector="tech") for i in range(positions_each)
    )
    for e in range(n_engines):
        engine, _ = services.engine_create(
            name=f"e-{n_engines}-{e:03d}", mode="paper", strategy_tags=["t"]
        )
        Position.objects.bulk_create(
            Position(
                engine=engine,
                instrument=i,
                quantity=Decimal(e + 1),
                avg_price=Decimal("10"),
                last_price=Decimal("11"),
                reported_quantity=Decimal(e + 2) if n % 50 == 0 else None,
            )
            for n, i in enumerate(instruments)
        )


def test_the_fleet_page_takes_a_fixed_number_of_queries_with_50_engines_and_5000_positions(
    risk_manager: User,
) -> None:
    client = client_for(risk_manager)
    _fleet_of(2, 5)
    with CaptureQueriesContext(connection) as few:
        assert client.get("/").status_code == 200
    Engine.objects.all().delete()
    Instrument.objects.all().delete()

    _fleet_of(50, 100)
    assert Position.objects.count() == 5000
    client.get("/")  # warm: templates compiled, permissions cached like any later request
    timings = []
    for _ in range(5):
        with CaptureQueriesContext(connection) as many:
            started = time.perf_counter()
            response = client.get("/")
            timings.append(time.perf_counter() - started)
        assert response.status_code == 200
    page = text(response)

    assert len(many) == len(few), [q["sql"][:120] for q in many.captured_queries]
    # session, user, two for permissions; engines (with each one's state cause), positions,
    # working orders, today's orders, firing alerts; the tags of the filter menu; the fleet kill
    # banner; the allocation block; the overdue reviews (their schedules, their sign-offs)
    assert len(many) <= 12, "\n".join(q["sql"][:70] for q in many.captured_queries)
    assert page.count('<tr data-engine="e-50-') == 50
    assert '<span class="v-online">0</span> of <span class="v-engines">50</span>' in page
    print(f"fleet page, 50 engines / 5,000 positions: best {min(timings) * 1000:.1f} ms")


def test_the_fleet_needs_a_role_to_be_seen(trading: Engine, outsider: User, viewer: User) -> None:
    assert client_for(outsider).get("/").status_code == 403
    anonymous = Client().get("/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")
    assert client_for(viewer).get("/").status_code == 200


# --- engine page ----------------------------------------------------------------------------------


def test_the_engine_page_shows_positions_ledger_beside_reported_orders_fills_logs_and_commands(
    trading: Engine, operator: User
) -> None:
    issuing.command_issue(kind="pause", selector="engine:alpha", reason="earnings", actor=operator)

    page = text(client_for(operator).get("/engines/alpha/"))

    # The header: states (reported, then the wanted one when they differ) and the controls.
    assert '<span class="state state-active" id="reported-state">ACTIVE</span>' in page
    assert re.search(r'id="desired-state" title="What the control plane wants">→ PAUSED', page)
    assert 'data-open-dialog="pause-dialog" data-selector="engine:alpha"' in page
    assert 'class="num neg" data-col="day_pnl">\u22121,234.57<' in page
    # Positions: ledger 10 beside reported 12, highlighted.
    position = re.search(r'<tr data-symbol="AAPL" class="mismatch-row">.*?</tr>', page, re.S)
    assert position, "the mismatched position is not highlighted"
    cells = re.findall(r'<td class="num">([^<]*)</td>', position.group(0))
    assert cells[:2] == ["10", "12"]
    assert "≠ since" in position.group(0)
    # The working order, the fill with its slippage (paid 200.10 against 200: 5 bps worse).
    assert '<tr data-order="o-2">' in page
    fill = re.search(r'<tr data-fill="\d+">.*?</tr>', page, re.S).group(0)  # type: ignore[union-attr]
    assert 'class="num neg">+5.0</td>' in fill
    assert "market data gap on MSFT" in page and 'class="log-error"' in page
    assert "1 error</span>" in page
    assert re.search(r'<tr data-command="[0-9a-f-]{36}">.*?pause', page, re.S)
    assert 'href="/engines/alpha/commands/"' in page
    # Charts: Plotly from our static files, figures embedded for a first draw without the socket.
    assert "/static/vendor/plotly/plotly.min.js" in page
    # Every script and style sheet from this server. (Not a search for "cdn": the page's random
    # CSRF token spells it now and then.)
    sources = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="([^"]*)"', page)
    assert sources and all(url.startswith("/") for url in sources)
    equity = json.loads(
        re.search(
            r'<script id="equity-figure" type="application/json">(.*?)</script>', page, re.S
        ).group(1)
    )  # type: ignore[union-attr]
    assert equity["data"][0]["y"] == [100000.0, 98765.43]
    for figure in ("latency-figure", "rejection-figure", "plot-config", "plot-traces"):
        assert f'<script id="{figure}" type="application/json">' in page
    assert 'data-snapshot-url="/live/engines/alpha.json"' in page
    assert "js/engine.js" in page


def test_a_viewer_sees_the_engine_page_without_any_control(trading: Engine, viewer: User) -> None:
    page = text(client_for(viewer).get("/engines/alpha/"))

    assert "market data gap on MSFT" in page
    assert "data-open-dialog" not in page
    assert "<dialog" not in page


def test_the_engine_page_needs_a_role_and_an_engine_that_exists(
    trading: Engine, outsider: User, viewer: User
) -> None:
    assert client_for(outsider).get("/engines/alpha/").status_code == 403
    assert Client().get("/engines/alpha/").status_code == 302
    assert client_for(viewer).get("/engines/nope/").status_code == 404


def test_the_engine_page_query_count_does_not_grow_with_its_data(
    trading: Engine, operator: User
) -> None:
    client = client_for(operator)
    client.get("/engines/alpha/")
    with CaptureQueriesContext(connection) as before:
        client.get("/engines/alpha/")
    now = datetime.now(UTC)
    for seq in range(11, 211, 4):
        n = seq
        now_events(
            trading,
            p.OrderEvent(
                seq=n,
                ts=now,
                client_order_id=f"x-{n}",
                symbol="NVDA",
                side="buy",
                order_type="market",
                quantity=Decimal(1),
                status="accepted",
            ),
            p.FillEvent(
                seq=n + 1,
                ts=now,
                fill_id=f"xf-{n}",
                client_order_id=f"x-{n}",
                symbol="NVDA",
                side="buy",
                quantity=Decimal(1),
                price=Decimal("120"),
            ),
            p.AccountEvent(seq=n + 2, ts=now, equity=Decimal(99000 + n), cash=Decimal(0)),
            p.MetricEvent(seq=n + 3, ts=now, name="latency_ms", value=float(n)),
        )
    with CaptureQueriesContext(connection) as after:
        client.get("/engines/alpha/")

    assert len(after) == len(before)


def test_a_command_issued_from_the_engine_page_comes_back_to_it(
    trading: Engine, operator: User
) -> None:
    response = client_for(operator).post(
        "/commands/",
        {
            "kind": "pause",
            "selector": "engine:alpha",
            "reason": "news",
            "next": "/engines/alpha/",
            "return_here": "1",
        },
        follow=True,
    )

    assert response.redirect_chain == [("/engines/alpha/", 302)]  # type: ignore[attr-defined]
    assert "pause issued to engine:alpha." in text(response)


def test_the_fleet_snapshot_of_50_engines_and_5000_positions_takes_a_fixed_number_of_queries(
    make_engine, viewer, django_assert_max_num_queries
):
    instruments = Instrument.objects.bulk_create(
        [Instrument(symbol=f"S{n:03d}", sector="tech") for n in range(100)]
    )
    engines = [make_engine(f"e-{n:02d}")[0] for n in range(50)]
    Position.objects.bulk_create(
        Position(engine=e, instrument=i, quantity=Decimal(10), avg_price=Decimal(100))
        for e in engines
        for i in instruments
    )
    client = Client()
    client.force_login(viewer)

    with django_assert_max_num_queries(10):
        body = client.get("/live/fleet.json").json()

    assert len(body["rows"]) == 50
    assert body["totals"]["open_positions"] == 5000
    assert body["totals"]["gross_exposure"] == 50 * 100 * 10 * 100


def _pnl_book(engine: Engine, rates: dict[str, str]) -> None:
    """A dollar account: a closed euro trade (+10 euro points x 2, less a 1.1 dollar fee) and an
    open yen one (+100 yen a share on 10 shares), and a closed dollar trade (+5)."""
    now_events(
        engine,
        f.account_fx(1, "100000", rates),
        f.instrument(2, "SX5E", multiplier="2", currency="EUR"),
        f.instrument(3, "7203.T", currency="JPY"),
        f.order(4, "e-1", symbol="SX5E", qty="1"),
        f.fill(5, "e-1", "e-1", symbol="SX5E", qty="1", price="100"),
        f.order(6, "e-2", symbol="SX5E", side="sell", qty="1"),
        f.fill(7, "e-2", "e-2", symbol="SX5E", side="sell", qty="1", price="110", fee="1.1"),
        f.order(8, "j-1", symbol="7203.T", qty="10"),
        f.fill(9, "j-1", "j-1", symbol="7203.T", qty="10", price="3000"),
        f.position(10, "10", symbol="7203.T"),
        f.order(11, "a-1", symbol="AAPL", qty="1"),
        f.fill(12, "a-1", "a-1", symbol="AAPL", qty="1", price="200"),
        f.order(13, "a-2", symbol="AAPL", side="sell", qty="1"),
        f.fill(14, "a-2", "a-2", symbol="AAPL", side="sell", qty="1", price="205"),
    )
    # The yen instrument's last price moves up 100 yen.
    Position.objects.filter(engine=engine, instrument__symbol="7203.T").update(
        last_price=Decimal(3100)
    )
    engine.refresh_from_db()


def test_the_engines_pnl_is_added_up_in_its_account_currency_at_its_rates(
    make_engine: MakeEngine, viewer: User
) -> None:
    engine, _ = make_engine("fx")
    _pnl_book(engine, {"EUR": "1.1", "JPY": "0.0067"})
    pnl = overview.engine_pnl(engine)
    # Realised: (20 euros less the 1.1 dollar fee, 1 euro) x 1.1 + 5 dollars.
    assert pnl["realized"] == pytest.approx(19 * 1.1 + 5)
    # Unrealised: 10 shares x 100 yen x 0.0067.
    assert pnl["unrealized"] == pytest.approx(6.7)
    assert (pnl["currency"], pnl["unconverted"]) == ("USD", [])
    page = text(client_for(viewer).get("/engines/fx/"))
    assert re.search(r'id="pnl-realized" class="num pos">\+25\.90<', page)
    assert re.search(r'id="pnl-unrealized" class="num pos">\+6\.70<', page)
    row = re.search(r'<tr data-symbol="7203.T">.*?</tr>', page, re.S).group(0)  # type: ignore[union-attr]
    assert '<td class="muted">JPY</td>' in row


def test_a_pnl_in_a_currency_without_a_rate_is_unknown_never_counted_at_one(
    make_engine: MakeEngine, viewer: User
) -> None:
    engine, _ = make_engine("fx")
    _pnl_book(engine, {"EUR": "1.1"})
    pnl = overview.engine_pnl(engine)
    assert pnl["realized"] == pytest.approx(19 * 1.1 + 5)
    assert pnl["unrealized"] is None and pnl["unconverted"] == ["JPY"]
    page = text(client_for(viewer).get("/engines/fx/"))
    assert re.search(r'id="pnl-unrealized" class="num zero">unknown<', page)
    assert "(no FX rate for JPY)" in page
