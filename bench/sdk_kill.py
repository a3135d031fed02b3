"""The SDK's share of a fleet kill: a bare local server sends a kill to N EngineClients.

    .venv/bin/python bench/sdk_kill.py [--clients 100] [--rounds 20]

No control plane, database or Redis: a websockets server in this process greets each client
(welcome), acks its events, sends heartbeats, and each round writes one pre-encoded kill frame to
every socket. Measured from the start of those writes until each client's gate is HALTED (the
SDK halts on receipt, before its ack), with the clients' journals and trading state on disk as an
engine keeps them (fsync on). This is the part of bench/command_latency.py that the engines add
when all of them share one process, without the server's part.

Baseline, measured in the same run in the same way: as many bare websockets connections, each
only reading its socket, until each has the kill frame. The ratio is the SDK's p99 over it.
The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402
from _common import pct  # noqa: E402 - bench/ is first on the path

from engine_sdk import protocol as p  # noqa: E402
from engine_sdk.client import CommandOutcome, EngineClient, HelloInfo  # noqa: E402

ROUND_TIMEOUT_S = 10.0


class Server:
    """Greets, acks events, beats; ``kill`` writes one kill frame to every socket it holds."""

    def __init__(self) -> None:
        self.sockets: list[Any] = []

    async def handle(self, ws: Any) -> None:
        hello = p.decode_engine_frame(await ws.recv())
        assert isinstance(hello, p.Hello), hello
        await ws.send(
            p.encode(
                p.Welcome(
                    protocol=p.PROTOCOL_VERSION,
                    engine_id=len(self.sockets) + 1,
                    engine_name="bench",
                    last_seq=hello.last_seq,
                    heartbeat_interval_s=5.0,
                    desired_state="ACTIVE",
                    limits_version=0,
                )
            ).decode()
        )
        self.sockets.append(ws)
        beat = asyncio.create_task(self._beat(ws))
        try:
            async for message in ws:
                frame = p.decode_engine_frame(message)
                if isinstance(frame, p.Events) and frame.events:
                    await ws.send(p.encode(p.Ack(seq=frame.events[-1].seq)).decode())
        finally:
            beat.cancel()
            self.sockets.remove(ws)

    async def _beat(self, ws: Any) -> None:
        # Anything from the server keeps the SDK's dead-man from pausing the engine.
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(1.0)
                await ws.send(p.encode(p.ServerHeartbeat(ts=p.utc_now())).decode())

    async def kill(self) -> float:
        frame = p.encode(
            p.Command(
                command_id=uuid.uuid4(),
                kind="kill",
                params={"flatten": False},
                reason="bench",
                issued_by="bench",
                issued_at=p.utc_now(),
            )
        ).decode()
        started = time.perf_counter()
        await asyncio.gather(*(ws.send(frame) for ws in list(self.sockets)))
        return started


async def rounds(
    server: Server,
    n: int,
    count: int,
    received: dict[int, float],
    reset: Callable[[], Awaitable[None]],
) -> list[list[float]]:
    """Per round, each receiver's time (ms) from the start of the kill's writes."""
    per_round = []
    for _ in range(count):
        received.clear()
        started = await server.kill()
        deadline = started + ROUND_TIMEOUT_S
        while len(received) < n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {len(received)} of {n} received the kill")
            await asyncio.sleep(0.0005)
        per_round.append([(t - started) * 1000 for t in received.values()])
        await asyncio.sleep(0.3)  # the acks, results and state events of the round settle
        await reset()
        await asyncio.sleep(0.2)
    return per_round


async def bare_phase(url: str, server: Server, n: int, count: int) -> list[list[float]]:
    received: dict[int, float] = {}
    hello = p.encode(
        p.Hello(
            protocol=p.PROTOCOL_VERSION,
            engine_build="bench",
            config_hash="bench",
            mode="paper",
            broker="bench",
            account="bench",
            trading_state="ACTIVE",
            last_seq=0,
        )
    ).decode()

    async def reader(i: int, ws: Any) -> None:
        async for message in ws:
            if '"command"' in message:
                received.setdefault(i, time.perf_counter())

    sockets = []
    for _ in range(n):
        ws = await websockets.connect(url, compression=None)
        await ws.send(hello)
        await ws.recv()  # welcome
        sockets.append(ws)
    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(sockets)]

    async def nothing() -> None:
        return None

    try:
        return await rounds(server, n, count, received, nothing)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def sdk_phase(
    url: str, server: Server, n: int, count: int, journals: Path
) -> list[list[float]]:
    received: dict[int, float] = {}
    hello = HelloInfo(
        engine_build="bench", config_hash="bench", mode="paper", broker="bench", account="bench"
    )

    async def on_command(command: p.Command) -> CommandOutcome:
        return CommandOutcome(status="succeeded", trading_state="HALTED")

    clients = []
    for i in range(n):
        client = EngineClient(
            url, f"token-{i}", journal_dir=journals / str(i), hello=hello, on_command=on_command
        )

        def on_change(change: Any, i: int = i) -> None:
            if change.new == "HALTED":
                received.setdefault(i, time.perf_counter())

        client.on_state_change(on_change)
        clients.append(client)
    await asyncio.gather(*(c.start() for c in clients))
    await asyncio.gather(*(c.wait_connected(30) for c in clients))

    async def reset() -> None:
        for client in clients:
            client.gate.set_state("ACTIVE", reason="bench reset")

    try:
        return await rounds(server, n, count, received, reset)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def summary(name: str, per_round: list[list[float]]) -> tuple[float, float]:
    every = [t for times in per_round for t in times]
    last = [max(times) for times in per_round]
    print(f"{name}: {len(per_round)} rounds, ms from the start of the kill's writes")
    print(
        f"  every receiver  p50 {pct(every, 50):7.1f}  p99 {pct(every, 99):7.1f}  "
        f"max {max(every):7.1f}"
    )
    print(
        f"  last of a round p50 {pct(last, 50):7.1f}  p99 {pct(last, 99):7.1f}  "
        f"max {max(last):7.1f}"
    )
    return pct(every, 99), pct(every, 50)


async def main_async(n: int, count: int) -> dict[str, Any]:
    server = Server()
    async with websockets.serve(server.handle, "127.0.0.1", 0, compression=None) as ws_server:
        url = f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}/ws/engine/v1"
        bare = await bare_phase(url, server, n, count)
        with tempfile.TemporaryDirectory(prefix="sdk-kill-") as journals:
            sdk = await sdk_phase(url, server, n, count, Path(journals))
    baseline, _ = summary(f"{n} bare websockets connections (baseline)", bare)
    value, p50 = summary(f"{n} EngineClients (gate HALTED)", sdk)
    return {
        "metric": f"sdk_kill_p99_ms_{n}_clients",
        "value": round(value, 1),
        "p50": round(p50, 1),
        "baseline": round(baseline, 1),
        "ratio": round(value / baseline, 2) if baseline else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    result = asyncio.run(main_async(args.clients, args.rounds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
