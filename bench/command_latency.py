"""Kill latency end to end: HTTP API -> transaction -> channel layer -> engine sockets -> SDK.

    .venv/bin/python bench/command_latency.py [--engines 100] [--rounds 8] [--solo-rounds 30]
                                              [--procs 1] [--trace] [--profile DIR]

Starts what it needs (the embedded PostgreSQL unless DATABASE_URL is set, and an embedded Redis of
its own on a free port unless REDIS_URL is set: see ``own_redis``), creates a scratch database, runs
uvicorn with the product's ASGI app, and connects real ``EngineClient``s
over the real WebSocket: first one engine, then a fleet of ``--engines`` (in this process's
asyncio loop, or split over ``--procs`` processes). Each round an operator's API token POSTs a
kill to /api/v1/commands and the script measures, per engine, from the moment the POST is sent:

- received: the SDK halted the engine's gate (it does so on receipt, before its command_ack);
- acked: the server stored the command_ack (Command.acknowledged_at);
- done: the server stored the command_result with the engine HALTED (completed_at, state_after).

Between rounds the engines are set back to ACTIVE directly (the desired state in the database
first, then each client's gate), which is not something an operator can do: the SDK refuses a
resume out of HALTED without a second person's approval. The first round of each phase warms up
connections and is not counted; on a slow machine the fleet stops after ``--budget`` seconds
(with at least three rounds), so that the whole run stays within two minutes.

``--trace`` runs the server with its stages wrapped in timers (see ``traced_application``) and
prints where the time goes: the HTTP request until the service is called, the transaction, the
push and its Redis publish, the fan-out to the consumers, the database writes and their queueing.
``--profile DIR`` records the uvicorn process with py-spy during the fleet rounds (py-spy must be
installed in the venv). The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/ too: uvicorn imports this module by name for --trace, without the script's path.
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

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

BENCH_DB = "controlplane_bench_commands"
FLEET_TAG = "bench-fleet"
ROUND_TIMEOUT_S = 15.0
MIN_ROUNDS = 3  # fleet rounds counted whatever the time budget: 300 samples with 100 engines


# --- servers and the scratch database ----------------------------------------------------------


def setup_data(n_fleet: int) -> None:
    """Run with the scratch database's settings: print the tokens as one JSON line."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.config.settings")
    django.setup()
    from django.contrib.auth.models import Group, User

    from controlplane import roles, services

    user = User.objects.create_user("bench-risk", email="bench@example.invalid")
    user.groups.add(Group.objects.get(name=roles.RISK_MANAGER))
    _, api_token = services.api_token_create(user=user, name="command latency bench")
    hello = {"mode": "paper", "broker": "bench", "account": "bench"}
    _, solo = services.engine_create(name="solo", **hello)
    fleet = [
        services.engine_create(name=f"fleet-{i:03d}", strategy_tags=[FLEET_TAG], **hello)[1]
        for i in range(n_fleet)
    ]
    print(
        json.dumps(
            {
                "api_token": api_token,
                "solo": {"solo": solo},
                "fleet": {f"fleet-{i:03d}": t for i, t in enumerate(fleet)},
            }
        )
    )


# --- the engines: real EngineClients, in this process or in helper processes -------------------


