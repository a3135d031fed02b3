"""Memory that comes back: the web process's resident memory before, during and after mixed load.

    .venv/bin/python bench/soak.py [--minutes 10] [--quiet-s 60] [--engines 10] [--browsers 50]
                                   [--warmup-s 30] [--settle-s QUIET_S] [--workers 1]
                                   [--tracemalloc]

The issue's figure is ten minutes of load and a quiet minute (the defaults, 13 minutes in all);
``--minutes 1 --quiet-s 20`` is the quick check (about 3 minutes).

Starts what it needs (embedded PostgreSQL and a Redis of its own unless DATABASE_URL / REDIS_URL
are set), creates a scratch database and runs uvicorn with the product's ASGI application. The
load, all from this process:

- ``--engines`` real ``engine_sdk`` EngineClients stream orders, fills, metrics and account
  events every 0.1 s over many symbols (the engine pages' position tables grow to hundreds of
  rows), a log event with a JSON ``context`` of 1 to 200 KB every 2 s, and a burst of 2,500
  events (frames of 1,000) every 20 s; each closes and reconnects every ``--engine-life-s``
  (about), so connections come and go;
- ``--browsers`` sockets on /ws/live/v1 subscribed to ``fleet`` and to one engine's page, each
  reconnecting every 15 to 45 s;
- two pollers GET the fleet page, engine pages, /live/fleet.json and /live/engines/<name>.json
  (the large live JSON) in turn, every 0.5 s each;
- a pause or a resume of one engine through POST /api/v1/commands every 5 s.

The resident memory (VmRSS from /proc; with ``--workers`` > 1 the sum over uvicorn's processes)
is sampled every second. The phases: idle after start (the floor: imports only), warm-up
(``--warmup-s`` of the same load, so imports, first-use caches and the pools' threads are not
counted as growth), quiet for ``--settle-s`` (all sockets closed), then **start** (the median of
the last 5 samples), ``--minutes`` of load (**peak**), quiet for ``--quiet-s``, then **after
quiet** (the median of the last 5 samples). Growth = after quiet / start - 1.

The web process hands memory back by itself once a burst is over (controlplane.config.memory: a full
garbage collection and glibc's ``malloc_trim`` in the first quiet 10 s); the bench says when it
did and how long it took. ``MEMORY_TIDY_ENABLED=0`` in the environment measures without it.

What the memory is, for diagnosis: at the start and after-quiet readings the server writes what
it holds (uvicorn runs ``bench.soak:soak_application``: the product's application with two
signal handlers, nothing else changed): garbage found by a full collection, live objects by type,
glibc's heap (``mallinfo2``: in use, free but held), Python's small-object allocator (1 MB arenas,
and the bytes of objects in them), and the PostgreSQL connections the process holds. Last, after
the figures, another collection and ``malloc_trim(0)``: what that gives back was free memory the
allocator held, not live objects. ``--tracemalloc`` traces Python's allocations in the server
(slower, and more memory) and prints what grew between the two readings, by line; give it less
load (``--engines 3 --browsers 10``): at the default load a traced server fell so far behind on
two cores that engines timed out. The last line
printed is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/ too: uvicorn imports this module by name, without the script's path.
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from _common import (  # noqa: E402 - bench/ is first on the path
    drop_database,
    filled_order,
    free_port,
    own_redis,
    patched_environ,
    recreate_database,
    start_uvicorn,
    stop_process,
    tree_rss,
    viewers_and_engines,
    with_database,
)

from controlplane.config import embedded  # noqa: E402

# Per run: two runs side by side (the code before and after a change) on one PostgreSQL.
BENCH_DB = f"controlplane_bench_soak_{os.getpid()}"
SYMBOLS = 300
TICK_S = 0.1
LOG_EVERY_S = 2.0
BURST_EVERY_S = 20.0
BURST_EVENTS = 2500
CONTEXT_KB = (1, 20, 100, 200)  # under the SDK's 256 KB per event
BROWSER_LIFE_S = (15.0, 45.0)
POLL_EVERY_S = 0.5
COMMAND_EVERY_S = 5.0
MB = 2**20


# --- the scratch database ----------------------------------------------------------------------


def setup_data(n_engines: int, n_browsers: int, prefix: str) -> None:
    """Run with the scratch database's settings: print tokens, sessions and an operator's API
    token (for the commands) as one JSON line."""
    data = viewers_and_engines(n_engines, n_browsers, prefix)
    from django.contrib.auth.models import Group, User

    from controlplane import roles, services

    operator = User.objects.create_user("bench-operator", email="operator@example.invalid")
    operator.groups.add(Group.objects.get(name=roles.OPERATOR))
    _, data["api_token"] = services.api_token_create(user=operator, name="soak bench")
    print(json.dumps(data))


# --- the server: the product's application, with a diagnosis on a signal ------------------------


def soak_application() -> Any:
    """The product's ASGI application; SIGUSR1 writes what is in memory (``BENCH_SNAPSHOT_DIR``),
    SIGUSR2 collects garbage and trims glibc's heap. With ``BENCH_TRACEMALLOC`` set, Python's
    allocations are traced from here on."""
    import ctypes
    import gc
    import tracemalloc

    out = Path(os.environ["BENCH_SNAPSHOT_DIR"])
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC"]))
    libc = ctypes.CDLL("libc.so.6")

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    libc.mallinfo2.restype = MallInfo2
    snapshots = itertools.count(1)

    def pymalloc() -> dict[str, int]:
        """Python's small-object allocator, from sys._debugmallocstats (written to fd 2)."""
        with tempfile.TemporaryFile() as f:
            saved = os.dup(2)
            os.dup2(f.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            f.seek(0)
            text = f.read().decode()
        stats = {}
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.startswith("# arenas allocated current") or name.startswith(
                "# bytes in allocated blocks"
            ):
                stats[name.strip("# ").strip()] = int(value.strip().replace(",", ""))
        return {
            "pymalloc_arenas": stats.get("arenas allocated current", 0),
            "pymalloc_bytes": stats.get("bytes in allocated blocks", 0),
        }

    def heap() -> dict[str, int]:
        """glibc's heap (all arenas) and Python's small-object allocator, in bytes / blocks."""
        info = libc.mallinfo2()
        return {
            "malloc_in_use": info.uordblks + info.hblkhd,  # hblkhd: blocks mmapped on their own
            "malloc_free_held": info.fordblks,
            "pymalloc_blocks": sys.getallocatedblocks(),
            **pymalloc(),
        }

    def snapshot(signum: int, frame: Any) -> None:
        # Garbage first: what is left is what something still refers to.
        collected = gc.collect()
        n = next(snapshots)
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(out / f"{os.getpid()}-{n}.snap"))
        types = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
        info = {"types": dict(types), "traced": traced, "collected": collected, **heap()}
        (out / f"{os.getpid()}-{n}.json").write_text(json.dumps(info))

    def trim(signum: int, frame: Any) -> None:
        collected = gc.collect()
        libc.malloc_trim(0)
        info = {"collected": collected, **heap()}
        (out / f"{os.getpid()}-trim.json").write_text(json.dumps(info))

    signal.signal(signal.SIGUSR1, snapshot)
    signal.signal(signal.SIGUSR2, trim)
    from controlplane.config import asgi, memory

    # How long the product's own tidying takes (controlplane.config.memory), when it is on.
    tidier, log_path = memory.tidier, out / f"{os.getpid()}-tidied.jsonl"
    tidy, malloc_trim = tidier.tidy, tidier._trim
    trimmed: list[float] = []

    def timed_trim(pad: int) -> Any:
        began = time.perf_counter()
        try:
            return malloc_trim(pad)
        finally:
            trimmed.append(time.perf_counter() - began)

    def timed_tidy() -> None:
        began = time.perf_counter()
        tidy()
        whole = time.perf_counter() - began
        trim_s = trimmed.pop() if trimmed else 0.0
        with log_path.open("a") as f:
            f.write(json.dumps({"at": time.monotonic(), "whole_s": whole, "trim_s": trim_s}) + "\n")

    tidier.tidy = timed_tidy  # type: ignore[method-assign]
    if malloc_trim is not None:
        tidier._trim = timed_trim
    return asgi.application


