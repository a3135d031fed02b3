"""Alert latency end to end: an engine's event crosses a threshold -> a webhook gets the alert.

    .venv/bin/python bench/alert_latency.py [--engines 10] [--breaches 20] [--warmup 1]
                                            [--pool threads] [--concurrency 8] [--trace]

Starts what it needs (the embedded PostgreSQL unless DATABASE_URL is set, and an embedded Redis
of its own on a free port unless REDIS_URL is set, so that no other worker takes its tasks),
creates a scratch database, and runs the product's processes: uvicorn with the product's ASGI
app, and a Celery worker with a pool of 8 threads. The tasks on this path wait on PostgreSQL
commits, Redis and HTTP far more than they compute, so threads overlap them in one warm process;
``manage.py up`` starts a prefork pool of two processes, which this machine's load saturates
within this run's time (``--pool prefork --concurrency 2`` measures it: the figure is then the
queue, not the path). No beat: nothing on this path is periodic. The webhook receiver is an
HTTP server in this process, reached through an Apprise ``json://`` channel; a dedicated rule
(daily_pnl_pct < -3 %, hysteresis 0.5, no pending time) routes to it, and every other rule is
disabled.

Each engine is a raw protocol client on the real WebSocket. It reports its session start equity,
then ``--breaches`` times: an account event at about -5 % (fires an alert), and once the webhook
has the firing notice, one at -1 % (resolves it); a random pause of 0.1-0.6 s goes before each.
The equity carries the breach number, so the value in the notice says which breach it is.
Measured per breach, from the moment the event frame is written to the socket to the moment the
receiver has read the POST body. The first ``--warmup`` breaches of each engine warm up the
worker's processes and connections and are not counted.

Also printed, from the rows the product wrote: where the time goes (ack, evaluation started,
notification row created, webhook reached, delivery recorded). ``--trace`` adds the Celery task
publish, start and end times, recorded by signal handlers in the web and worker processes.
The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402 - bench/ is first on the path
    drop_database,
    free_port,
    own_redis,
    patched_environ,
    pct,
    recreate_database,
    start_uvicorn,
    stop_process,
    with_database,
)

from controlplane.config import embedded  # noqa: E402

BENCH_DB = "controlplane_bench_alerts"
RULE_NAME = "bench daily loss"
CHANNEL_NAME = "bench webhook"
START_EQUITY = 100_000
BREACH_EQUITY = 95_000  # -5 %, plus the breach number in dollars: -4.999 % for the first
CLEAR_EQUITY = 99_000  # -1 %: past the threshold's hysteresis (-2.5 %)
STEP_TIMEOUT_S = 20.0
TRACE_ENV = "ALERT_BENCH_TRACE_FILE"


# --- servers and the scratch database ----------------------------------------------------------


def setup_data(n_engines: int, hook_url: str) -> None:
    """Run with the scratch database's settings: the channel, the rule, the engines; prints the
    engines' tokens as one JSON line."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.config.settings")
    django.setup()
    from alerts.models import AlertRule, NotificationChannel
    from controlplane import services

    channel = NotificationChannel(name=CHANNEL_NAME, kind=NotificationChannel.Kind.APPRISE)
    channel.target = hook_url
    channel.save()
    rule = AlertRule.objects.create(
        name=RULE_NAME,
        metric="daily_pnl_pct",
        comparator="<",
        threshold=-3,
        hysteresis=0.5,
        pending_s=0,
        severity="critical",
        repeat_interval_s=0,
    )
    rule.channels.set([channel])
    AlertRule.objects.exclude(pk=rule.pk).update(enabled=False)
    tokens = {}
    for i in range(n_engines):
        name = f"bench-{i:03d}"
        tokens[name] = services.engine_create(
            name=name, mode="paper", broker="bench", account="bench"
        )[1]
    print(json.dumps(tokens))


# --- tracing: Celery publish and task start times, in the web and worker processes --------------


def _trace(stage: str, task: str, args: Any) -> None:
    wall = time.time()
    arg = args[0] if args else None
    with open(os.environ[TRACE_ENV], "a") as out:
        out.write(json.dumps([stage, task, arg, wall]) + "\n")