@dataclass
class Share:
    """Some of the engines, all on one asyncio loop; the times are time.perf_counter() values
    (CLOCK_MONOTONIC on Linux, so they compare across processes)."""

    ws_url: str
    tokens: dict[str, str]
    journal_root: Path
    clients: dict[str, Any] = field(default_factory=dict)
    halted: dict[str, float] = field(default_factory=dict)
    handled: dict[str, tuple[str, float]] = field(default_factory=dict)
    max_stall: float = 0.0
    late_halts: int = 0
    _probe: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from engine_sdk.client import EngineClient, HelloInfo

        hello = HelloInfo(
            engine_build="bench", config_hash="bench", mode="paper", broker="bench", account="bench"
        )
        for name, token in self.tokens.items():
            client = EngineClient(
                self.ws_url,
                token,
                journal_dir=self.journal_root / name,
                hello=hello,
                on_command=self._handler(name),
            )
            client.on_state_change(self._on_change(name))
            self.clients[name] = client
        await asyncio.gather(*(c.start() for c in self.clients.values()))
        await asyncio.gather(*(c.wait_connected(30) for c in self.clients.values()))
        self._probe = asyncio.create_task(self._stall_probe())

    def _on_change(self, name: str) -> Any:
        def on_change(change: Any) -> None:
            if change.new == "HALTED":
                self.halted.setdefault(name, time.perf_counter())

        return on_change

    def _handler(self, name: str) -> Any:
        from engine_sdk.client import CommandOutcome

        async def on_command(command: Any) -> Any:
            now = time.perf_counter()
            self.handled[name] = (str(command.command_id), now)
            # The SDK halts on receipt, before its ack; the handler runs after the ack. An
            # engine still trading here means it did not, and it is counted.
            if command.kind == "kill" and self.clients[name].gate.state != "HALTED":
                self.late_halts += 1
                self.halted.setdefault(name, now)
            if command.kind == "kill":
                return CommandOutcome(
                    status="succeeded",
                    detail="nothing to cancel or flatten",
                    trading_state="HALTED",
                )
            return CommandOutcome(status="failed", detail=f"{command.kind} is not benchmarked")

        return on_command

    async def _stall_probe(self) -> None:
        # How late a 1 ms sleep wakes up: the worst of it is how long this loop was busy.
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.max_stall = max(self.max_stall, time.perf_counter() - before - 0.001)

    def arm(self) -> None:
        self.halted.clear()
        self.handled.clear()
        self.max_stall = 0.0
        self.late_halts = 0

    async def wait_halted(self, within: float) -> None:
        deadline = time.perf_counter() + within
        while len(self.halted) < len(self.clients) or len(self.handled) < len(self.clients):
            if time.perf_counter() > deadline:
                missing = sorted(set(self.clients) - set(self.halted))
                raise RuntimeError(f"not halted within {within}s: {missing[:5]}")
            await asyncio.sleep(0.002)

    def report(self) -> dict[str, Any]:
        return {
            "halted": dict(self.halted),
            "handled": dict(self.handled),
            "max_stall": self.max_stall,
            "late_halts": self.late_halts,
            "ids": {name: c.engine_id for name, c in self.clients.items()},
        }

    async def reset(self) -> None:
        for client in self.clients.values():
            client.gate.set_state("ACTIVE", reason="bench reset")
        # The state events are stored before the next kill, so they do not ride along with it.
        await asyncio.gather(*(c.flush(10) for c in self.clients.values()))

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await asyncio.gather(*(c.close() for c in self.clients.values()))


def share_process(conn: Any, ws_url: str, tokens: dict[str, str], journal_root: str) -> None:
    """A helper process: runs a Share and obeys start/arm/wait/report/reset/close over a pipe."""

    async def serve() -> None:
        share = Share(ws_url, tokens, Path(journal_root))
        loop = asyncio.get_running_loop()
        while True:
            op, arg = await loop.run_in_executor(None, conn.recv)
            try:
                result: Any = None
                if op == "start":
                    await share.start()
                elif op == "arm":
                    share.arm()
                elif op == "wait":
                    await share.wait_halted(arg)
                    result = share.report()
                elif op == "reset":
                    await share.reset()
                elif op == "close":
                    await share.close()
                conn.send(("ok", result))
            except Exception as exc:
                conn.send(("error", repr(exc)))
            if op == "close":
                return

    asyncio.run(serve())


class RemoteShare:
    def __init__(self, ctx: Any, ws_url: str, tokens: dict[str, str], journal_root: Path) -> None:
        self.conn, child = ctx.Pipe()
        self.size = len(tokens)
        self.proc = ctx.Process(
            target=share_process, args=(child, ws_url, tokens, str(journal_root)), daemon=True
        )
        self.proc.start()

    async def call(self, op: str, arg: Any = None) -> Any:
        def roundtrip() -> Any:
            self.conn.send((op, arg))
            return self.conn.recv()

        status, result = await asyncio.to_thread(roundtrip)
        if status != "ok":
            raise RuntimeError(f"engine process: {op}: {result}")
        return result

    def stop(self) -> None:
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


