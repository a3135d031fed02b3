"""Live fan-out latency: engine events -> stored -> publisher -> Redis hub -> browser sockets.

    .venv/bin/python bench/fanout.py [--browsers 100] [--engines 10] [--rate 500]
                                     [--batch-interval 0.02] [--seconds 20] [--trace]
                                     [--profile DIR]

Starts what it needs (embedded PostgreSQL/Redis unless DATABASE_URL / REDIS_URL are set), creates
a scratch database, runs uvicorn (``--workers`` processes, one by default) with the product's
ASGI app, logs a viewer in
(one session per browser, made with the session store on the same database) and connects
``--browsers`` sockets to /ws/live/v1 subscribed to ``fleet``. ``--engines`` engines then stream
``--rate`` events/s each over /ws/engine/v1 (pre-encoded frames of order, fill, metric and account
events every ``--batch-interval`` seconds, as the SDK batches them; at most ``--window`` frames
unacked) for ``--warmup`` + ``--seconds`` seconds.

The last account event of batch k of an engine has equity 1,000,000 + k, so the fleet row a
browser receives says which batch it shows. Two figures, counted over the measured seconds:

- per row received (the headline): from the moment the engine sent batch k to the moment a
  browser received a fleet row of that engine showing batch k for the first time;
- per batch: from the moment each batch was sent until a browser showed it or a newer one (the
  batches a coalesced row skipped count too), which is what an operator's screen lags by.

Both clocks are this process's time.perf_counter(). ``--trace`` runs the server with its stages
wrapped to note their times (the product's code is not changed) and prints where the time goes;
``--profile DIR`` records uvicorn with py-spy. The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/ too: uvicorn imports this module by name for --trace, without the script's path.
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from _common import (  # noqa: E402 - bench/ is first on the path
    cpu_used,
    drop_database,
    filled_order,
    free_port,
    pct,
    postmaster_pid,
    recreate_database,
    start_uvicorn,
    stop_process,
    tree_cpu,
    viewers_and_engines,
    with_database,
)

from controlplane.config import embedded  # noqa: E402

BENCH_DB = "controlplane_bench_fanout"
EQUITY_BASE = 1_000_000
SYMBOLS = 50


# --- servers and the scratch database ----------------------------------------------------------


def setup_data(n_engines: int, n_browsers: int, prefix: str) -> None:
    """Run with the scratch database's settings: print tokens and sessions as one JSON line."""
    print(json.dumps(viewers_and_engines(n_engines, n_browsers, prefix)))


# --- the engines' frames -----------------------------------------------------------------------


def make_frames(n_batches: int, per_batch: int, start: datetime, interval: float) -> list[bytes]:
    """Batch k (1-based) of order, fill and metric events, ending with an account event whose
    equity is EQUITY_BASE + k. The same frames serve every engine (each has its own seqs)."""
    from engine_sdk import protocol as p

    frames = []
    seq = 0
    order_no = 0
    for k in range(1, n_batches + 1):
        ts = start + timedelta(seconds=k * interval)
        events: list[p.Event] = []
        body = max(per_batch - 2, 0)
        while body - len(events) >= 4:
            # A working order, two fills, then the order's final report: filled.
            order_no += 1
            side = "buy" if order_no % 2 else "sell"
            events += filled_order(ts, order_no, f"SYM{order_no % SYMBOLS}", side)
        while len(events) < body:
            events.append(p.MetricEvent(ts=ts, name="cpu_pct", value=float(len(events))))
        events.append(p.MetricEvent(ts=ts, name="latency_ms", value=1.0 + k % 10))
        events.append(
            p.AccountEvent(ts=ts, equity=Decimal(EQUITY_BASE + k), cash=Decimal(EQUITY_BASE))
        )
        for event in events:
            seq += 1
            event.seq = seq
        frames.append(p.encode(p.Events(events=events)))
    return frames


# --- engines and browsers, in this process's loop ----------------------------------------------


