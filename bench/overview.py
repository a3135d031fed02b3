"""Server-side render time of the fleet overview with 50 engines and 5,000 positions.

    .venv/bin/python bench/overview.py [--engines 50] [--positions 5000] [--renders 50]

Starts what it needs (embedded PostgreSQL/Redis unless DATABASE_URL / REDIS_URL are set), creates
a scratch database, migrates it and bulk-creates the engines (connected, with equity, P&L and
drawdown), their positions, some working and finished orders of today and latency samples. Then,
in this process with the settings from the environment, a viewer logged in through Django's test
Client GETs ``/`` (the fleet overview, whatever its template renders today) and
``/live/fleet.json`` (the snapshot the live page fetches) ``--renders`` times each, after a few
untimed warm-up requests, counting the queries of each request (CaptureQueriesContext).
Baseline, in the same run on the same database: a bare psycopg SELECT of the same engines and
positions. The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402 - bench/ is first on the path
    drop_database,
    migrated_django,
    pct,
    recreate_database,
    with_database,
)

from controlplane.config import embedded  # noqa: E402

BENCH_DB = "controlplane_bench_overview"
TARGET_MS = 150.0


def seed(n_engines: int, n_positions: int) -> Any:
    """Bulk-create the fleet; return the viewer."""
    from django.contrib.auth.models import Group, User

    from controlplane import roles
    from controlplane.models import Engine, Instrument, MetricSample, Order, Position

    now = datetime.now(UTC)
    per_engine = math.ceil(n_positions / n_engines)
    modes = ["live", "paper", "shadow", "backtest"]
    # Each engine at the stage its mode needs (the live ones in full production).
    stage_of_mode = {"live": "full", "paper": "paper", "shadow": "shadow", "backtest": "backtest"}
    sectors = ["tech", "energy", "health", "finance", "consumer", "industrial"]
    instruments = Instrument.objects.bulk_create(
        Instrument(symbol=f"S{i:04d}", sector=sectors[i % len(sectors)])
        for i in range(max(per_engine * 2, 200))
    )
    engines = Engine.objects.bulk_create(
        Engine(
            name=f"engine-{i:03d}",
            mode=modes[i % len(modes)],
            stage=stage_of_mode[modes[i % len(modes)]],
            broker="bench",
            account=f"acct-{i}",
            strategy_tags=[["momentum", "meanrev", "stat-arb", "market-making"][i % 4], "bench"],
            desired_state="ACTIVE",
            reported_state="PAUSED" if i % 10 == 3 else "ACTIVE",
            token_hash=f"bench-overview-{i:04d}",
            token_hint=f"{i:04d}",
            connected=i % 7 != 0,
            last_seen_at=now - timedelta(seconds=i % 20),
            last_seq=1000,
            equity=Decimal(1_000_000 + 1000 * i),
            cash=Decimal(400_000),
            session_start_equity=Decimal(1_000_000),
            session_start_at=now.replace(hour=0),
            high_water_mark=Decimal(1_010_000 + 1000 * i),
            day_pnl=Decimal(1000 * i - 20_000),
            drawdown_pct=Decimal("0.99"),
        )
        for i in range(n_engines)
    )
    positions = []
    for e, engine in enumerate(engines):
        for j in range(per_engine):
            if len(positions) == n_positions:
                break
            instrument = instruments[(e * 7 + j) % len(instruments)]
            quantity = Decimal(0 if j % 10 == 9 else (j % 13 - 6) * 100 or 50)
            positions.append(
                Position(
                    engine=engine,
                    instrument=instrument,
                    quantity=quantity,
                    avg_price=Decimal("100.25"),
                    last_price=Decimal("101.5"),
                    realized_pnl=Decimal(j * 3),
                    reported_quantity=quantity + (1 if j == 5 and e % 5 == 0 else 0),
                    reported_at=now,
                    mismatch_since=now if j == 5 and e % 5 == 0 else None,
                )
            )
    Position.objects.bulk_create(positions, batch_size=2000)
    orders = []
    samples = []
    for engine in engines:
        for j in range(40):
            status = ["accepted", "partially_filled", "filled", "cancelled", "rejected"][j % 5]
            orders.append(
                Order(
                    engine=engine,
                    client_order_id=f"o-{j}",
                    instrument=instruments[j],
                    side="buy" if j % 2 else "sell",
                    order_type="limit",
                    quantity=Decimal(100),
                    limit_price=Decimal("100.5"),
                    status=status,
                    filled_quantity=Decimal(0),
                    created_at=now - timedelta(minutes=j),
                    updated_at=now,
                    last_seq=j + 1,
                )
            )
        for j in range(60):
            samples.append(
                MetricSample(
                    engine=engine,
                    ts=now - timedelta(seconds=j),
                    name="latency_ms",
                    value=2.0 + j % 5,
                    seq=100 + j,
                )
            )
    Order.objects.bulk_create(orders, batch_size=2000)
    MetricSample.objects.bulk_create(samples, batch_size=2000)
    user = User.objects.create_user("bench-viewer", email="viewer@example.invalid")
    user.groups.add(Group.objects.get(name=roles.VIEWER))
    return user


def timed(
    fetch: Callable[[], Any], renders: int, warmup: int = 3
) -> tuple[list[float], list[int], list[float], Any]:
    """ms per request, queries per request, ms of SQL per request, and the last response."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(warmup):
        fetch()
    wall, queries, sql = [], [], []
    response = None
    for _ in range(renders):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = fetch()
            wall.append((time.perf_counter() - started) * 1000)
        queries.append(len(captured.captured_queries))
        sql.append(sum(float(q["time"]) for q in captured.captured_queries) * 1000)
    return wall, queries, sql, response