def app_pids(server_pid: int, workers: int) -> list[int]:
    """The processes that run the application: uvicorn itself, or its workers."""
    pids = sorted(tree_rss(server_pid))
    return [pid for pid in pids if pid != server_pid] if workers > 1 else [server_pid]


def signal_and_wait(pids: list[int], sig: int, directory: Path, name: str) -> list[Path]:
    """Send ``sig`` to each pid and wait for the file ``<pid>-<name>`` it writes."""
    paths = [directory / f"{pid}-{name}" for pid in pids]
    for pid in pids:
        os.kill(pid, sig)
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server wrote no {name} within 120s")
        time.sleep(0.2)
    time.sleep(0.5)  # the file is written whole (one write_text), but give it a moment
    return paths


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Counts:
    events: int = 0
    frames_large: int = 0  # bursts of BURST_EVENTS
    log_bytes: int = 0
    browser_connects: int = 0
    browser_messages: int = 0
    browser_bytes: int = 0
    engine_connects: int = 0
    http: Counter[int] = field(default_factory=Counter)
    http_bytes: int = 0
    http_largest: int = 0
    commands: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


@dataclass
class Target:
    port: int
    data: dict[str, Any]
    journals: Path
    # Each engine's order numbers, one sequence for the whole run: the warm-up's and the load's
    # EngineLoads are not the same objects, and an order id names one order for ever (reused with
    # another symbol, the server refuses the events).
    orders: dict[str, itertools.count[int]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.data["tokens"])


