"""End-to-end ingest throughput: engines push fills over the real WebSocket path with acks.

    .venv/bin/python bench/ingest.py [--engines 4] [--events 200000] [--batch 2000]

Starts what it needs (embedded PostgreSQL/Redis unless DATABASE_URL / REDIS_URL are set), creates
a scratch database, runs uvicorn with the product's ASGI app, and has N protocol clients send
frames of order + fill events (pre-encoded, uncompressed), each waiting for the ack (durable
commit) before the next frame, with --window frames in flight.
Baseline, measured in the same run on the same PostgreSQL: a raw psycopg COPY of the same number
of rows into a table equal to the fill table (same columns, constraints and indexes).
Also printed: the CPU time each part spent per event (uvicorn with its children, the embedded
PostgreSQL's processes, the bench's own clients), which says more than the rate when other work
shares the machine, and the machine's load average before the run.
The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402 - bench/ is first on the path
    cpu_used,
    drop_database,
    free_port,
    postmaster_pid,
    recreate_database,
    start_uvicorn,
    tree_cpu,
    with_database,
)

from controlplane.config import embedded  # noqa: E402

BENCH_DB = "controlplane_bench"


def make_frames(n_events: int, batch: int, fills_per_order: int) -> list[bytes]:
    from engine_sdk import protocol as p

    t0 = datetime(2026, 11, 23, 14, tzinfo=UTC)
    events: list[p.Event] = []
    seq = 0
    order_no = 0
    while len(events) < n_events:
        order_no += 1
        seq += 1
        coid = f"o-{order_no}"
        qty = Decimal(fills_per_order * 10)
        events.append(
            p.OrderEvent(
                seq=seq,
                ts=t0 + timedelta(milliseconds=seq),
                client_order_id=coid,
                symbol=f"SYM{order_no % 50}",
                side="buy" if order_no % 2 else "sell",
                order_type="limit",
                quantity=qty,
                limit_price=Decimal("100.5"),
                status="accepted",
                expected_price=Decimal("100.25"),
            )
        )
        for k in range(fills_per_order):
            seq += 1
            events.append(
                p.FillEvent(
                    seq=seq,
                    ts=t0 + timedelta(milliseconds=seq),
                    fill_id=f"f-{order_no}-{k}",
                    client_order_id=coid,
                    symbol=f"SYM{order_no % 50}",
                    side="buy" if order_no % 2 else "sell",
                    quantity=Decimal(10),
                    price=Decimal("100.25") + Decimal(k) / 100,
                    fee=Decimal("0.01"),
                )
            )
    events = events[:n_events]
    return [p.encode(p.Events(events=events[i : i + batch])) for i in range(0, len(events), batch)]


async def run_engine(
    ws_url: str, token: str, frames: list[bytes], window: int
) -> tuple[int, float]:
    """Send every frame keeping up to ``window`` unacked; return (events acked, seconds)."""
    import websockets

    from engine_sdk import protocol as p

    hello = p.Hello(
        protocol=p.PROTOCOL_VERSION,
        engine_build="bench",
        config_hash="bench",
        mode="paper",
        broker="bench",
        account="bench",
        trading_state="ACTIVE",
        last_seq=0,
    )
    last_seqs = [p.decode_engine_frame(f).events[-1].seq for f in frames]  # type: ignore[union-attr]
    # No permessage-deflate: a client compressing on this same 2-core machine would spend the
    # server's CPU (about 3 us an event). Inflating costs the server about 0.5 us an event when an
    # SDK engine negotiates it (its default).
    async with websockets.connect(
        ws_url,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=16 * 2**20,
        compression=None,
    ) as ws:
        await ws.send(p.encode(hello).decode())
        welcome = p.decode_server_frame(await ws.recv())
        assert isinstance(welcome, p.Welcome), welcome
        started = time.perf_counter()
        sent = 0
        acked_frames = 0
        while acked_frames < len(frames):
            while sent < len(frames) and sent - acked_frames < window:
                await ws.send(frames[sent], text=True)  # pre-encoded UTF-8, sent as is
                sent += 1
            reply = p.decode_server_frame(await ws.recv())
            if isinstance(reply, p.Ack):
                while acked_frames < len(frames) and last_seqs[acked_frames] <= reply.seq:
                    acked_frames += 1
            elif isinstance(reply, p.Error):
                raise RuntimeError(f"server error: {reply}")
        return last_seqs[-1], time.perf_counter() - started


def copy_baseline(db_url: str, rows: int) -> float:
    import msgspec
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (LIKE controlplane_fill INCLUDING ALL)")
        # LIKE does not copy foreign keys: add whichever the fill table has.
        for (definition,) in conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'controlplane_fill'::regclass AND contype = 'f'"
        ).fetchall():
            conn.execute(f"ALTER TABLE bench_copy ADD {definition}")
        engine_id, order_id, instrument_id = conn.execute(
            "SELECT engine_id, id, instrument_id FROM controlplane_order LIMIT 1"
        ).fetchone()
        ts = datetime(2026, 11, 23, 14, tzinfo=UTC)
        data = [
            (
                engine_id,
                f"c-{i}",
                order_id,
                instrument_id,
                "buy",
                Decimal(10),
                Decimal("100.25"),
                Decimal("0.01"),
                Decimal("100.25"),
                "",
                ts,
                i + 1,
            )
            for i in range(rows)
        ]
        started = time.perf_counter()
        # Decimals and datetimes to text in one pass, as the ingest does: psycopg's own dumper
        # for an aware datetime costs more than the rest of the row.
        text_rows = msgspec.to_builtins(data)
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(
                "COPY bench_copy (engine_id, fill_id, order_id, instrument_id, side, quantity, "
                "price, fee, expected_price, liquidity, ts, seq) FROM STDIN"
            ) as copy,
        ):
            for row in text_rows:
                copy.write_row(row)
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE bench_copy")
    return rows / elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--events", type=int, default=200_000, help="in total, over all engines")
    parser.add_argument("--batch", type=int, default=2000, help="events per frame")
    parser.add_argument("--fills-per-order", type=int, default=9)
    parser.add_argument("--window", type=int, default=2, help="unacked frames in flight")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()

    with embedded.embedded_services(quiet=True) as service_env:
        env = {**os.environ, **service_env}
        admin_url = env["DATABASE_URL"]
        db_url = with_database(admin_url, BENCH_DB)
        recreate_database(admin_url, BENCH_DB)
        server = None
        try:
            child_env = {
                **env,
                "DATABASE_URL": db_url,
                "CONTROLPLANE_ENV": "demo",
                "DEBUG": "0",
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "-v", "0"],
                cwd=ROOT,
                env=child_env,
                check=True,
            )
            tokens = json.loads(
                subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        "import django, json, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE',"
                        "'controlplane.config.settings'); django.setup();"
                        "from controlplane import services;"
                        f"print(json.dumps([services.engine_create(name=f'bench-{{i}}')[1] "
                        f"for i in range({args.engines})]))",
                    ],
                    cwd=ROOT,
                    env=child_env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            port = free_port()
            server = start_uvicorn(port, child_env, workers=args.workers, quiet=False)
            per_engine = args.events // args.engines
            frames = make_frames(per_engine, args.batch, args.fills_per_order)
            ws_url = f"ws://127.0.0.1:{port}/ws/engine/v1"

            async def all_engines() -> list[tuple[int, float]]:
                return await asyncio.gather(
                    *(run_engine(ws_url, t, frames, args.window) for t in tokens)
                )

            load_before = os.getloadavg()[0]
            pg_root = postmaster_pid()
            web_before, pg_before = tree_cpu(server.pid), tree_cpu(pg_root)
            client_before = time.process_time()
            started = time.perf_counter()
            results = asyncio.run(all_engines())
            elapsed = time.perf_counter() - started
            client_cpu = time.process_time() - client_before
            web_cpu = cpu_used(web_before, tree_cpu(server.pid))
            pg_cpu = cpu_used(pg_before, tree_cpu(pg_root)) if pg_root else None
            total = sum(n for n, _ in results)
            rate = total / elapsed

            import psycopg

            with psycopg.connect(db_url) as conn:
                stored = conn.execute("SELECT count(*) FROM controlplane_engineevent").fetchone()[0]
                fills = conn.execute("SELECT count(*) FROM controlplane_fill").fetchone()[0]
            if stored != total:
                raise SystemExit(f"stored {stored} events, expected {total}")
            baseline = copy_baseline(db_url, min(total, 200_000))
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(15)
                except subprocess.TimeoutExpired:
                    server.kill()
            drop_database(admin_url, BENCH_DB)

    print(f"engines: {args.engines}, events: {total} ({fills} fills), batch {args.batch}")
    print(f"end to end over WebSocket with acks: {rate:,.0f} events/s in {elapsed:.2f}s")
    per_event = 1e6 / total
    pg_part = f"PostgreSQL {pg_cpu * per_event:.1f}" if pg_cpu is not None else "PostgreSQL ?"
    print(
        f"CPU per event: web {web_cpu * per_event:.1f} us, {pg_part} us, bench clients "
        f"{client_cpu * per_event:.1f} us (on {os.cpu_count()} cores, 50,000 events/s leaves "
        f"{os.cpu_count() * 20:.0f} us)"
    )
    print(f"load average of the machine (1 min) before the run: {load_before:.1f}")
    print(f"raw psycopg COPY into an equal table: {baseline:,.0f} rows/s")
    print(f"ratio: {rate / baseline:.3f}")
    print(
        json.dumps(
            {
                "metric": "ingest_events_per_s",
                "value": round(rate),
                "baseline": round(baseline),
                "ratio": round(rate / baseline, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