def baseline(db_url: str, renders: int) -> list[float]:
    """A bare SELECT of the same engines and their positions, per round trip pair, in ms."""
    import psycopg

    times = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for i in range(renders + 3):
            started = time.perf_counter()
            engines = conn.execute(
                "SELECT * FROM controlplane_engine WHERE is_active ORDER BY name"
            ).fetchall()
            conn.execute(
                "SELECT * FROM controlplane_position WHERE engine_id = ANY(%s)",
                [[e[0] for e in engines]],
            ).fetchall()
            if i >= 3:
                times.append((time.perf_counter() - started) * 1000)
    return times


def line(what: str, wall: list[float], queries: list[int], sql: list[float]) -> str:
    return (
        f"  {what:<24} {pct(wall, 50):>8.1f} {pct(wall, 99):>8.1f} {max(wall):>8.1f} "
        f"{pct(sql, 50):>8.1f} {min(queries):>4}-{max(queries):<4}"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=50)
    parser.add_argument("--positions", type=int, default=5000)
    parser.add_argument("--renders", type=int, default=50)
    args = parser.parse_args()
    began = time.monotonic()

    with embedded.embedded_services(quiet=True) as service_env:
        env = {**os.environ, **service_env}
        admin_url = env["DATABASE_URL"]
        db_url = with_database(admin_url, BENCH_DB)
        recreate_database(admin_url, BENCH_DB)
        try:
            migrated_django(env, db_url)
            from django.test import Client

            seeding = time.perf_counter()
            user = seed(args.engines, args.positions)
            seeded_s = time.perf_counter() - seeding
            from controlplane.models import Engine, Position

            counts = (Engine.objects.count(), Position.objects.count())
            client = Client()
            client.force_login(user)
            page = timed(lambda: client.get("/"), args.renders)
            snapshot = timed(lambda: client.get("/live/fleet.json"), args.renders)
            bare = baseline(db_url, args.renders)
            for name, (_, _, _, response) in (("/", page), ("/live/fleet.json", snapshot)):
                if response.status_code != 200:
                    raise SystemExit(f"GET {name} answered {response.status_code}")
            rows = len(json.loads(snapshot[3].content)["rows"])
            load = os.getloadavg()[0]
        finally:
            if "django" in sys.modules:
                from django.db import connections

                connections.close_all()
            drop_database(admin_url, BENCH_DB)

    wall, queries, sql, response = page
    p50, p99 = pct(wall, 50), pct(wall, 99)
    bare_p50 = pct(bare, 50)
    print(
        f"{counts[0]} engines, {counts[1]} positions (seeded in {seeded_s:.1f}s); "
        f"{args.renders} timed requests each after 3 untimed; {os.cpu_count()} CPUs, "
        f"load average {load:.1f}; {time.monotonic() - began:.0f}s in all"
    )
    print(f"  {'ms':<24} {'p50':>8} {'p99':>8} {'max':>8} {'SQL p50':>8} queries")
    print(line("GET / (fleet page)", wall, queries, sql))
    print(line("GET /live/fleet.json", *snapshot[:3]))
    print(f"  {'bare psycopg SELECT':<24} {bare_p50:>8.1f} {pct(bare, 99):>8.1f} {max(bare):>8.1f}")
    print(
        f"/ is {len(response.content):,} bytes; fleet.json has {rows} rows, "
        f"{len(snapshot[3].content):,} bytes"
    )
    print(
        f"ratio to the bare SELECT (p50): page {p50 / bare_p50:.1f}x, "
        f"fleet.json {pct(snapshot[0], 50) / bare_p50:.1f}x"
    )
    print(
        f"target: p50 under {TARGET_MS:.0f} ms: {'met' if p50 < TARGET_MS else 'MISSED'}; "
        f"outside SQL (Python: view, template) {p50 - pct(sql, 50):.1f} ms of the "
        f"p50"
    )
    print(
        json.dumps(
            {
                "metric": "overview_render_ms_p50",
                "value": round(p50, 1),
                "p99": round(p99, 1),
                "queries": max(queries),
                "json_p50": round(pct(snapshot[0], 50), 1),
                "json_queries": max(snapshot[1]),
                "baseline_select_ms_p50": round(bare_p50, 2),
                "engines": counts[0],
                "positions": counts[1],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