class Engines:
    """The engines of one phase, split over this process and ``procs - 1`` helper processes."""

    def __init__(self, ws_url: str, tokens: dict[str, str], journal_root: Path, procs: int):
        names = sorted(tokens)
        parts = [names[i::procs] for i in range(procs)]
        self.local = Share(ws_url, {n: tokens[n] for n in parts[0]}, journal_root)
        ctx = multiprocessing.get_context("spawn")
        self.remote = [
            RemoteShare(ctx, ws_url, {n: tokens[n] for n in part}, journal_root)
            for part in parts[1:]
            if part
        ]

    def __len__(self) -> int:
        return len(self.local.tokens) + sum(r.size for r in self.remote)

    async def start(self) -> None:
        await asyncio.gather(self.local.start(), *(r.call("start") for r in self.remote))

    async def arm(self) -> None:
        self.local.arm()
        await asyncio.gather(*(r.call("arm") for r in self.remote))

    async def wait_halted(self, within: float) -> dict[str, Any]:
        async def local() -> dict[str, Any]:
            await self.local.wait_halted(within)
            return self.local.report()

        reports = await asyncio.gather(local(), *(r.call("wait", within) for r in self.remote))
        merged: dict[str, Any] = {
            "halted": {},
            "handled": {},
            "max_stall": 0.0,
            "late_halts": 0,
            "ids": {},
        }
        for report in reports:
            merged["ids"].update(report["ids"])
            merged["halted"].update(report["halted"])
            merged["handled"].update(report["handled"])
            merged["max_stall"] = max(merged["max_stall"], report["max_stall"])
            merged["late_halts"] += report["late_halts"]
        return merged

    async def reset(self) -> None:
        await asyncio.gather(self.local.reset(), *(r.call("reset") for r in self.remote))

    async def close(self) -> None:
        results = await asyncio.gather(
            self.local.close(), *(r.call("close") for r in self.remote), return_exceptions=True
        )
        for remote in self.remote:
            remote.stop()
        for result in results:
            if isinstance(result, BaseException):
                raise result


# --- one kill, measured ------------------------------------------------------------------------


@dataclass
class Sent:
    t_send: float  # perf_counter when the request started going out
    wall_send: float  # time.time() at the same moment, to compare with server timestamps
    t_response: float
    status: int
    body: dict[str, Any]