def big_context(size_kb: int, rng: random.Random) -> dict[str, Any]:
    """A log event's context as engines write them: nested, numbers and strings."""
    rows: list[dict[str, Any]] = []
    size = 0
    while size < size_kb * 1024 - 200:
        row = {
            "symbol": f"SYM{rng.randrange(SYMBOLS)}",
            "bid": round(rng.uniform(90, 110), 4),
            "ask": round(rng.uniform(90, 110), 4),
            "signal": rng.random(),
            "note": "x" * rng.randrange(10, 60),
        }
        rows.append(row)
        size += len(json.dumps(row)) + 2
    return {
        "book": rows,
        "model": {"version": "soak", "weights": [rng.random() for _ in range(20)]},
    }


class EngineLoad:
    """One engine: an EngineClient per life, events every tick, logs and bursts."""

    def __init__(self, name: str, token: str, target: Target, counts: Counts, life_s: float):
        self.name = name
        self.token = token
        self.target = target
        self.counts = counts
        self.life_s = life_s
        self.rng = random.Random(name)
        self.orders = target.orders.setdefault(name, itertools.count(1))

    def _order_events(self, n_orders: int) -> list[Any]:

        ts = datetime.now(UTC)
        events: list[Any] = []
        for _ in range(n_orders):
            n = next(self.orders)
            symbol = f"SYM{self.rng.randrange(SYMBOLS)}"
            events += filled_order(ts, n, symbol, "buy" if n % 3 else "sell")
        return events

    async def run(self, stop: asyncio.Event, offset: float) -> None:
        from engine_sdk import protocol as p
        from engine_sdk.client import ClientConfig, EngineClient, HelloInfo

        hello = HelloInfo(
            engine_build="bench", config_hash="bench", mode="paper", broker="bench", account="bench"
        )
        url = f"ws://127.0.0.1:{self.target.port}/ws/engine/v1"
        loop = asyncio.get_running_loop()
        next_log = loop.time() + offset % LOG_EVERY_S
        next_burst = loop.time() + offset
        equity = 1_000_000.0
        while not stop.is_set():
            client = EngineClient(
                url,
                self.token,
                journal_dir=self.target.journals / self.name,
                hello=hello,
                on_error=lambda e: self.counts.errors.append(f"{e.code}: {e.message}"),
                config=ClientConfig(fsync=False),
            )
            await client.start()
            await client.wait_connected(60)
            self.counts.engine_connects += 1
            life_end = loop.time() + self.life_s * self.rng.uniform(0.5, 1.5)
            try:
                while not stop.is_set() and loop.time() < life_end:
                    ts = datetime.now(UTC)
                    equity += self.rng.uniform(-50, 50)
                    events = self._order_events(1)
                    events.append(
                        p.MetricEvent(ts=ts, name="latency_ms", value=self.rng.uniform(0.5, 20))
                    )
                    events.append(
                        p.AccountEvent(
                            ts=ts, equity=Decimal(f"{equity:.2f}"), cash=Decimal(500_000)
                        )
                    )
                    now = loop.time()
                    if now >= next_log:
                        next_log = now + LOG_EVERY_S
                        size = self.rng.choice(CONTEXT_KB)
                        context = big_context(size, self.rng)
                        message = "order book snapshot " + "y" * self.rng.randrange(100, 8000)
                        events.append(
                            p.LogEvent(ts=ts, level="info", message=message[:8192], context=context)
                        )
                        self.counts.log_bytes += size * 1024
                    if now >= next_burst:
                        next_burst = now + BURST_EVERY_S
                        events += self._order_events(BURST_EVENTS // 4)
                        self.counts.frames_large += 1
                    for event in events:
                        client.emit(event)
                    self.counts.events += len(events)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), TICK_S)
            finally:
                await client.close(flush_timeout=60)
            if client.error is not None:
                raise RuntimeError(f"{self.name}: {client.error!r}")
            if client.acked_seq != client.last_seq:
                raise RuntimeError(f"{self.name}: acked {client.acked_seq} of {client.last_seq}")


