"""Time to build the weekly report (the figures of the e-mail and the page) for 50 engines that
have traded for a year.

    .venv/bin/python bench/report.py [--engines 50] [--days 365] [--runs 5]

Starts what it needs (embedded PostgreSQL/Redis unless DATABASE_URL / REDIS_URL are set), creates
a scratch database of its own, migrates it and seeds it with set-based SQL, per engine and day:
40 fills (20 round trips over 10 instruments, some of them futures with a multiplier, one in
EUR, a fee in nine in EUR; one trip in four held 20 hours, so positions are open at the week's
start) and an account snapshot every 2 hours; the last 30 days' orders and a latency sample an
hour (the report reads only the week's: older ones would only make the seed longer); every
engine has a backtest baseline, so the report compares each one with it (golive.comparison).
Then, in this process, ``dashboard.reports.weekly.weekly_report`` of the last whole ISO week
(UTC) and its CSV, ``--runs`` times after one untimed run, counting the queries. The e-mail's
PNG charts are left out: they are drawn by a headless Chromium (charts.render_pngs), which has
nothing to do with what the report reads. Floor, in the same run on the same database: a bare
SELECT of the rows the week's figures are made of (the week's fills, snapshots, orders and
samples). The last line printed is the JSON result.
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

BENCH_DB = "controlplane_bench_report"
TARGET_MS = 5000.0

SEED_SQL = """
INSERT INTO controlplane_instrument (symbol, sector, asset_class, multiplier, currency,
    described_by)
SELECT 'R' || i, 'tech', CASE WHEN i %% 5 = 4 THEN 'future' ELSE 'equity' END,
    CASE WHEN i %% 5 = 4 THEN 50 ELSE 1 END, CASE WHEN i = 7 THEN 'EUR' ELSE 'USD' END, ''
FROM generate_series(0, 9) AS i;

-- 20 round trips a day per engine: a buy, then a sell of the same instrument 2 minutes later,
-- or (one in four) 20 hours later, across midnight.
INSERT INTO controlplane_fill (engine_id, fill_id, order_id, instrument_id, side, quantity, price,
    fee, fee_currency, expected_price, liquidity, ts, seq)
SELECT e.id, 'f' || g, g + 1, (SELECT min(id) FROM controlplane_instrument) + (g / 2) %% 10,
    CASE WHEN g %% 2 = 0 THEN 'buy' ELSE 'sell' END, 10,
    CASE WHEN g %% 2 = 0 THEN 100.01 WHEN (g / 2) %% 5 < 3 THEN 100.5 ELSE 99.6 END,
    0.1, CASE WHEN g %% 9 = 0 THEN 'EUR' ELSE '' END, 100, 'taker', t.ts, g + 1
FROM controlplane_engine e, generate_series(0, %(fills)s - 1) AS g,
    LATERAL (SELECT %(start)s + (g / 2) * interval '72 minutes' + (g %% 2) *
        CASE WHEN (g / 2) %% 4 = 3 THEN interval '20 hours' ELSE interval '2 minutes' END
        AS ts) AS t;