@dataclass
class EngineRun:
    name: str
    sent_at: list[float]  # index k: perf_counter when batch k went out (0 = not sent)
    acked_at: list[float]
    acked_events: int = 0
    sent_frames: int = 0
    sent_events: int = 0
    late: float = 0.0  # the longest a frame left behind its schedule (window full, loop busy)
    errors: list[str] = field(default_factory=list)


@dataclass
class Browser:
    updates: list[float] = field(default_factory=list)  # receive time of each update message
    shown: dict[str, int] = field(default_factory=dict)  # engine -> newest batch k seen
    row_ms: list[float] = field(default_factory=list)
    batch_ms: list[float] = field(default_factory=list)
    repeats: int = 0
    regressions: int = 0
    resyncs: int = 0
    seq_gaps: int = 0
    foreign_rows: int = 0
    last_seq: int = 0


async def run_engine(
    ws_url: str,
    token: str,
    run: EngineRun,
    frames: list[bytes],
    last_seqs: list[int],
    start: asyncio.Event,
    times: list[float],
    interval: float,
    window: int,
) -> None:
    """Send frame k at t0 + k * interval (times = [t0, end]) with at most ``window`` unacked;
    stop sending at ``end`` (a server that falls behind gets fewer frames, and says so in the
    events/s), then wait for the acks of what was sent."""
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
    async with websockets.connect(
        ws_url,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=16 * 2**20,
        compression=None,
        ping_interval=None,
    ) as ws:
        await ws.send(p.encode(hello).decode())
        welcome = p.decode_server_frame(await ws.recv())
        assert isinstance(welcome, p.Welcome), welcome
        n = len(frames)
        acked = 0  # frames fully acked
        room = asyncio.Event()

        async def reader() -> None:
            nonlocal acked
            async for raw in ws:
                reply = p.decode_server_frame(raw)
                if isinstance(reply, p.Ack):
                    now = time.perf_counter()
                    while acked < n and last_seqs[acked] <= reply.seq:
                        run.acked_at[acked + 1] = now
                        acked += 1
                    run.acked_events = reply.seq
                    room.set()
                elif isinstance(reply, p.Error):
                    run.errors.append(f"{reply.code}: {reply.message}")

        reading = asyncio.create_task(reader())

        async def until_acked(frames_acked: int, within: float) -> None:
            limit = time.perf_counter() + within
            while acked < frames_acked:
                room.clear()
                waiting = asyncio.ensure_future(room.wait())
                left = limit - time.perf_counter()
                await asyncio.wait(
                    {waiting, reading}, timeout=max(left, 0.0), return_when=asyncio.FIRST_COMPLETED
                )
                waiting.cancel()
                if reading.done():
                    reading.result()  # the connection failed: say why
                    raise RuntimeError(f"{run.name}: the server closed the socket")
                if time.perf_counter() >= limit and acked < frames_acked:
                    raise RuntimeError(f"{run.name}: frame {frames_acked} not acked in {within}s")

        try:
            await start.wait()
            t0, end = times
            for k in range(1, n + 1):
                delay = t0 + k * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await until_acked(k - window, 60)
                now = time.perf_counter()
                if now > end:
                    break
                run.late = max(run.late, now - (t0 + k * interval))
                run.sent_at[k] = now
                run.sent_frames = k
                await ws.send(frames[k - 1], text=True)  # pre-encoded UTF-8, sent as is
            await until_acked(run.sent_frames, 30)
            run.sent_events = last_seqs[run.sent_frames - 1] if run.sent_frames else 0
        finally:
            reading.cancel()