async def run_browser(
    i: int, target: Target, counts: Counts, stop: asyncio.Event, rng: random.Random
) -> None:
    import websockets

    key = target.data["sessions"][i]
    origin = f"http://127.0.0.1:{target.port}"
    headers = {"Cookie": f"{target.data['cookie']}={key}", "Origin": origin}
    engine = target.names[i % len(target.names)]
    url = f"ws://127.0.0.1:{target.port}/ws/live/v1"
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        async with websockets.connect(
            url, additional_headers=headers, max_size=64 * MB, ping_interval=None
        ) as ws:
            hello = json.loads(await ws.recv())
            if hello.get("type") != "hello":
                raise RuntimeError(f"browser socket refused: {hello}")
            await ws.send(json.dumps({"subscribe": ["fleet", f"engine:{engine}"]}))
            counts.browser_connects += 1
            life_end = loop.time() + rng.uniform(*BROWSER_LIFE_S)
            while not stop.is_set() and loop.time() < life_end:
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                message = json.loads(raw)
                if message.get("type") == "error":
                    raise RuntimeError(f"browser socket: {message}")
                counts.browser_messages += 1
                counts.browser_bytes += len(raw)


def http_get(port: int, path: str, cookie: str) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Cookie": cookie})
        response = conn.getresponse()
        return response.status, len(response.read())
    finally:
        conn.close()


async def run_poller(
    i: int, target: Target, counts: Counts, stop: asyncio.Event, rng: random.Random
) -> None:
    cookie = f"{target.data['cookie']}={target.data['sessions'][i]}"
    while not stop.is_set():
        engine = rng.choice(target.names)
        for path in (
            "/",
            f"/engines/{engine}/",
            "/live/fleet.json",
            f"/live/engines/{engine}.json",
        ):
            status, size = await asyncio.to_thread(http_get, target.port, path, cookie)
            counts.http[status] += 1
            counts.http_bytes += size
            counts.http_largest = max(counts.http_largest, size)
            if status != 200:
                counts.errors.append(f"GET {path}: {status}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_EVERY_S)
            if stop.is_set():
                return


def post_command(port: int, api_token: str, kind: str, engine: str) -> int:
    body = json.dumps({"kind": kind, "selector": f"engine:{engine}", "reason": "soak bench"})
    headers = {"Authorization": f"Bearer {api_token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/api/v1/commands", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


async def run_commands(target: Target, counts: Counts, stop: asyncio.Event) -> None:
    # Each engine is paused by one round and resumed by the next that picks it.
    paused: set[str] = set()
    for engine in itertools.cycle(target.names):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), COMMAND_EVERY_S)
        if stop.is_set():
            return
        kind = "resume" if engine in paused else "pause"
        status = await asyncio.to_thread(
            post_command, target.port, target.data["api_token"], kind, engine
        )
        counts.commands[status] += 1
        if status != 201:
            counts.errors.append(f"{kind} {engine}: {status}")
        paused ^= {engine}