-- The orders of the last 30 days (the report counts the week's; older ones are never read).
INSERT INTO controlplane_order (engine_id, client_order_id, broker_order_id, instrument_id, side,
    order_type, quantity, expected_price, status, filled_quantity, reject_reason, created_at,
    updated_at, last_seq)
SELECT f.engine_id, 'o' || f.seq, '', f.instrument_id, f.side, 'market', 10, 100,
    CASE WHEN f.seq %% 150 = 149 THEN 'rejected' ELSE 'filled' END, 10, '', f.ts, f.ts, f.seq
FROM controlplane_fill f WHERE f.ts >= %(recent)s;

INSERT INTO controlplane_accountsnapshot (engine_id, ts, equity, cash, margin_used, currency, seq)
SELECT e.id, %(start)s + g * interval '2 hours',
    1000000 + g * 5 + (g %% 12) * 20 - e.id %% 7 * g, 500000, 0, 'USD', 2000000 + g
FROM controlplane_engine e, generate_series(0, %(days)s * 12 - 1) AS g;

INSERT INTO controlplane_metricsample (engine_id, ts, name, value, seq)
SELECT e.id, %(recent)s + g * interval '1 hour' + interval '30 minutes', 'latency_ms',
    5 + g %% 17, 3000000 + g
FROM controlplane_engine e, generate_series(0, 30 * 24 - 1) AS g
"""


def seed(n_engines: int, days: int, now: datetime) -> dict[str, int]:
    from django.db import connection

    from controlplane.models import Engine
    from dashboard.models import Baseline

    start = now - timedelta(days=days)
    Engine.objects.bulk_create(
        Engine(
            name=f"engine-{i:03d}",
            mode="paper",
            stage="paper",
            strategy_tags=["bench", f"book-{i % 3}"],
            token_hash=f"bench-report-{i:04d}",
            token_hint=f"{i:04d}",
            account_currency="USD",
            fx_rates={"EUR": "1.08"},
        )
        for i in range(n_engines)
    )
    Engine.objects.update(created_at=start)
    Baseline.objects.bulk_create(
        Baseline(
            engine=engine,
            name="bt",
            sharpe=1.4,
            win_rate_pct=60.0,
            trades_per_day=40.0,
            expected_annual_return_pct=10.0,
        )
        for engine in Engine.objects.all()
    )
    params = {"start": start, "recent": now - timedelta(days=30), "fills": days * 40, "days": days}
    with connection.cursor() as cursor:
        # The fill table's indexes are built once its rows are in (faster than row by row),
        # from their own definitions.
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'controlplane_fill' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
            "'controlplane_fill'::regclass AND contype = 'u'"
        )
        constraints = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f"DROP INDEX {name}")
        for name, _ in constraints:
            cursor.execute(f"ALTER TABLE controlplane_fill DROP CONSTRAINT {name}")
        for statement in SEED_SQL.split(";\n\n"):
            cursor.execute(statement, {k: v for k, v in params.items() if f"%({k})" in statement})
        for _, definition in indexes:
            cursor.execute(definition)
        for name, definition in constraints:
            cursor.execute(f"ALTER TABLE controlplane_fill ADD CONSTRAINT {name} {definition}")
        # What autovacuum does to append-only tables once enough rows came in (a year of data is
        # that old in production): the visibility map lets index-only scans skip the table.
        for table in ("fill", "order", "accountsnapshot", "metricsample"):
            cursor.execute(f"VACUUM ANALYZE controlplane_{table}")
        counts = {}
        for table in ("fill", "order", "accountsnapshot", "metricsample"):
            cursor.execute(f"SELECT count(*) FROM controlplane_{table}")
            counts[table] = cursor.fetchone()[0]
    return counts


def floor_ms(runs: int, ids: list[int], start: datetime, end: datetime) -> list[float]:
    """The least the report must read: the week's fills (every column the figures use), its
    snapshots, orders and samples of the engines, fetched by a bare SELECT each (through the
    same indexes the report can use)."""
    from django.db import connection

    sql = """
        SELECT f.engine_id, f.instrument_id, f.side, f.quantity, f.price, f.fee,
            f.expected_price, f.ts, f.fee_currency FROM controlplane_fill f
            WHERE f.engine_id = ANY(%(ids)s) AND f.ts >= %(s)s AND f.ts < %(e)s;
        SELECT engine_id, ts, equity FROM controlplane_accountsnapshot
            WHERE engine_id = ANY(%(ids)s) AND ts >= %(s)s AND ts < %(e)s;
        SELECT engine_id, status FROM controlplane_order
            WHERE engine_id = ANY(%(ids)s) AND created_at >= %(s)s AND created_at < %(e)s;
        SELECT engine_id, ts, value FROM controlplane_metricsample
            WHERE engine_id = ANY(%(ids)s) AND name = 'latency_ms' AND ts >= %(s)s
                AND ts < %(e)s
    """
    times = []
    with connection.cursor() as cursor:
        for i in range(runs + 1):
            started = time.perf_counter()
            for statement in sql.split(";"):
                cursor.execute(statement, {"ids": ids, "s": start, "e": end})
                cursor.fetchall()
            if i:
                times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=50)
    parser.add_argument("--days", type=int, default=365)
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
            from zoneinfo import ZoneInfo

            from django.db import connection
            from django.test.utils import CaptureQueriesContext

            from controlplane.models import Engine
            from dashboard.reports import analytics, weekly

            now = datetime.now(UTC)
            seeding = time.perf_counter()
            counts = seed(args.engines, args.days, now)
            seeded_s = time.perf_counter() - seeding
            tz = ZoneInfo("UTC")
            week = analytics.previous_iso_week(now, tz)
            period = analytics.iso_week(week, tz)

            report = weekly.weekly_report(week, tz, now=now)  # warm-up
            wall, queries = [], []
            for _ in range(args.runs):
                with CaptureQueriesContext(connection) as captured:
                    started = time.perf_counter()
                    report = weekly.weekly_report(week, tz, now=now)
                    weekly.report_csv(report)
                    wall.append((time.perf_counter() - started) * 1000)
                queries.append(len(captured.captured_queries))
            if os.environ.get("BENCH_PROFILE"):
                for q in captured.captured_queries:
                    print(q["time"], " ".join(q["sql"].split())[:110])
            ids = list(Engine.objects.values_list("pk", flat=True))
            floor = floor_ms(args.runs, ids, period.start, period.end)
            fleet = report.fleet
            summary = {
                "trades": fleet.trades,
                "round_trips": fleet.round_trips,
                "round_trip_pnl": str(fleet.round_trip_pnl),
                "pnl": str(fleet.pnl),
                "compared": len(report.compared),
            }
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
        f"  weekly_report({week}) + CSV: best {best:.0f} ms, median {median:.0f} ms over "
        f"{args.runs} runs, {max(queries)} queries; fleet {summary}"
    )
    print(f"  floor (a bare SELECT of the week's rows): best {floor_best:.1f} ms")
    print(f"  ratio to the floor (best): {best / floor_best:.1f}x")
    print(f"target: under {TARGET_MS:.0f} ms: {'met' if median < TARGET_MS else 'MISSED'}")
    print(
        json.dumps(
            {
                "metric": "weekly_report_ms_median",
                "value": round(median, 1),
                "best": round(best, 1),
                "queries": max(queries),
                "floor_ms": round(floor_best, 2),
                "ratio_to_floor": round(best / floor_best, 1),
                "engines": args.engines,
                "days": args.days,
                "fills": counts["fill"],
                "load": round(load, 1),
                **summary,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