def post_kill(port: int, api_token: str, selector: str, confirm: str, reason: str) -> Sent:
    body = json.dumps({"kind": "kill", "selector": selector, "reason": reason, "confirm": confirm})
    headers = {"Authorization": f"Bearer {api_token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.connect()  # the TCP handshake is not part of the figure
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t_send, wall_send = time.perf_counter(), time.time()
        conn.request("POST", "/api/v1/commands", body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        t_response = time.perf_counter()
    finally:
        conn.close()
    payload = json.loads(raw) if raw else {}
    return Sent(t_send, wall_send, t_response, response.status, payload)


def wait_recorded(db_url: str, batch_id: str, n: int, timeout: float) -> list[tuple[Any, ...]]:
    """Poll until every command of the batch has its result stored; return their rows."""
    import psycopg

    query = (
        "SELECT e.name, c.status, c.delivered_at, c.acknowledged_at, c.completed_at, "
        "c.state_after FROM controlplane_command c JOIN controlplane_engine e "
        "ON e.id = c.engine_id WHERE c.batch_id = %s"
    )
    deadline = time.monotonic() + timeout
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            rows = conn.execute(query, (batch_id,)).fetchall()
            if len(rows) == n and all(r[4] is not None for r in rows):
                return rows
            if time.monotonic() > deadline:
                open_ = [r[0] for r in rows if r[4] is None]
                raise RuntimeError(f"results not stored within {timeout}s: {open_[:5]}")
            time.sleep(0.01)


@dataclass
class Phase:
    engines: int
    received: list[float] = field(default_factory=list)
    acked: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)  # mark_delivered's timestamp
    response: list[float] = field(default_factory=list)  # the 201 came back
    sends: list[float] = field(default_factory=list)  # perf_counter of each counted POST
    ends: list[float] = field(default_factory=list)  # ... and when its results were all stored
    halts: list[dict[int, float]] = field(default_factory=list)  # engine id -> perf_counter
    first_last: list[tuple[float, float]] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    late_halts: int = 0
    rounds: int = 0


async def kill_round(
    engines: Engines,
    port: int,
    api_token: str,
    db_url: str,
    selector: str,
    confirm: str,
    phase: Phase | None,
    round_no: int,
) -> None:
    await engines.arm()
    sent = await asyncio.to_thread(
        post_kill, port, api_token, selector, confirm, f"command latency bench, round {round_no}"
    )
    if sent.status != 201:
        raise RuntimeError(f"POST /api/v1/commands answered {sent.status}: {sent.body}")
    ids = {c["engine"]: c["id"] for c in sent.body["commands"]}
    if len(ids) != len(engines):
        raise RuntimeError(f"the kill went to {len(ids)} engines, {len(engines)} are connected")
    report = await engines.wait_halted(ROUND_TIMEOUT_S)
    rows = await asyncio.to_thread(
        wait_recorded, db_url, sent.body["id"], len(ids), ROUND_TIMEOUT_S
    )
    for name, (command_id, _) in report["handled"].items():
        if command_id != ids[name]:
            raise RuntimeError(f"{name} handled {command_id}, not this round's {ids[name]}")
    for name, status, _, _, _, state_after in rows:
        if state_after != "HALTED" or status != "succeeded":
            raise RuntimeError(f"{name}: command {status}, state after {state_after!r}")
    if phase is None:
        return
    phase.rounds += 1
    phase.late_halts += report["late_halts"]
    ms = 1000.0
    received = [(t - sent.t_send) * ms for t in report["halted"].values()]
    phase.received += received
    phase.first_last.append((min(received), max(received)))
    phase.response.append((sent.t_response - sent.t_send) * ms)
    phase.sends.append(sent.t_send)
    phase.ends.append(time.perf_counter())
    phase.halts.append({report["ids"][name]: t for name, t in report["halted"].items()})
    phase.stalls.append(report["max_stall"] * ms)
    for _, _, delivered, acked, completed, _ in rows:
        if delivered is not None:
            phase.delivered.append((delivered.timestamp() - sent.wall_send) * ms)
        phase.acked.append((acked.timestamp() - sent.wall_send) * ms)
        phase.done.append((completed.timestamp() - sent.wall_send) * ms)


def reset_desired(db_url: str, names: list[str]) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE controlplane_engine SET desired_state = 'ACTIVE', desired_until = NULL, "
            "desired_set_by_right = '' "
            "WHERE name = ANY(%s)",
            (names,),
        )


async def run_phase(
    tokens: dict[str, str],
    selector: str,
    confirm: str,
    rounds: int,
    *,
    ws_url: str,
    port: int,
    api_token: str,
    db_url: str,
    journal_root: Path,
    procs: int,
    profile: Path | None = None,
    server_pid: int | None = None,
    stop_at: float | None = None,
) -> Phase:
    engines = Engines(ws_url, tokens, journal_root, procs)
    phase = Phase(engines=len(tokens))
    spy = None
    await engines.start()
    try:
        for round_no in range(rounds + 1):
            if round_no == 1 and profile is not None and server_pid is not None:
                spy = start_profiler(profile, server_pid)
            await kill_round(
                engines,
                port,
                api_token,
                db_url,
                selector,
                confirm,
                phase if round_no else None,
                round_no,
            )
            if stop_at is not None and round_no >= MIN_ROUNDS and time.monotonic() > stop_at:
                break  # a slow machine gets fewer rounds rather than a late answer
            await asyncio.to_thread(reset_desired, db_url, list(tokens))
            await engines.reset()
            # Let the heartbeats fall at a different point of each round.
            await asyncio.sleep(0.05 + 0.1 * (round_no % 4))
    finally:
        if spy is not None:
            stop_process(spy, signal.SIGINT)
        await engines.close()
    return phase


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
            "--rate",
            "1000",
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


# --- --trace: where the time goes inside the server ---------------------------------------------
#
# uvicorn runs ``traced_application`` instead of the plain app: the same application with its
# stages wrapped to note time.perf_counter() values (CLOCK_MONOTONIC, comparable with this
# process's) into the file named by BENCH_TRACE_FILE. The product's code is not changed.


