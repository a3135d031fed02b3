"""The engine page's equity and drawdown series: the whole session, peak from its own history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from controlplane.ingest.store import ingest_events
from controlplane.models import Engine
from dashboard import live, overview
from engine_sdk import protocol as p

pytestmark = pytest.mark.django_db

MakeEngine = Callable[..., tuple[Engine, str]]
SESSION_POINTS = 6000


def _equity(i: int) -> Decimal:
    """Up from 100,000 to the session's peak of 120,000 at point 100, then down in small waves to
    its trough at point 4,000 (a last drop of 500), then back up a little."""
    if i <= 100:
        return Decimal(100_000 + 200 * i)
    wave = 5 if i % 2 else -5
    if i <= 4000:
        return Decimal(120_000 - 9 * (i - 100) + wave - (500 if i == 4000 else 0))
    return Decimal(84_900 + (i - 4000) + wave)


def _session(engine: Engine, start: datetime) -> list[tuple[datetime, float]]:
    points = [(start + timedelta(seconds=i), _equity(i)) for i in range(SESSION_POINTS)]
    for first in range(0, SESSION_POINTS, 1000):
        ingest_events(
            engine_id=engine.pk,
            events=[
                p.AccountEvent(seq=10 + i, ts=ts, equity=equity, cash=equity)
                for i, (ts, equity) in enumerate(points[first : first + 1000], start=first)
            ],
        )
    return [(ts, float(equity)) for ts, equity in points]


@pytest.fixture
def session(make_engine: MakeEngine) -> tuple[Engine, list[tuple[datetime, float]]]:
    engine, _ = make_engine("alpha")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # Yesterday's session ended far higher: the all-time high-water mark is not today's peak.
    ingest_events(
        engine_id=engine.pk,
        events=[
            p.AccountEvent(
                seq=1, ts=today - timedelta(hours=2), equity=Decimal(200_000), cash=Decimal(200_000)
            )
        ],
    )
    points = _session(engine, today + timedelta(minutes=1))
    engine.refresh_from_db()
    assert engine.high_water_mark == Decimal(200_000)
    return engine, points


def _expected_drawdowns(points: list[tuple[datetime, float]]) -> dict[str, float]:
    peak = None
    drawdowns = {}
    for ts, equity in points:
        peak = equity if peak is None else max(peak, equity)
        drawdowns[ts.isoformat()] = 100.0 * (equity - peak) / peak
    return drawdowns


def test_the_drawdown_covers_the_whole_session_from_its_own_early_peak(
    session: tuple[Engine, list[tuple[datetime, float]]],
) -> None:
    engine, points = session

    series = overview.equity_series(engine)

    # The whole session, cut down for the chart, from its first snapshot to its last.
    assert len(series["ts"]) <= overview.EQUITY_POINTS
    assert series["ts"][0] == points[0][0].isoformat()
    assert series["ts"][-1] == points[-1][0].isoformat()
    assert series["ts"] == sorted(series["ts"])
    # Each point's drawdown is from the running peak of the session up to that point: zero while
    # the equity climbs to its early peak, never from yesterday's higher mark.
    expected = _expected_drawdowns(points)
    for ts, drawdown in zip(series["ts"], series["drawdown_pct"], strict=True):
        assert drawdown == pytest.approx(expected[ts], abs=1e-9), ts
    assert series["drawdown_pct"][0] == 0.0
    # The deepest drawdown of the session is on the chart: the trough (84,395 at point 4,000)
    # against the peak of 120,000 reached at point 100.
    assert min(expected.values()) == expected[points[4000][0].isoformat()]
    assert points[4000][0].isoformat() in series["ts"]
    assert min(series["drawdown_pct"]) == pytest.approx(100 * (84_395 - 120_000) / 120_000)
    assert series["peak"] == 120_000.0


def test_the_live_points_take_their_drawdown_from_the_session_peak_before_them(
    session: tuple[Engine, list[tuple[datetime, float]]],
) -> None:
    engine, points = session
    cursor = live._Cursor()
    live.engine_delta(engine.pk, cursor)
    assert cursor.equity_ts == points[-1][0]
    assert cursor.equity_peak == 120_000.0

    later = points[-1][0] + timedelta(seconds=1)
    ingest_events(
        engine_id=engine.pk,
        events=[
            p.AccountEvent(
                seq=10 + SESSION_POINTS, ts=later, equity=Decimal(90_000), cash=Decimal(90_000)
            ),
        ],
    )
    delta = live.engine_delta(engine.pk, cursor)

    assert delta is not None
    assert delta["equity"]["ts"] == [later.isoformat()]
    assert delta["equity"]["drawdown_pct"] == [pytest.approx(-25.0)]
