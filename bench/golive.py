"""Time to recompute every engine's go-live gate (100 engines, their stage begun 30 days ago),
and to compare every engine with its baseline over 90 days (all figures of golive.comparison).

    .venv/bin/python bench/golive.py [--engines 100] [--days 30] [--compare-days 90] [--runs 7]

Starts what it needs (embedded PostgreSQL/Redis unless DATABASE_URL / REDIS_URL are set), creates
a scratch database, migrates it and seeds, with set-based SQL, per engine and day: 40 fills (20
round trips) and their orders (one in 150 rejected), an account snapshot every 30 minutes, 50
logs (an error every few days), and an event frame every 5 minutes (with a disconnect recovered
once). Fills, orders and snapshots go back ``--compare-days`` (with a latency_ms sample an hour),
logs and frames ``--days``; each engine's stage began ``--days`` ago (its stage history). The
engines are spread over the five stages, each with a baseline.
Then, in this process, ``golive.gates.reports`` of every engine ``--runs`` times after one untimed
run, counting the queries. Floor, in the same run on the same database: one aggregate query over
every fill (count and notional per engine).
Then ``golive.comparison.compare_many`` of every engine over the last ``--compare-days`` (the
shadow engines against their paper neighbour's record, the others against their backtest), the
same way; its floor: one aggregate per engine over the rows it must read (fills, orders,
snapshots, latency samples of the period). The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402
    drop_database,
    migrated_django,
    recreate_database,
    with_database,
)

from controlplane.config import embedded  # noqa: E402

BENCH_DB = "controlplane_bench_golive"
TARGET_MS = 1000.0
COMPARE_TARGET_MS = 2000.0
STAGES = ["backtest", "paper", "shadow", "small_capital", "full"]

SEED_SQL = """
INSERT INTO controlplane_instrument (symbol, sector, asset_class, multiplier, currency,
    described_by)
SELECT 'S' || i, 'tech', 'equity', 1, 'USD', '' FROM generate_series(1, 10) AS i;

-- 20 round trips a day: a buy at 100 then a sell 2 minutes later at 100.5 or 99.6.
INSERT INTO controlplane_order (engine_id, client_order_id, broker_order_id, instrument_id, side,
    order_type, quantity, expected_price, status, filled_quantity, reject_reason, created_at,
    updated_at, last_seq)
SELECT e.id, 'o' || g, '', (SELECT min(id) FROM controlplane_instrument) + (g / 2) %% 10,
    CASE WHEN g %% 2 = 0 THEN 'buy' ELSE 'sell' END, 'market', 10, 100,
    CASE WHEN g %% 150 = 149 THEN 'rejected' ELSE 'filled' END, 10, '',
    %(start)s + (g / 2) * interval '36 minutes' + (g %% 2) * interval '2 minutes',
    %(start)s + (g / 2) * interval '36 minutes' + (g %% 2) * interval '2 minutes', g + 1
FROM controlplane_engine e, generate_series(0, %(fills)s - 1) AS g;

INSERT INTO controlplane_fill (engine_id, fill_id, order_id, instrument_id, side, quantity, price,
    fee, expected_price, liquidity, ts, seq)
SELECT o.engine_id, 'f' || o.last_seq, o.id, o.instrument_id, o.side, 10,
    CASE WHEN o.side = 'buy' THEN 100.01
         WHEN (o.last_seq / 2) %% 5 < 3 THEN 100.5 ELSE 99.6 END,
    0.1, 100, 'taker', o.created_at, o.last_seq
FROM controlplane_order o WHERE o.status = 'filled';

INSERT INTO controlplane_accountsnapshot (engine_id, ts, equity, cash, margin_used, currency, seq)
SELECT e.id, %(start)s + g * interval '30 minutes',
    1000000 + g * 5 + (g %% 48) * 20 - e.id %% 7 * g, 500000, 0, 'USD', 100000 + g
FROM controlplane_engine e, generate_series(0, %(snapshots)s - 1) AS g;

INSERT INTO controlplane_metricsample (engine_id, ts, name, value, seq)
SELECT e.id, %(start)s + g * interval '1 hour', 'latency_ms', 5 + g %% 17, 300000 + g
FROM controlplane_engine e, generate_series(0, %(samples)s - 1) AS g;

INSERT INTO controlplane_enginelog (engine_id, ts, level, message, context, seq)
SELECT e.id, %(recent)s + g * interval '1 day' / 50,
    CASE WHEN g %% 173 = 0 AND e.id %% 2 = 0 THEN 'error' ELSE 'info' END, 'tick', '{}',
    200000 + g
FROM controlplane_engine e, generate_series(0, %(logs)s - 1) AS g;

-- A frame every 5 minutes; one gap of 20 minutes in the middle, after which the first frame
-- holds events the journal kept (their time 10 minutes before they arrived).
INSERT INTO controlplane_eventframe (engine_id, first_seq, last_seq, received_at, first_ts,
    events)