def traced_application() -> Any:
    import atexit
    import threading

    from channels import consumer as channels_consumer

    # The ASGI app first: importing it sets Django up, which the modules below need.
    from controlplane.config import asgi

    application = asgi.application
    from controlplane import hub
    from controlplane.commands import delivery, issuing, lifecycle
    from controlplane.gateway import batches, session, socket

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

    def sync_span(name: str, func: Any, key: Any = None) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                return func(*args, **kwargs)
            finally:
                notes.append((name, start, now(), key(*args, **kwargs) if key else None))

        return wrapper

    def async_span(name: str, func: Any, key: Any = None) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                return await func(*args, **kwargs)
            finally:
                notes.append((name, start, now(), key(*args, **kwargs) if key else None))

        return wrapper

    def frame_type(engine_id: int, frame: Any) -> list[Any]:
        return [type(frame).__name__, engine_id]

    # The API's entry (command_issue calls it too).
    issue = issuing.command_batch_issue

    def counted_issue(*args: Any, **kwargs: Any) -> Any:
        from django.db import connection

        queries = 0

        def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            nonlocal queries
            queries += 1
            start = now()
            try:
                return execute(sql, params, many, context)
            finally:
                notes.append(("issue_sql", start, now(), " ".join(sql.split())[:70]))

        try:
            with connection.execute_wrapper(count):
                return issue(*args, **kwargs)
        finally:
            notes.append(("issue_queries", now(), now(), queries))

    issuing.command_batch_issue = sync_span("command_issue", counted_issue)
    delivery.push = sync_span("push", delivery.push)
    hub.publish = sync_span("publish", hub.publish)
    channels_consumer.aclose_old_connections = async_span(
        "dispatch_hop", channels_consumer.aclose_old_connections
    )
    session.record = sync_span("record", session.record, frame_type)
    lifecycle.mark_delivered = sync_span("mark_delivered", lifecycle.mark_delivered)
    batches.events_many = sync_span("events", batches.events_many)
    engine_consumer = socket.EngineConsumer
    engine_consumer.push_commands = async_span(
        "consumer", engine_consumer.push_commands, lambda self, entries: self.engine_id
    )
    receive = engine_consumer.receive

    async def traced_receive(self: Any, text_data: Any = None, bytes_data: Any = None) -> None:
        start = now()
        try:
            await receive(self, text_data, bytes_data)
        finally:
            head = (text_data or "")[:40]
            kind = head.split('"type":"', 1)[-1].split('"', 1)[0] if '"type":"' in head else "?"
            notes.append(("receive", start, now(), [kind, self.engine_id]))

    engine_consumer.receive = traced_receive
    return application


def read_trace(path: Path) -> list[tuple[str, float, float, Any]]:
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines() if line]