async def run_load(target: Target, counts: Counts, seconds: float, args: argparse.Namespace):
    """Everything at once for ``seconds``, then every socket closed (engines' events acked)."""
    stop = asyncio.Event()
    rng = random.Random(args.seed)
    tasks = []
    for i, (name, token) in enumerate(target.data["tokens"].items()):
        engine = EngineLoad(name, token, target, counts, args.engine_life_s)
        offset = BURST_EVERY_S * i / len(target.data["tokens"])
        tasks.append(asyncio.create_task(engine.run(stop, offset)))
    for i in range(args.browsers):
        tasks.append(asyncio.create_task(run_browser(i, target, counts, stop, rng)))
        await asyncio.sleep(0.01)  # not all handshakes in the same millisecond
    tasks += [asyncio.create_task(run_poller(i, target, counts, stop, rng)) for i in range(2)]
    tasks.append(asyncio.create_task(run_commands(target, counts, stop)))
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    stop.set()
    for task in done:
        task.result()  # a part that failed says why
    await asyncio.gather(*tasks)


# --- memory ------------------------------------------------------------------------------------


class Sampler:
    """VmRSS of the server's processes every second, labelled with the phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phase = "idle"
        self.samples: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = sum(tree_rss(self.pid).values())
            if rss:
                self.samples.append((time.monotonic(), self.phase, rss))
            self._stop.wait(1.0)

    def of(self, phase: str) -> list[int]:
        return [rss for _, p, rss in self.samples if p == phase]

    def settled(self, phase: str) -> int:
        """The median of the phase's last five samples."""
        values = self.of(phase)[-5:]
        if not values:
            raise RuntimeError(f"no memory sample in {phase}")
        return int(statistics.median(values))

    def now(self) -> int:
        return sum(tree_rss(self.pid).values())


def print_growth(before: Path, after: Path, top: int = 15) -> None:
    """What grew between two of the server's memory notes: objects by type, allocations by line."""
    first, second = json.loads(before.read_text()), json.loads(after.read_text())
    grew = Counter(second["types"])
    grew.subtract(first["types"])
    for name, what in (("start", first), ("after quiet", second)):
        print(
            f"{name}: garbage collected {what['collected']:,} objects; glibc malloc in use "
            f"{what['malloc_in_use'] / MB:.1f} MB, free but held "
            f"{what['malloc_free_held'] / MB:.1f} MB; Python's small-object allocator "
            f"{what['pymalloc_arenas']} arenas of 1 MB holding "
            f"{what['pymalloc_bytes'] / MB:.1f} MB of objects"
        )
    print(
        f"objects tracked by gc: {sum(first['types'].values()):,} at start, "
        f"{sum(second['types'].values()):,} after quiet; most grown types:"
    )
    for name, delta in grew.most_common(top):
        if delta > 0:
            was, now = first["types"].get(name, 0), second["types"][name]
            print(f"  {delta:>+9,}  {name} ({was:,} -> {now:,})")
    snaps = [before.with_suffix(".snap"), after.with_suffix(".snap")]
    if not all(s.exists() for s in snaps):
        return
    import tracemalloc

    old, new = (tracemalloc.Snapshot.load(str(s)) for s in snaps)
    print(
        f"Python allocations traced: {first['traced'] / MB:.1f} MB at start, "
        f"{second['traced'] / MB:.1f} MB after quiet; most grown by line:"
    )
    for stat in new.compare_to(old, "lineno")[:top]:
        frame = stat.traceback[0]
        print(
            f"  {stat.size_diff / 1024:>+9.0f} KB {stat.count_diff:>+8,}  "
            f"{frame.filename.removeprefix(str(ROOT) + '/')}:{frame.lineno}"
        )
    print("most grown by traceback (innermost last):")
    for stat in new.compare_to(old, "traceback")[:5]:
        print(f"  {stat.size_diff / 1024:>+9.0f} KB {stat.count_diff:>+8,}")
        for frame in stat.traceback.format()[-12:]:
            print(f"      {frame.strip()}")


# --- main --------------------------------------------------------------------------------------