SELECT e.id, 1 + g * 10, 10 + g * 10, %(recent)s + g * interval '5 minutes', t.ts,
    json_build_array(json_build_object('seq', 1 + g * 10, 'kind', 'log', 'ts', t.ts))
FROM controlplane_engine e, generate_series(0, %(frames)s - 1) AS g,
    LATERAL (SELECT %(recent)s + g * interval '5 minutes'
        - CASE WHEN g = %(frames)s / 2 + 4 THEN interval '10 minutes' ELSE interval '0' END
        AS ts) AS t
WHERE g NOT BETWEEN %(frames)s / 2 + 1 AND %(frames)s / 2 + 3;

-- The current stage began --days ago.
INSERT INTO controlplane_stagechange (engine_id, from_stage, to_stage, at, actor_label, reason,
    override)
SELECT e.id, '', e.stage, %(recent)s, 'bench', '', false FROM controlplane_engine e;
"""


def seed(n_engines: int, days: int, data_days: int) -> dict[str, int]:
    from django.db import connection

    from controlplane.models import Engine
    from dashboard.models import Baseline

    now = datetime.now(UTC)
    recent = now - timedelta(days=days)
    start = now - timedelta(days=data_days)
    Engine.objects.bulk_create(
        Engine(
            name=f"engine-{i:03d}",
            mode="live" if STAGES[i % 5] in ("small_capital", "full") else "paper",
            stage=STAGES[i % 5],
            strategy_tags=["bench"],
            token_hash=f"bench-golive-{i:04d}",
            token_hint=f"{i:04d}",
        )
        for i in range(n_engines)
    )
    Engine.objects.update(created_at=start)
    curve_start = start - timedelta(days=400)
    Baseline.objects.bulk_create(
        Baseline(
            engine=engine,
            name="bt",
            sharpe=1.4,
            win_rate_pct=60.0,
            trades_per_day=40.0,
            expected_annual_return_pct=10.0,
            equity_curve=[
                [(curve_start + timedelta(days=d)).isoformat(), str(100 + d % 9)]
                for d in range(0, 400, 5)
            ],
        )
        for engine in Engine.objects.all()
    )
    params = {
        "start": start,
        "recent": recent,
        "fills": data_days * 40,
        "snapshots": data_days * 48,
        "samples": data_days * 24,
        "logs": days * 50,
        "frames": days * 288,
    }
    with connection.cursor() as cursor:
        for statement in SEED_SQL.split(";\n\n"):
            if statement.strip():
                cursor.execute(
                    statement, {k: v for k, v in params.items() if f"%({k})" in statement}
                )
        # What autovacuum does to an append-only table once enough rows came in: its visibility
        # map lets the gates read the event log from its index alone. Thirty days of data are
        # that old in production; only the last minutes' frames are not.
        cursor.execute("VACUUM ANALYZE")
        counts = {}
        for table in (
            "fill",
            "order",
            "accountsnapshot",
            "metricsample",
            "enginelog",
            "eventframe",
        ):
            cursor.execute(f"SELECT count(*) FROM controlplane_{table}")
            counts[table] = cursor.fetchone()[0]
    return counts


def floor_ms(runs: int) -> list[float]:
    from django.db import connection

    times = []
    with connection.cursor() as cursor:
        for i in range(runs + 1):
            started = time.perf_counter()
            cursor.execute(
                "SELECT engine_id, count(*), sum(price * quantity) FROM controlplane_fill "
                "GROUP BY engine_id"
            )
            cursor.fetchall()
            if i:
                times.append((time.perf_counter() - started) * 1000)
    return times


def compare_floor_ms(runs: int, start: datetime, end: datetime) -> list[float]:
    """The least any comparison must do: read, per engine, the period's fills, orders, snapshots
    and latency samples once (a count and a sum of each), in one query."""
    from django.db import connection

    sql = """
        SELECT engine_id, count(*), sum(price * quantity) FROM controlplane_fill
            WHERE ts >= %(s)s AND ts < %(e)s GROUP BY engine_id
        UNION ALL SELECT engine_id, count(*), sum(filled_quantity) FROM controlplane_order
            WHERE created_at >= %(s)s AND created_at < %(e)s GROUP BY engine_id
        UNION ALL SELECT engine_id, count(*), sum(equity) FROM controlplane_accountsnapshot
            WHERE ts >= %(s)s AND ts < %(e)s GROUP BY engine_id
        UNION ALL SELECT engine_id, count(*), sum(value)::numeric FROM controlplane_metricsample
            WHERE name = 'latency_ms' AND ts >= %(s)s AND ts < %(e)s GROUP BY engine_id
    """
    times = []
    with connection.cursor() as cursor:
        for i in range(runs + 1):
            started = time.perf_counter()
            cursor.execute(sql, {"s": start, "e": end})
            cursor.fetchall()
            if i:
                times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--compare-days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    began = time.monotonic()

    with embedded.embedded_services(quiet=True) as service_env:
        env = {**os.environ, **service_env}
        admin_url = env["DATABASE_URL"]
        db_url = with_database(admin_url, BENCH_DB)
        recreate_database(admin_url, BENCH_DB)
        try:
            migrated_django(env, db_url)
            from django.db import connection
            from django.test.utils import CaptureQueriesContext

            from controlplane.models import Engine
            from golive import comparison, gates

            seeding = time.perf_counter()
            counts = seed(args.engines, args.days, max(args.days, args.compare_days))
            seeded_s = time.perf_counter() - seeding
            engines = list(Engine.objects.order_by("name"))
            now = datetime.now(UTC)
            gates.reports(engines, now)  # warm-up
            wall, queries = [], []
            reports = []
            for _ in range(args.runs):
                with CaptureQueriesContext(connection) as captured:
                    started = time.perf_counter()
                    reports = gates.reports(engines, now)
                    wall.append((time.perf_counter() - started) * 1000)
                queries.append(len(captured.captured_queries))
            if os.environ.get("BENCH_PROFILE"):
                for q in captured.captured_queries:
                    print(q["time"], " ".join(q["sql"].split())[:110])
            floor = floor_ms(args.runs)

            # Every engine against its baseline over --compare-days: a shadow engine against the
            # paper engine before it (the same strategy an earlier stage), the rest its backtest.
            compare_end = now
            compare_start = now - timedelta(days=args.compare_days)
            requests = [
                comparison.Request(
                    engine,
                    compare_start,
                    compare_end,
                    engines[i - 1] if engine.stage == "shadow" and i else None,
                )
                for i, engine in enumerate(engines)
            ]
            comparison.compare_many(requests)  # warm-up
            compare_wall, compare_queries = [], []
            compared = []
            for _ in range(args.runs):
                with CaptureQueriesContext(connection) as captured:
                    started = time.perf_counter()
                    compared = comparison.compare_many(requests)
                    compare_wall.append((time.perf_counter() - started) * 1000)
                compare_queries.append(len(captured.captured_queries))
            compare_floor = compare_floor_ms(args.runs, compare_start, compare_end)
            figures = sum(len(c.figures) for c in compared)
            measured = sum(1 for c in compared for f in c.figures if f.live is not None)
            significant = sum(1 for c in compared if c.significant)
            ready = {stage: 0 for stage in STAGES}
            unknown = sum(len(r.unknown) for r in reports)
            criteria = sum(len(r.criteria) for r in reports)
            for r in reports:
                ready[r.from_stage] += r.ready
            load = os.getloadavg()[0]
        finally:
            if "django" in sys.modules:
                from django.db import connections

                connections.close_all()
            drop_database(admin_url, BENCH_DB)

    best, median = min(wall), statistics.median(wall)
    floor_best = min(floor)
    print(
        f"{args.engines} engines x {args.days} days: "
        + ", ".join(f"{n:,} {table}s" for table, n in counts.items())
        + f" (seeded in {seeded_s:.1f}s); {os.cpu_count()} CPUs, load average {load:.1f}; "
        f"{time.monotonic() - began:.0f}s in all"
    )
    print(
        f"  reports(all engines): best {best:.0f} ms, median {median:.0f} ms over {args.runs} "
        f"runs, {max(queries)} queries; {criteria} criteria, {unknown} unknown"
    )
    print(f"  floor (one aggregate over every fill): best {floor_best:.1f} ms")
    print(f"  ratio to the floor (best): {best / floor_best:.1f}x")
    print(f"  ready for the next stage, by stage: {ready}")
    print(f"target: under {TARGET_MS:.0f} ms: {'met' if median < TARGET_MS else 'MISSED'}")
    c_best, c_median = min(compare_wall), statistics.median(compare_wall)
    c_floor = min(compare_floor)
    print(
        f"  compare_many(all engines, {args.compare_days} days): best {c_best:.0f} ms, median "
        f"{c_median:.0f} ms over {args.runs} runs, {max(compare_queries)} queries; {figures} "
        f"figures ({measured} measured live), {significant} significant divergences"
    )
    print(f"  floor (one aggregate per engine over the period's rows): best {c_floor:.1f} ms")
    print(f"  ratio to the floor (best): {c_best / c_floor:.1f}x")
    print(
        f"target: comparison under {COMPARE_TARGET_MS:.0f} ms: "
        f"{'met' if c_median < COMPARE_TARGET_MS else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "metric": "golive_reports_ms_median",
                "value": round(median, 1),
                "best": round(best, 1),
                "queries": max(queries),
                "floor_ms": round(floor_best, 2),
                "ratio_to_floor": round(best / floor_best, 1),
                "engines": args.engines,
                "days": args.days,
                "fills": counts["fill"],
                "compare_ms_median": round(c_median, 1),
                "compare_best": round(c_best, 1),
                "compare_queries": max(compare_queries),
                "compare_floor_ms": round(c_floor, 2),
                "compare_ratio_to_floor": round(c_best / c_floor, 1),
                "compare_days": args.compare_days,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