def print_breakdown(title: str, phase: Phase, notes: list[tuple[str, float, float, Any]]) -> None:
    """Per fleet round, the server's stages in ms from the POST; then p50/max over the rounds."""
    ms = 1000.0
    stages: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        stages.setdefault(name, []).append(value)

    durations: dict[str, list[float]] = {}
    for i, (t_send, end) in enumerate(zip(phase.sends, phase.ends, strict=True)):
        mine = [n for n in notes if t_send <= n[1] < end]

        def first(name: str, within: list[tuple[str, float, float, Any]] = mine) -> Any:
            return next((n for n in within if n[0] == name), None)

        issue, push, publish = first("command_issue"), first("push"), first("publish")
        consumers_ = sorted((n for n in mine if n[0] == "consumer"), key=lambda n: n[1])
        if not (issue and push and publish and consumers_):
            continue
        add("POST sent -> service called (HTTP, auth, parsing)", (issue[1] - t_send) * ms)
        add("service: transaction until commit", (push[1] - issue[1]) * ms)
        add("on commit: push (encode + publish)", (push[2] - push[1]) * ms)
        add("  of which the Redis publish", (publish[2] - publish[1]) * ms)
        add("push done -> 1st consumer handler", (consumers_[0][1] - push[2]) * ms)
        add("push done -> last consumer handler", (consumers_[-1][1] - push[2]) * ms)
        add(
            "service returned -> 201 sent (batch JSON)",
            phase.response[i] - (issue[2] - t_send) * ms,
        )
        for name in ("dispatch_hop", "mark_delivered", "record", "events"):
            durations.setdefault(name, []).extend((n[2] - n[1]) * ms for n in mine if n[0] == name)
        # The consumer sends right after its handler starts: the rest is network and the engine.
        # Negative: the engine had the kill before the push reached its consumer, from the
        # heartbeat's re-check of undelivered commands.
        entered = {n[3]: n[1] for n in consumers_}
        gaps = [
            (t - entered[engine_id]) * ms
            for engine_id, t in phase.halts[i].items()
            if engine_id in entered
        ]
        durations.setdefault("consumer handler -> engine halted", []).extend(gaps)
        durations.setdefault("engines reached first by a heartbeat re-send", []).append(
            sum(gap < 0 for gap in gaps)
        )
        # Each ack's wait for a free database thread: from its frame's handling to its write.
        ack_in = {n[3][1]: n[1] for n in mine if n[0] == "receive" and n[3][0] == "command_ack"}
        waits = [
            (n[1] - ack_in[n[3][1]]) * ms
            for n in mine
            if n[0] == "record" and n[3][0] == "CommandAck" and n[3][1] in ack_in
        ]
        durations.setdefault("ack: frame handled -> its write starts", []).extend(waits)
        # Each statement of the service call, by its first words: where the transaction waits.
        for n in mine:
            if n[0] == "issue_sql":
                durations.setdefault(f"SQL: {n[3][:44]}", []).append((n[2] - n[1]) * ms)
        queries = first("issue_queries")
        if queries:
            durations.setdefault("SQL statements in the service call", []).append(queries[3])
        heartbeats = [n for n in mine if n[0] == "record" and n[3][0] == "Heartbeat"]
        durations.setdefault("heartbeat writes per round", []).append(len(heartbeats))
    print(f"server stages, {title} (ms from the POST; p50 and max over the rounds)")
    print(f"  {'':<50} {'p50':>8} {'max':>8}")
    for name, values in stages.items():
        print(f"  {name:<50} {pct(values, 50):>8.1f} {max(values):>8.1f}")
    print(f"  {'durations (every occurrence in the rounds)':<50} {'n':>6} {'p50':>8} {'p99':>8}")
    for name, values in durations.items():
        if values:
            label = {
                "dispatch_hop": "consumer dispatch: close_old_connections hop",
                "mark_delivered": "mark_delivered (db thread)",
                "record": "heartbeat/ack/result write (db thread)",
                "events": "events write (db thread)",
            }.get(name, name)
            print(f"  {label:<50} {len(values):>6} {pct(values, 50):>8.1f} {pct(values, 99):>8.1f}")


# --- figures -----------------------------------------------------------------------------------


def row(what: str, values: list[float]) -> str:
    if not values:
        return f"  {what:<34} {'-':>8}"
    cells = [pct(values, 50), pct(values, 90), pct(values, 99), max(values)]
    return f"  {what:<34} {len(values):>7} " + " ".join(f"{v:>8.1f}" for v in cells)