async def soak(
    target: Target,
    sampler: Sampler,
    counts: Counts,
    args: argparse.Namespace,
    note: Any,
) -> None:
    await asyncio.sleep(5)  # idle after start: imports only
    sampler.phase = "warm-up"
    await run_load(target, counts, args.warmup_s, args)
    sampler.phase = "settle"
    await asyncio.sleep(args.settle_s)
    note("start")
    sampler.phase = "load"
    load_began = time.monotonic()
    await run_load(target, counts, args.minutes * 60, args)
    note(f"load ended after {time.monotonic() - load_began:.0f}s")
    sampler.phase = "quiet"
    await asyncio.sleep(args.quiet_s)
    note("after quiet")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0, help="of load, measured")
    parser.add_argument("--quiet-s", type=float, default=60.0, help="quiet after the load")
    parser.add_argument(
        "--settle-s",
        type=float,
        help="quiet before the start reading "
        "(default: --quiet-s, so both readings come after the same quiet)",
    )
    parser.add_argument("--warmup-s", type=float, default=30.0, help="load before the start")
    parser.add_argument("--engines", type=int, default=10)
    parser.add_argument("--browsers", type=int, default=50)
    parser.add_argument(
        "--engine-life-s",
        type=float,
        default=60.0,
        help="an engine reconnects after about this long",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--tracemalloc",
        type=int,
        nargs="?",
        const=10,
        default=0,
        metavar="FRAMES",
        help="trace the server's allocations (diagnosis)",
    )
    parser.add_argument("--setup", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup is not None:
        setup_data(int(args.setup[0]), int(args.setup[1]), args.setup[2])
        return 0
    if args.settle_s is None:
        args.settle_s = args.quiet_s
    if args.browsers < 2:
        parser.error("--browsers: at least 2 (the pollers use the first two sessions)")
    began = time.monotonic()
    prefix = f"soak-{os.getpid()}"
    snapshots = Path(tempfile.mkdtemp(prefix="cp-bench-soak-"))
    journals = snapshots / "journals"
    counts = Counts()
    timeline: list[tuple[float, str, int]] = []

    with (
        own_redis() as redis_env,
        patched_environ(redis_env),
        embedded.embedded_services(quiet=True) as service_env,
    ):
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
                "BENCH_SNAPSHOT_DIR": str(snapshots),
            }
            if args.tracemalloc:
                child_env["BENCH_TRACEMALLOC"] = str(args.tracemalloc)
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
            server = start_uvicorn(
                port,
                child_env,
                app=["--factory", "bench.soak:soak_application"],
                workers=args.workers,
            )
            time.sleep(1.0)  # the workers have started
            pids = app_pids(server.pid, args.workers)
            target = Target(port, data, journals)
            connections: list[tuple[str, int]] = []
            load_before = os.getloadavg()[0]
            notes: dict[str, list[Path]] = {}
            import psycopg

            with Sampler(server.pid) as sampler:

                def note(what: str) -> None:
                    timeline.append((time.monotonic() - began, what, sampler.now()))
                    # The web process's PostgreSQL connections (its pool's): each holds memory.
                    with psycopg.connect(admin_url) as conn:
                        backends = conn.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                            [BENCH_DB],
                        ).fetchone()[0]
                    connections.append((what, backends))
                    if what in ("start", "after quiet"):
                        notes[what] = signal_and_wait(
                            pids, signal.SIGUSR1, snapshots, f"{len(notes) + 1}.json"
                        )

                asyncio.run(soak(target, sampler, counts, args, note))
                collected_rss = sampler.now()  # the after-quiet note collected the garbage
                trimmed_files = signal_and_wait(pids, signal.SIGUSR2, snapshots, "trim.json")
                time.sleep(1.0)
                trimmed = sampler.now()
                trim_notes = [json.loads(p.read_text()) for p in trimmed_files]
            load_after = os.getloadavg()[0]

            with psycopg.connect(db_url) as conn:
                stored = conn.execute("SELECT sum(last_seq) FROM controlplane_engine").fetchone()[0]
        finally:
            stop_process(server)
            drop_database(admin_url, BENCH_DB)

    idle = sampler.settled("idle")
    start = sampler.settled("settle")
    peak = max(sampler.of("load"))
    after = sampler.settled("quiet")
    warm_peak = max(sampler.of("warm-up"))
    growth = (after / start - 1) * 100
    print(
        f"uvicorn workers: {args.workers} (memory: the sum of {len(pids)} process(es)); "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, {load_after:.1f} after; "
        f"{time.monotonic() - began:.0f}s in all"
    )
    print(
        f"load: {args.engines} engines (reconnecting every ~{args.engine_life_s:.0f}s, "
        f"{counts.engine_connects} connections), {counts.events:,} events emitted and "
        f"{stored:,} stored (acked), {counts.frames_large} bursts of {BURST_EVENTS} events, "
        f"{counts.log_bytes / MB:.0f} MB of log context; {args.browsers} browsers "
        f"({counts.browser_connects} connections) got {counts.browser_messages:,} messages, "
        f"{counts.browser_bytes / MB:.0f} MB; {sum(counts.http.values()):,} GETs "
        f"{dict(counts.http)}, {counts.http_bytes / MB:.0f} MB, the largest "
        f"{counts.http_largest / 1024:.0f} KB; commands {dict(counts.commands)}"
    )
    if args.tracemalloc:
        print(
            f"NOTE: Python allocations traced ({args.tracemalloc} frames): the server is "
            f"slower and larger than without; the figures below are for diagnosis only"
        )
    print(
        f"resident memory (MB): idle after start {idle / MB:.1f}; warm-up "
        f"({args.warmup_s:.0f}s of the same load, not counted) peak {warm_peak / MB:.1f}; "
    )
    print(
        f"  start (after warm-up and {args.settle_s:.0f}s quiet) {start / MB:.1f}; peak during "
        f"{args.minutes:g} min of load {peak / MB:.1f}; after {args.quiet_s:.0f}s quiet "
        f"{after / MB:.1f}: x{after / start:.3f}, growth {growth:+.1f} %"
    )
    collected = sum(n["collected"] for n in trim_notes)
    in_use = sum(n["malloc_in_use"] for n in trim_notes)
    print(
        f"  diagnosis, after the figures: after gc.collect() {collected_rss / MB:.1f}; after "
        f"another ({collected} objects) and malloc_trim(0) {trimmed / MB:.1f} (what that gave "
        f"back was free memory the allocator held; glibc malloc has {in_use / MB:.1f} MB "
        f"in use)"
    )
    for at, what, rss in timeline:
        print(f"  {at:>6.0f}s {what}: {rss / MB:.1f} MB")
    print(
        "the web process's PostgreSQL connections: "
        + ", ".join(f"{n} at {what}" for what, n in connections)
    )
    tidies = [
        json.loads(line)
        for p in snapshots.glob("*-tidied.jsonl")
        for line in p.read_text().splitlines()
    ]
    if tidies:
        when = ", ".join(f"{t['at'] - began:.0f}s" for t in tidies)
        print(
            f"the web process tidied its memory {len(tidies)} times "
            f"(controlplane.config.memory), at {when}; the longest "
            f"took {max(t['whole_s'] for t in tidies) * 1000:.0f} ms (the event loop waits "
            f"for the collection), of which malloc_trim "
            f"{max(t['trim_s'] for t in tidies) * 1000:.0f} ms (without the GIL)"
        )
    else:
        print("the web process did not tidy its memory (MEMORY_TIDY_ENABLED off)")
    if len(notes) == 2:
        for before, after_note in zip(notes["start"], notes["after quiet"], strict=True):
            print_growth(before, after_note)
    shutil.rmtree(snapshots, ignore_errors=True)
    # The SDK adds a state event of its own for each pause and resume it obeys.
    if stored < counts.events:
        counts.errors.append(f"{counts.events} events emitted, {stored} stored")
    if counts.errors:
        print(f"errors ({len(counts.errors)}): {counts.errors[:5]}")
    print(
        json.dumps(
            {
                "metric": "soak_rss_growth_pct",
                "value": round(growth, 1),
                "start_mb": round(start / MB, 1),
                "peak_mb": round(peak / MB, 1),
                "after_quiet_mb": round(after / MB, 1),
                "ratio": round(after / start, 3),
                "idle_mb": round(idle / MB, 1),
                "after_gc_mb": round(collected_rss / MB, 1),
                "after_trim_mb": round(trimmed / MB, 1),
                "minutes": args.minutes,
                "quiet_s": args.quiet_s,
                "workers": args.workers,
                "tracemalloc": bool(args.tracemalloc),
                "tidied": len(tidies),
                "errors": len(counts.errors),
            }
        )
    )
    return 1 if counts.errors else 0


if __name__ == "__main__":
    sys.exit(main())