async def run_browser(
    url: str,
    headers: dict[str, str],
    browser: Browser,
    runs: dict[str, EngineRun],
    window: list[float],
    ready: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    import websockets

    async with websockets.connect(
        url, additional_headers=headers, max_size=16 * 2**20, ping_interval=None
    ) as ws:
        hello = json.loads(await ws.recv())
        if hello.get("type") != "hello":
            raise RuntimeError(f"browser socket refused: {hello}")
        await ws.send(json.dumps({"subscribe": ["fleet"]}))
        while True:
            message = json.loads(await ws.recv())
            if message.get("type") == "subscribed":
                browser.last_seq = message["seq"]
                break
        ready.set()
        stopping = asyncio.ensure_future(stop.wait())
        while True:
            receiving = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                receiving.cancel()
                return
            now = time.perf_counter()
            message = json.loads(receiving.result())
            if message["seq"] != browser.last_seq + 1:
                browser.seq_gaps += 1
            browser.last_seq = message["seq"]
            if message.get("type") != "update":
                continue
            counted = window[0] <= now <= window[1]
            if counted:
                browser.updates.append(now)
            if message.get("resync"):
                browser.resyncs += 1
            for update in message["updates"]:
                if update.get("topic") != "fleet":
                    continue
                for row in update["rows"]:
                    run = runs.get(row["name"])
                    if run is None:
                        browser.foreign_rows += 1
                        continue
                    if row["equity"] is None:
                        continue
                    k = round(row["equity"]) - EQUITY_BASE
                    before = browser.shown.get(row["name"], 0)
                    if k == before:
                        browser.repeats += 1
                        continue
                    if k < before:
                        browser.regressions += 1
                        continue
                    browser.shown[row["name"]] = k
                    sent = run.sent_at[k]
                    if window[0] <= sent <= window[1]:
                        browser.row_ms.append((now - sent) * 1000)
                    for j in range(before + 1, k + 1):
                        sent = run.sent_at[j]
                        if window[0] <= sent <= window[1]:
                            browser.batch_ms.append((now - sent) * 1000)


async def stall_probe(worst: list[float], stop: asyncio.Event) -> None:
    # How late a 1 ms sleep wakes up: the worst of it is how long this loop was busy.
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], time.perf_counter() - before - 0.001)


@dataclass
class Outcome:
    runs: dict[str, EngineRun]
    browsers: list[Browser]
    window: list[float]
    streamed: float  # seconds from the first send to the last ack
    stall: float
    connect_s: float


async def run_all(
    port: int, data: dict[str, Any], frames: list[bytes], args: argparse.Namespace
) -> Outcome:
    from engine_sdk import protocol as p

    last_seqs = [p.decode_engine_frame(f).events[-1].seq for f in frames]  # type: ignore[union-attr]
    n = len(frames)
    runs = {name: EngineRun(name, [0.0] * (n + 1), [0.0] * (n + 1)) for name in data["tokens"]}
    browsers = [Browser() for _ in data["sessions"]]
    window = [math.inf, -math.inf]
    stop = asyncio.Event()
    origin = f"http://127.0.0.1:{port}"
    live_url = f"ws://127.0.0.1:{port}/ws/live/v1"
    connecting = time.perf_counter()
    readies = []
    browser_tasks = []
    for browser, key in zip(browsers, data["sessions"], strict=True):
        ready = asyncio.Event()
        readies.append(ready)
        headers = {"Cookie": f"{data['cookie']}={key}", "Origin": origin}
        browser_tasks.append(
            asyncio.create_task(run_browser(live_url, headers, browser, runs, window, ready, stop))
        )
        await asyncio.sleep(0)
    waiting = asyncio.gather(*(r.wait() for r in readies))
    done, _ = await asyncio.wait(
        {waiting, *browser_tasks}, timeout=60, return_when=asyncio.FIRST_COMPLETED
    )
    if waiting not in done:
        for task in done:
            task.result()  # a browser that failed says why
        raise RuntimeError("browsers did not connect within 60s")
    connect_s = time.perf_counter() - connecting
    start = asyncio.Event()
    times = [0.0, 0.0]
    ws_url = f"ws://127.0.0.1:{port}/ws/engine/v1"
    pace = (start, times, args.batch_interval, args.window)
    engine_tasks = [
        asyncio.create_task(run_engine(ws_url, token, runs[name], frames, last_seqs, *pace))
        for name, token in data["tokens"].items()
    ]
    await asyncio.sleep(1.0)  # every engine's hello answered
    worst_stall = [0.0]
    probe_stop = asyncio.Event()
    probe = asyncio.create_task(stall_probe(worst_stall, probe_stop))
    t0 = time.perf_counter() + 0.05
    window[0] = t0 + args.warmup
    window[1] = times[1] = t0 + args.warmup + args.seconds
    times[0] = t0
    start.set()
    await asyncio.gather(*engine_tasks)
    streamed = max(max(r.acked_at) for r in runs.values()) - t0
    await asyncio.sleep(0.5)  # the last updates reach the browsers
    stop.set()
    probe_stop.set()
    await asyncio.gather(*browser_tasks, probe)
    return Outcome(runs, browsers, window, streamed, worst_stall[0], connect_s)