def print_phase(title: str, phase: Phase) -> None:
    print(f"{title}: {phase.engines} engine(s), {phase.rounds} rounds, times in ms from the POST")
    print(f"  {'':<34} {'samples':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    print(row("HTTP 201 back at the operator", phase.response))
    print(row("received (gate HALTED in the SDK)", phase.received))
    print(row("  first engine of a round", [a for a, _ in phase.first_last]))
    print(row("  last engine of a round", [b for _, b in phase.first_last]))
    print(row("delivered_at (server, after send)", phase.delivered))
    print(row("acked (acknowledged_at stored)", phase.acked))
    print(row("done (result HALTED stored)", phase.done))
    print(row("engine loop's longest stall", phase.stalls))
    if phase.late_halts:
        print(
            f"  WARNING: {phase.late_halts} kills reached the handler before the gate halted: "
            "this SDK does not halt on receipt; 'received' is then the handler's start"
        )


# --- main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def journal_directory() -> Iterator[Path]:
    # tmpfs when there is one: the engines' state-file fsyncs would otherwise all queue on this
    # machine's one disk, a cost separate engine hosts do not share.
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="cp-bench-", dir=shm if shm.is_dir() else None))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=8, help="fleet kills counted")
    parser.add_argument(
        "--budget",
        type=float,
        default=75.0,
        help=f"seconds after which no new fleet round starts (at least {MIN_ROUNDS} are run)",
    )
    parser.add_argument("--solo-rounds", type=int, default=30, help="one-engine kills counted")
    parser.add_argument("--procs", type=int, default=1, help="processes the engines run in")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--profile", type=Path, help="py-spy the server into this folder")
    parser.add_argument(
        "--trace", action="store_true", help="time the server's stages (adds a little overhead)"
    )
    parser.add_argument("--setup", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup is not None:
        setup_data(args.setup)
        return 0
    started = time.monotonic()
    trace_file = None
    if args.trace:
        trace_file = Path(tempfile.mkstemp(prefix="cp-bench-trace-", suffix=".jsonl")[1])
    nproc = os.cpu_count()
    stages: list[tuple[str, float]] = []

    def stage(name: str) -> None:
        stages.append((name, time.monotonic() - started - sum(t for _, t in stages)))

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
            }
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "-v", "0"],
                cwd=ROOT,
                env=child_env,
                check=True,
            )
            stage("migrate")
            data = json.loads(
                subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--setup", str(args.engines)],
                    cwd=ROOT,
                    env=child_env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            stage("engines and token")
            port = free_port()
            app = ["controlplane.config.asgi:application"]
            if trace_file is not None:
                app = ["--factory", "bench.command_latency:traced_application"]
                child_env["BENCH_TRACE_FILE"] = str(trace_file)
            server = start_uvicorn(port, child_env, app=app, workers=args.workers)
            common = {
                "ws_url": f"ws://127.0.0.1:{port}/ws/engine/v1",
                "port": port,
                "api_token": data["api_token"],
                "db_url": db_url,
            }
            stage("uvicorn")
            load_before = os.getloadavg()[0]
            with journal_directory() as journal_root:
                solo = asyncio.run(
                    run_phase(
                        data["solo"],
                        "engine:solo",
                        "solo",
                        args.solo_rounds,
                        **common,
                        journal_root=journal_root / "solo",
                        procs=1,
                    )
                )
                stage("one engine")
                fleet = asyncio.run(
                    run_phase(
                        data["fleet"],
                        f"tag:{FLEET_TAG}",
                        "KILL ALL",
                        args.rounds,
                        **common,
                        journal_root=journal_root / "fleet",
                        procs=args.procs,
                        profile=args.profile,
                        server_pid=server.pid,
                        stop_at=started + args.budget,
                    )
                )
                stage("fleet")
            load_after = os.getloadavg()[0]
            import psycopg

            with psycopg.connect(db_url) as conn:
                stray = conn.execute(
                    "SELECT count(*) FROM controlplane_command WHERE batch_id IS NULL"
                ).fetchone()[0]
        finally:
            stop_process(server)
            drop_database(admin_url, BENCH_DB)
            notes = read_trace(trace_file) if trace_file is not None else []
            if trace_file is not None:
                trace_file.unlink(missing_ok=True)
    stage("cleanup")

    print(
        f"uvicorn workers: {args.workers}; engines in {args.procs} process(es); {nproc} CPUs, "
        f"load average {load_before:.1f} before the rounds, {load_after:.1f} after; "
        f"{stray} latched re-sends"
    )
    print(
        f"{time.monotonic() - started:.0f}s in all: "
        + ", ".join(f"{name} {t:.1f}s" for name, t in stages)
    )
    print_phase("one engine", solo)
    print_phase("fleet", fleet)
    if args.trace:
        print_breakdown("one engine", solo, notes)
        print_breakdown("fleet", fleet, notes)
    print(
        json.dumps(
            {
                "metric": f"kill_p99_ms_{fleet.engines}_engines",
                "value": round(pct(fleet.received, 99), 1),
                "p50": round(pct(fleet.received, 50), 1),
                "max": round(max(fleet.received), 1),
                "ack_p99_ms": round(pct(fleet.acked, 99), 1),
                "done_p99_ms": round(pct(fleet.done, 99), 1),
                "one_engine_p99_ms": round(pct(solo.received, 99), 1),
                "one_engine_ack_p99_ms": round(pct(solo.acked, 99), 1),
                "engines": fleet.engines,
                "samples": len(fleet.received),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