def _install_trace() -> None:
    from celery import signals

    def published(sender: Any = None, body: Any = None, **_: Any) -> None:
        args = body[0] if isinstance(body, list | tuple) and body else None
        _trace("publish", str(sender), args)

    def started(sender: Any = None, args: Any = None, **_: Any) -> None:
        _trace("start", getattr(sender, "name", str(sender)), args)

    def finished(sender: Any = None, args: Any = None, **_: Any) -> None:
        _trace("end", getattr(sender, "name", str(sender)), args)

    signals.before_task_publish.connect(published, weak=False, dispatch_uid="bench-publish")
    signals.task_prerun.connect(started, weak=False, dispatch_uid="bench-start")
    signals.task_postrun.connect(finished, weak=False, dispatch_uid="bench-end")


if os.environ.get(TRACE_ENV):
    # Imported by the worker (``--include bench.alert_latency``) and by uvicorn (the factory).
    _install_trace()


def traced_application() -> Any:
    """uvicorn --factory: the product's ASGI app, in a process that records task publishes."""
    from controlplane.config import asgi

    return asgi.application


def read_trace(path: Path | None) -> list[tuple[str, str, Any, float]]:
    if path is None or not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines() if line]


# --- the webhook receiver ----------------------------------------------------------------------


@dataclass
class Expected:
    value: float
    future: asyncio.Future[float]