# --- --trace: where the time goes inside the server ---------------------------------------------
#
# uvicorn runs ``traced_application`` instead of the plain app: the same application with its
# stages wrapped to note time.perf_counter() values (CLOCK_MONOTONIC, comparable with this
# process's) into the file named by BENCH_TRACE_FILE. The product's code is not changed.


def traced_application() -> Any:
    import atexit
    import threading

    from controlplane.config import asgi
    from controlplane.gateway import batches
    from dashboard import consumers as live_consumers
    from dashboard import live

    out = open(os.environ["BENCH_TRACE_FILE"], "a", buffering=1)  # noqa: SIM115
    notes: list[tuple[Any, ...]] = []
    lock = threading.Lock()

    def flush() -> None:
        with lock:
            lines, notes[:] = notes[:], []
        out.write("".join(json.dumps(n) + "\n" for n in lines))

    def flusher() -> None:
        while True:
            time.sleep(0.5)
            flush()

    threading.Thread(target=flusher, daemon=True).start()
    atexit.register(flush)
    now = time.perf_counter

    events_many = batches.events_many

    def traced_events(batches: Any) -> Any:
        start = now()
        try:
            return events_many(batches)
        finally:
            notes.append(("events", start, now(), len(batches)))

    batches.events_many = traced_events
    publisher_cls = live.Publisher
    mark = publisher_cls.mark

    def traced_mark(self: Any, engine_id: int) -> None:
        notes.append(("mark", now(), now(), engine_id))
        mark(self, engine_id)

    publisher_cls.mark = traced_mark
    flush_ = publisher_cls.flush

    async def traced_flush(self: Any, engine_ids: set[int]) -> None:
        start = now()
        try:
            await flush_(self, engine_ids)
        finally:
            notes.append(("flush", start, now(), [self._seq["fleet"], len(engine_ids)]))

    publisher_cls.flush = traced_flush
    read = publisher_cls._read

    def traced_read(self: Any, engine_ids: set[int], watched: set[int]) -> Any:
        from django.db import connection

        def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            begun = now()
            try:
                return execute(sql, params, many, context)
            finally:
                # The statement by the table it reads first: where a flush's read goes.
                table = sql.split(" FROM ", 1)[-1].split()[0].strip('"')
                notes.append(("read_sql", begun, now(), table))

        start = now()
        try:
            with connection.execute_wrapper(timed):
                return read(self, engine_ids, watched)
        finally:
            notes.append(("read", start, now(), None))

    publisher_cls._read = traced_read
    encode = live.encode

    def traced_encode(updates: list[dict[str, Any]]) -> bytes:
        # The flush encodes its message just before it publishes it on the hub.
        fleet = next((u["seq"] for u in updates if u.get("topic") == live.FLEET), None)
        if fleet is not None:
            notes.append(("publish", now(), now(), fleet))
        return encode(updates)

    live.encode = traced_encode
    consumer_cls = live_consumers.LiveConsumer
    live_update = consumer_cls.live_update

    def traced_live_update(self: Any, message: dict[str, Any]) -> None:
        notes.append(("arrive", now(), now(), [id(self), message["seq"]]))
        live_update(self, message)

    consumer_cls.live_update = traced_live_update
    send = consumer_cls._send

    async def traced_send(self: Any, content: dict[str, Any]) -> None:
        start = now()
        try:
            await send(self, content)
        finally:
            if content.get("type") == "update":
                notes.append(("send", start, now(), id(self)))

    consumer_cls._send = traced_send
    return asgi.application


def read_trace(path: Path) -> list[tuple[str, float, float, Any]]:
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines() if line]


def print_breakdown(notes: list[tuple[str, float, float, Any]], window: list[float]) -> None:
    ms = 1000.0
    mine = [n for n in notes if window[0] <= n[1] <= window[1]]
    by: dict[str, list[tuple[str, float, float, Any]]] = defaultdict(list)
    for note in mine:
        by[note[0]].append(note)
    flushes = sorted(by["flush"], key=lambda n: n[1])
    starts = [f[1] for f in flushes]
    stages: dict[str, list[float]] = {}
    # One note per transaction, which stores the frames of every engine that waited for it.
    stages["events write (db thread, to commit)"] = [(n[2] - n[1]) * ms for n in by["events"]]
    stages["  frames stored together (a count)"] = [float(n[3]) for n in by["events"]]
    # A mark waits for the next flush to start (the publisher's 100 ms tick).
    waits = []
    for note in by["mark"]:
        i = bisect.bisect_left(starts, note[1])
        if i < len(starts):
            waits.append((starts[i] - note[1]) * ms)
    stages["marked dirty -> next flush starts"] = waits
    # The read runs in the default thread pool, where the engines' batch writes also run.
    queued = []
    for n in by["read"]:
        i = bisect.bisect_right(starts, n[1]) - 1
        if i >= 0:
            queued.append((n[1] - starts[i]) * ms)
    stages["flush starts -> its read starts"] = queued
    stages["flush: read fleet rows (db thread)"] = [(n[2] - n[1]) * ms for n in by["read"]]
    for n in by["read_sql"]:
        stages.setdefault(f"  read: FROM {n[3][:34]}", []).append((n[2] - n[1]) * ms)
    stages["flush: whole"] = [(n[2] - n[1]) * ms for n in flushes]
    sent_by_seq = {n[3]: n[1] for n in by["publish"]}
    stages["hub publish -> consumer gets it"] = [
        (n[1] - sent_by_seq[n[3][1]]) * ms for n in by["arrive"] if n[3][1] in sent_by_seq
    ]
    # Per consumer: how long each arrival waits for the consumer's next send (the 10/s limit).
    arrivals: dict[int, list[float]] = defaultdict(list)
    for n in by["arrive"]:
        arrivals[n[3][0]].append(n[1])
    holds = []
    for n in by["send"]:
        pending = arrivals.get(n[3], [])
        while pending and pending[0] <= n[1]:
            holds.append((n[1] - pending.pop(0)) * ms)
    stages["consumer gets it -> its send starts"] = holds
    stages["consumer send (encode + write)"] = [(n[2] - n[1]) * ms for n in by["send"]]
    if flushes:
        gaps = [(b - a) * ms for a, b in itertools.pairwise(starts)]
        stages["flush start -> next flush start"] = gaps
    print("server stages over the measured seconds (ms)")
    print(f"  {'':<42} {'n':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for name, values in stages.items():
        print(row(name, values, 42))


# --- figures -----------------------------------------------------------------------------------


def row(what: str, values: list[float], width: int = 34) -> str:
    if not values:
        return f"  {what:<{width}} {0:>7} {'-':>8}"
    cells = [pct(values, 50), pct(values, 90), pct(values, 99), max(values)]
    return f"  {what:<{width}} {len(values):>7} " + " ".join(f"{v:>8.1f}" for v in cells)


def start_profiler(directory: Path, pid: int) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        print("py-spy is not installed in the venv: no profile", file=sys.stderr)
        return None
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--rate",
            "250",
            "--threads",
            "--idle",
            "--format",
            "raw",
            "--output",
            str(directory / "uvicorn.txt"),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--browsers", type=int, default=100)
    parser.add_argument("--engines", type=int, default=10)
    parser.add_argument("--rate", type=int, default=500, help="events/s per engine")
    parser.add_argument("--batch-interval", type=float, default=0.02, help="seconds per frame")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="streamed before measuring")
    parser.add_argument("--window", type=int, default=50, help="unacked frames per engine")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--profile", type=Path, help="py-spy the server into this folder")
    parser.add_argument(
        "--trace", action="store_true", help="time the server's stages (adds a little overhead)"
    )
    parser.add_argument("--setup", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup is not None:
        setup_data(int(args.setup[0]), int(args.setup[1]), args.setup[2])
        return 0
    began = time.monotonic()
    per_batch = max(round(args.rate * args.batch_interval), 3)
    n_batches = math.ceil((args.warmup + args.seconds) / args.batch_interval)
    trace_file = None
    if args.trace:
        trace_file = Path(tempfile.mkstemp(prefix="cp-bench-trace-", suffix=".jsonl")[1])
    # Engine names carry this run's id: rows another run publishes on the same Redis are
    # recognised as foreign and left out.
    prefix = f"fanout-{os.getpid()}"

    with embedded.embedded_services(quiet=True) as service_env:
        env = {**os.environ, **service_env}
        admin_url = env["DATABASE_URL"]
        db_url = with_database(admin_url, BENCH_DB)
        recreate_database(admin_url, BENCH_DB)
        server = spy = None
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
            data = json.loads(
                subprocess.run(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--setup",
                        str(args.engines),
                        str(args.browsers),
                        prefix,
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
            app = ["controlplane.config.asgi:application"]
            if trace_file is not None:
                app = ["--factory", "bench.fanout:traced_application"]
                child_env["BENCH_TRACE_FILE"] = str(trace_file)
            server = start_uvicorn(port, child_env, app=app, workers=args.workers)
            frames = make_frames(
                n_batches, per_batch, datetime.now(UTC) + timedelta(seconds=3), args.batch_interval
            )
            if args.profile is not None:
                spy = start_profiler(args.profile, server.pid)
            pg_root = postmaster_pid()
            web_before, pg_before = tree_cpu(server.pid), tree_cpu(pg_root)
            client_before = time.process_time()
            load_before = os.getloadavg()[0]
            wall_before = time.perf_counter()
            outcome = asyncio.run(run_all(port, data, frames, args))
            wall = time.perf_counter() - wall_before
            client_cpu = time.process_time() - client_before
            web_cpu = cpu_used(web_before, tree_cpu(server.pid))
            pg_cpu = cpu_used(pg_before, tree_cpu(pg_root)) if pg_root else None
            load_after = os.getloadavg()[0]
            import psycopg

            with psycopg.connect(db_url) as conn:
                stored = conn.execute("SELECT count(*) FROM controlplane_engineevent").fetchone()[0]
        finally:
            stop_process(spy, signal.SIGINT)
            stop_process(server)
            drop_database(admin_url, BENCH_DB)
            notes = read_trace(trace_file) if trace_file is not None else []
            if trace_file is not None:
                trace_file.unlink(missing_ok=True)

    runs, browsers, window = outcome.runs, outcome.browsers, outcome.window
    acked = sum(r.acked_events for r in runs.values())
    expected = sum(r.sent_events for r in runs.values())
    errors = [e for r in runs.values() for e in r.errors]
    if acked != expected or stored != expected or errors:
        raise SystemExit(f"acked {acked}, stored {stored}, sent {expected}; errors: {errors[:3]}")
    events_per_s = stored / outcome.streamed
    measured = window[1] - window[0]
    row_ms = [v for b in browsers for v in b.row_ms]
    batch_ms = [v for b in browsers for v in b.batch_ms]
    rates = [len(b.updates) / measured for b in browsers]
    busiest = 0
    shortest_gap = math.inf
    for b in browsers:
        per_second: dict[int, int] = defaultdict(int)
        for t in b.updates:
            per_second[int(t - window[0])] += 1
        busiest = max([busiest, *per_second.values()])
        gaps = [y - x for x, y in itertools.pairwise(b.updates)]
        shortest_gap = min([shortest_gap, *gaps])
    ack_ms = [
        (r.acked_at[k] - r.sent_at[k]) * 1000
        for r in runs.values()
        for k in range(1, len(r.sent_at))
        if window[0] <= r.sent_at[k] <= window[1]
    ]
    per_event = 1e6 / stored

    print(
        f"{len(browsers)} browsers on /ws/live/v1 (fleet), {len(runs)} engines x "
        f"{args.rate} events/s in frames of {per_batch} every {args.batch_interval * 1000:.0f} "
        f"ms; uvicorn workers: {args.workers}; {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} "
        f"before, {load_after:.1f} after"
    )
    print(
        f"{time.monotonic() - began:.0f}s in all; browsers connected in "
        f"{outcome.connect_s:.1f}s; measured {measured:.0f}s after {args.warmup:.0f}s of "
        f"warm-up"
    )
    print(
        f"events stored: {stored} in {outcome.streamed:.1f}s = {events_per_s:,.0f} events/s "
        f"(asked for {args.rate * len(runs):,}); a frame left at most "
        f"{max(r.late for r in runs.values()) * 1000:.0f} ms behind its schedule"
    )
    print(f"  {'ms':<34} {'samples':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    print(row("engine send -> ack (stored)", ack_ms))
    print(row("engine send -> row in browser", row_ms))
    print(row("every batch: send -> on screen", batch_ms))
    print(
        f"updates per browser per second: mean {sum(rates) / len(rates):.2f}, max "
        f"{max(rates):.2f}; most in one second {busiest}; shortest gap "
        f"{shortest_gap * 1000:.0f} ms"
    )
    print(
        f"rows seen again {sum(b.repeats for b in browsers)}, older than shown "
        f"{sum(b.regressions for b in browsers)}, resync asked "
        f"{sum(b.resyncs for b in browsers)}, browser seq gaps "
        f"{sum(b.seq_gaps for b in browsers)}, rows of other runs "
        f"{sum(b.foreign_rows for b in browsers)}; bench loop's longest stall "
        f"{outcome.stall * 1000:.0f} ms"
    )
    if max(rates) > 10:
        print("WARNING: a browser got more than 10 updates a second")
    pg_part = f"PostgreSQL {pg_cpu / wall:.2f}" if pg_cpu is not None else "PostgreSQL ?"
    print(
        f"CPU (cores busy over the run): web {web_cpu / wall:.2f}, {pg_part}, bench "
        f"{client_cpu / wall:.2f}; web per stored event "
        f"{web_cpu * per_event:.0f} us"
    )
    if notes:
        print_breakdown(notes, window)
    if not row_ms:
        raise SystemExit("no row reached a browser in the measured seconds")
    print(
        json.dumps(
            {
                "metric": "fanout_p99_ms",
                "value": round(pct(row_ms, 99), 1),
                "p50": round(pct(row_ms, 50), 1),
                "max": round(max(row_ms), 1),
                "every_batch_p99_ms": round(pct(batch_ms, 99), 1),
                "browsers": len(browsers),
                "workers": args.workers,
                "events_per_s": round(events_per_s),
                "updates_per_browser_per_s_max": round(max(rates), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