@dataclass
class Hook:
    """Receives Apprise's JSON posts; hands each awaited notice to the engine that waits for it."""

    loop: asyncio.AbstractEventLoop
    waiting: dict[tuple[str, str], Expected] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (engine, event, value, wall time) of every notice, awaited or not
    received: list[tuple[str, str, float, float]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def expect(self, engine: str, event: str, value: float) -> asyncio.Future[float]:
        future: asyncio.Future[float] = self.loop.create_future()
        with self.lock:
            self.waiting[(engine, event)] = Expected(value, future)
        return future

    def forget(self, engine: str, event: str) -> None:
        with self.lock:
            self.waiting.pop((engine, event), None)

    def post(self, wall: float, body: bytes) -> None:
        try:
            payload = json.loads(body)
            title, message = payload["title"], payload["message"]
            engine = message.split("\n", 1)[0].split(": ", 1)[0]
            event = "resolved" if title.startswith("[RESOLVED") else "firing"
            value = next(
                float(line.split(": ", 1)[1])
                for line in message.splitlines()
                if line.startswith("Value: ")
            )
        except (ValueError, KeyError, StopIteration, TypeError) as exc:
            with self.lock:
                self.unexpected.append(f"unreadable: {exc!r}: {body[:200]!r}")
            return
        with self.lock:
            self.received.append((engine, event, value, wall))
            expected = self.waiting.get((engine, event))
            if expected is None or abs(expected.value - value) > 1e-6:
                self.unexpected.append(f"{engine} {event} {value}")
                return
            del self.waiting[(engine, event)]
        self.loop.call_soon_threadsafe(_settle, expected.future, wall)


def _settle(future: asyncio.Future[float], wall: float) -> None:
    if not future.done():
        future.set_result(wall)


@contextlib.contextmanager
def webhook_server(hook: Hook) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hook.post(time.time(), body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield f"json://127.0.0.1:{server.server_port}/hooks/alerts"
    finally:
        server.shutdown()
        server.server_close()


# --- the engines -------------------------------------------------------------------------------


@dataclass
class Breach:
    engine: str
    number: int
    warmup: bool
    value: float  # daily_pnl_pct the breach reports
    sent: float  # wall time the event frame was written
    acked: float = math.nan
    received: float = math.nan  # wall time the webhook read the firing notice
    resolved_sent: float = math.nan
    resolved_received: float = math.nan


def pnl_pct(equity: int) -> float:
    return (equity - START_EQUITY) / START_EQUITY * 100


class Engine:
    """One raw protocol client: hello, heartbeats, one account event per frame."""

    def __init__(self, name: str, token: str, ws_url: str) -> None:
        self.name, self.token, self.ws_url = name, token, ws_url
        self.seq = 0
        self.engine_id = 0
        self.acks: dict[int, asyncio.Future[float]] = {}
        self.ws: Any = None

    async def run(self, hook: Hook, breaches: int, warmup: int, out: list[Breach]) -> None:
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
            self.ws_url,
            additional_headers={"Authorization": f"Bearer {self.token}"},
            compression=None,
        ) as ws:
            self.ws = ws
            await ws.send(p.encode(hello).decode())
            welcome = p.decode_server_frame(await ws.recv())
            assert isinstance(welcome, p.Welcome), welcome
            self.engine_id = welcome.engine_id
            reader = asyncio.create_task(self._read())
            beats = asyncio.create_task(self._heartbeats(welcome.heartbeat_interval_s))
            try:
                await self.account(START_EQUITY)
                for number in range(1, warmup + breaches + 1):
                    await asyncio.sleep(random.uniform(0.1, 0.6))
                    equity = BREACH_EQUITY + number
                    fired = hook.expect(self.name, "firing", pnl_pct(equity))
                    sent, acked = await self.account(equity)
                    breach = Breach(self.name, number, number <= warmup, pnl_pct(equity), sent)
                    breach.acked = await acked
                    out.append(breach)
                    try:
                        breach.received = await asyncio.wait_for(fired, STEP_TIMEOUT_S)
                    except TimeoutError:
                        hook.forget(self.name, "firing")
                    await asyncio.sleep(random.uniform(0.1, 0.6))
                    equity = CLEAR_EQUITY + number
                    resolved = hook.expect(self.name, "resolved", pnl_pct(equity))
                    breach.resolved_sent, acked = await self.account(equity)
                    await acked
                    try:
                        resolved_at = await asyncio.wait_for(resolved, STEP_TIMEOUT_S)
                    except TimeoutError:
                        resolved_at = math.nan
                        hook.forget(self.name, "resolved")
                    breach.resolved_received = resolved_at
            finally:
                beats.cancel()
                reader.cancel()

    async def account(self, equity: int) -> tuple[float, asyncio.Future[float]]:
        """Send one account event; returns when it was written and a future of its ack time."""
        from engine_sdk import protocol as p

        self.seq += 1
        event = p.AccountEvent(
            seq=self.seq, ts=p.utc_now(), equity=Decimal(equity), cash=Decimal(equity)
        )
        frame = p.encode(p.Events(events=[event])).decode()
        acked: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.acks[self.seq] = acked
        sent = time.time()
        await self.ws.send(frame)
        return sent, acked

    async def _read(self) -> None:
        from engine_sdk import protocol as p

        async for raw in self.ws:
            frame = p.decode_server_frame(raw)
            if isinstance(frame, p.Ack):
                now = time.time()
                for seq in [s for s in self.acks if s <= frame.seq]:
                    _settle(self.acks.pop(seq), now)
            elif isinstance(frame, p.Error):
                raise RuntimeError(f"{self.name}: server error: {frame}")

    async def _heartbeats(self, interval: float) -> None:
        from engine_sdk import protocol as p

        while True:
            await asyncio.sleep(interval)
            beat = p.Heartbeat(ts=p.utc_now(), trading_state="ACTIVE", last_seq=self.seq)
            await self.ws.send(p.encode(beat).decode())


# --- where the time goes -----------------------------------------------------------------------


def product_rows(db_url: str) -> dict[tuple[str, str, float], dict[str, float]]:
    """Per (engine, event, value in the notice): the product's own timestamps, as wall times."""
    import psycopg

    rows: dict[tuple[str, str, float], dict[str, float]] = {}
    with psycopg.connect(db_url) as conn:
        found = conn.execute(
            """
            SELECT e.name, n.event, n.body, a.started_at, a.fired_at, a.resolved_at,
                   n.created_at, n.sent_at, n.id, n.attempts
            FROM alerts_notification n
            JOIN alerts_alert a ON a.id = n.alert_id
            JOIN controlplane_engine e ON e.id = a.engine_id
            """
        ).fetchall()
        for name, event, body, started, fired, resolved, created, sent_at, nid, attempts in found:
            value = next(
                float(line.split(": ", 1)[1])
                for line in body.splitlines()
                if line.startswith("Value: ")
            )
            evaluated = started if event == "firing" else resolved
            rows[(name, event, round(value, 6))] = {
                "evaluated": evaluated.timestamp(),
                "fired": (fired or started).timestamp(),
                "created": created.timestamp(),
                "sent_at": sent_at.timestamp() if sent_at else math.nan,
                "notification": nid,
                "attempts": attempts,
            }
    return rows


def print_stages(
    breaches: list[Breach],
    rows: dict[tuple[str, str, float], dict[str, float]],
    notes: list[tuple[str, str, Any, float]],
    engine_ids: dict[str, int],
) -> None:
    ms = 1000.0
    stages: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        if not math.isnan(value):
            stages.setdefault(name, []).append(value * ms)

    evaluations: dict[int, list[tuple[str, float]]] = {}
    sends: dict[int, dict[str, float]] = {}
    for stage, task, arg, wall in notes:
        if task == "alerts.evaluate_engine":
            evaluations.setdefault(arg, []).append((stage, wall))
        elif task == "alerts.evaluate_engines":  # several engines in one task
            for engine_id in arg or ():
                evaluations.setdefault(engine_id, []).append((stage, wall))
        elif task == "alerts.send_notification":
            sends.setdefault(arg, {}).setdefault(stage, wall)
    for b in breaches:
        if b.warmup or math.isnan(b.received):
            continue
        row = rows.get((b.engine, "firing", round(b.value, 6)))
        if row is None:
            continue
        add("event written -> ack read by the engine", b.acked - b.sent)
        add("event written -> evaluation started", row["evaluated"] - b.sent)
        add("evaluation started -> notification row", row["created"] - row["evaluated"])
        add("notification row -> webhook has it", b.received - row["created"])
        add("webhook has it -> delivery recorded", row["sent_at"] - b.received)
        if notes:
            mine = evaluations.get(engine_ids[b.engine], [])
            starts = [w for s, w in mine if s == "start" and w <= row["evaluated"] + 0.001]
            if starts:
                start = starts[-1]
                publishes = [w for s, w in mine if s == "publish" and w <= start]
                if publishes and publishes[-1] >= b.sent:
                    add("  event written -> evaluation queued (debounce)", publishes[-1] - b.sent)
                    add("  evaluation queued -> its task started", start - publishes[-1])
            send = sends.get(row["notification"], {})
            if "publish" in send and "start" in send:
                add("  notification row -> send queued", send["publish"] - row["created"])
                add("  send queued -> its task started", send["start"] - send["publish"])
                add("  send task started -> webhook has it", b.received - send["start"])
    begun: dict[tuple[str, Any], list[float]] = {}
    for stage, task, arg, wall in notes:
        if stage == "start":
            begun.setdefault((task, arg), []).append(wall)
        elif stage == "end" and begun.get((task, arg)):
            name = task.rsplit(".", 1)[-1]
            add(f"  task run time, every {name}", wall - begun[(task, arg)].pop(0))
    print("where the time goes, counted breaches (ms; stages from the product's rows)")
    print(f"  {'':<50} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for name, values in stages.items():
        cells = " ".join(
            f"{v:>8.1f}" for v in (pct(values, 50), pct(values, 90), pct(values, 99), max(values))
        )
        print(f"  {name:<50} {len(values):>5} {cells}")


# --- figures -----------------------------------------------------------------------------------


def row(what: str, values: list[float]) -> str:
    if not values:
        return f"  {what:<36} {0:>7} {'-':>8}"
    cells = [pct(values, 50), pct(values, 90), pct(values, 99), max(values)]
    return f"  {what:<36} {len(values):>7} " + " ".join(f"{v:>8.1f}" for v in cells)


# --- main --------------------------------------------------------------------------------------


def wait_for_log(path: Path, text: str, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
    raise SystemExit(f"the Celery worker did not get ready:\n{tail}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=10)
    parser.add_argument("--breaches", type=int, default=20, help="counted breaches per engine")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted breaches per engine")
    parser.add_argument("--pool", default="threads", help="the Celery worker's pool")
    parser.add_argument("--concurrency", type=int, default=8, help="the Celery worker's")
    parser.add_argument(
        "--trace", action="store_true", help="record Celery publish and task start times"
    )
    parser.add_argument("--setup", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup is not None:
        setup_data(int(args.setup[0]), args.setup[1])
        return 0
    started = time.monotonic()
    stages: list[tuple[str, float]] = []

    def stage(name: str) -> None:
        stages.append((name, time.monotonic() - started - sum(t for _, t in stages)))

    loop = asyncio.new_event_loop()
    hook = Hook(loop)
    with (
        tempfile.TemporaryDirectory(prefix="cp-bench-alerts-") as work_dir,
        own_redis() as redis_env,
        patched_environ(redis_env),
        embedded.embedded_services(quiet=True) as service_env,
        webhook_server(hook) as hook_url,
    ):
        trace_file = Path(work_dir, "trace.jsonl") if args.trace else None
        worker_log = Path(work_dir, "worker.log")
        env = {**os.environ, **service_env}
        admin_url = env["DATABASE_URL"]
        db_url = with_database(admin_url, BENCH_DB)
        recreate_database(admin_url, BENCH_DB)
        server = worker = None
        try:
            child_env = {
                **env,
                "DATABASE_URL": db_url,
                "CONTROLPLANE_ENV": "demo",
                "DEBUG": "0",
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
            if trace_file is not None:
                child_env[TRACE_ENV] = str(trace_file)
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "-v", "0"],
                cwd=ROOT,
                env=child_env,
                check=True,
            )
            stage("migrate")
            tokens = json.loads(
                subprocess.run(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--setup",
                        str(args.engines),
                        hook_url,
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
            stage("rule, channel, engines")
            include = ["--include", "bench.alert_latency"] if trace_file is not None else []
            with worker_log.open("w") as log:
                worker = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "controlplane.config.celery",
                        "worker",
                        "--loglevel",
                        "INFO",
                        "--pool",
                        args.pool,
                        "--concurrency",
                        str(args.concurrency),
                        "-n",
                        "alert-bench@%h",
                        "--without-gossip",
                        "--without-mingle",
                        *include,
                    ],
                    cwd=ROOT,
                    env=child_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            port = free_port()
            app = ["controlplane.config.asgi:application"]
            if trace_file is not None:
                app = ["--factory", "bench.alert_latency:traced_application"]
            server = start_uvicorn(port, child_env, app=app)
            wait_for_log(worker_log, " ready.", worker, 60)
            stage("uvicorn and worker")
            load_before = os.getloadavg()[0]
            ws_url = f"ws://127.0.0.1:{port}/ws/engine/v1"
            engines = [Engine(name, token, ws_url) for name, token in tokens.items()]
            breaches: list[Breach] = []

            async def all_engines() -> None:
                await asyncio.gather(
                    *(e.run(hook, args.breaches, args.warmup, breaches) for e in engines)
                )

            loop.run_until_complete(all_engines())
            engine_ids = {e.name: e.engine_id for e in engines}
            stage("breaches")
            load_after = os.getloadavg()[0]
            time.sleep(0.5)  # a late duplicate would show up here
            rows = product_rows(db_url)
        finally:
            stop_process(worker, wait_s=20)
            stop_process(server, wait_s=20)
            drop_database(admin_url, BENCH_DB)
            loop.close()
        notes = read_trace(trace_file)
    stage("cleanup")

    counted = [b for b in breaches if not b.warmup]
    fired = [(b.received - b.sent) * 1000 for b in counted if not math.isnan(b.received)]
    resolved = [
        (b.resolved_received - b.resolved_sent) * 1000
        for b in counted
        if not math.isnan(b.resolved_received)
    ]
    warm = [(b.received - b.sent) * 1000 for b in breaches if b.warmup]
    missed = sum(math.isnan(b.received) for b in counted)
    missed_resolved = sum(math.isnan(b.resolved_received) for b in counted)
    firing_notices = [r for r in hook.received if r[1] == "firing"]
    retried = sum(1 for r in rows.values() if r["attempts"] > 1)
    print(
        f"worker: {args.pool} pool, concurrency {args.concurrency}; {args.engines} engines x "
        f"{args.breaches} breaches (+{args.warmup} warm-up each); {os.cpu_count()} CPUs, load "
        f"average {load_before:.1f} before the breaches, {load_after:.1f} after"
    )
    print(
        f"{time.monotonic() - started:.0f}s in all: "
        + ", ".join(f"{name} {t:.1f}s" for name, t in stages)
    )
    print(
        f"notices received: {len(firing_notices)} firing, "
        f"{len(hook.received) - len(firing_notices)} resolved; missed within "
        f"{STEP_TIMEOUT_S:.0f}s: {missed} firing, {missed_resolved} resolved; unexpected or "
        f"duplicated: {len(hook.unexpected)}; deliveries retried: {retried}"
    )
    for line in hook.unexpected[:5]:
        print(f"  unexpected: {line}")
    print("event written -> webhook has the notice (ms)")
    print(f"  {'':<36} {'samples':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    print(row("breach -> firing notice", fired))
    print(row("clear -> resolved notice", resolved))
    print(row("warm-up breaches (not counted)", warm))
    print_stages(breaches, rows, notes, engine_ids)
    print(
        json.dumps(
            {
                "metric": "alert_p99_ms",
                "value": round(pct(fired, 99), 1) if fired else None,
                "p50": round(pct(fired, 50), 1) if fired else None,
                "max": round(max(fired), 1) if fired else None,
                "samples": len(fired),
                "missed": missed,
                "resolved_p99_ms": round(pct(resolved, 99), 1) if resolved else None,
                "engines": args.engines,
            }
        )
    )
    return 0 if fired and not missed else 1


if __name__ == "__main__":
    sys.exit(main())
