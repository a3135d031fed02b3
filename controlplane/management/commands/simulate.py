"""Run paper engines against a running control plane, for demos and tests.

Engines are registered (or reused) before the event loop starts, because the ORM must not run in
the loop's thread; a reused engine gets a fresh token, since only hashes are stored. Each engine
keeps its journal and its paper book under ``<data dir>/sim/<name>/``, so a restart resumes the
same seqs and positions. SIGINT or SIGTERM stops every engine and flushes what it has not sent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction

from controlplane import services, stages
from controlplane.config import demo_history, embedded
from controlplane.models import REAL_MONEY_STAGES, Engine, Instrument, Mode, Stage
from engine_sdk import __version__, simulator
from engine_sdk.client import EngineClient, EngineClientError, HelloInfo
from engine_sdk.protocol import Welcome
from engine_sdk.simulator import (
    MAX_GROSS_LEVERAGE,
    STARTING_CASH,
    STRATEGIES,
    UNIVERSE,
    PaperEngine,
    Strategy,
)

ACTOR = "manage.py simulate"
BROKER = "paper-sim"
FLUSH_TIMEOUT_S = 5.0
# The target capital of the demo's engines placed at a real-money stage: at the ramp's first step
# (25 %), their ceiling is what the simulated broker lets an account hold anyway.
DEMO_TARGET_CAPITAL = STARTING_CASH * MAX_GROSS_LEVERAGE * 4
# The demo's promotion candidate carries on as its recorded past went: a steady engine that
# trades now and then, on calm prices, with no broker rejection and no data gap, so that what it
# adds while the demo runs keeps its figures near its baseline's for a few hours.
CALM = {"order_probability": 0.003, "broker_reject_rate": 0.0, "data_gap_rate": 0.0}
CALM_UNIVERSE = tuple(
    simulator.Instrument(i.symbol, i.sector, i.price, i.volatility / 50) for i in UNIVERSE
)


def engine_ws_url(url: str) -> str:
    """The engine socket URL of a control plane given by its web URL (http -> ws)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise CommandError(f"--url {url!r} is not an http(s) URL such as http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/engine/v1"):
        path += "/ws/engine/v1"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _health_url(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path.rstrip("/").removesuffix("/ws/engine/v1")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, f"{path}/healthz", "", ""))


@dataclass(frozen=True)
class SimEngine:
    name: str
    token: str
    strategy: Strategy
    journal_dir: Path
    # The mode its hello says: the one its stage allows (a simulated engine at small capital
    # says live; its orders are simulated all the same).
    mode: str = Mode.PAPER
    # Seeded with a recorded past (--seed-history): runs calm, as that past did.
    calm: bool = False


class Command(BaseCommand):
    help = "Run simulated paper engines that connect to the control plane until Ctrl+C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--engines", type=int, default=3, help="how many engines (default 3)")
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="the control plane's web URL"
        )
        parser.add_argument(
            "--wait-for-server",
            action="store_true",
            help="wait until GET /healthz answers before connecting",
        )
        parser.add_argument(
            "--wait-timeout",
            type=float,
            default=60.0,
            help="seconds --wait-for-server waits (default 60)",
        )
        parser.add_argument(
            "--tick", type=float, default=0.2, help="seconds per simulated step (default 0.2)"
        )
        parser.add_argument("--seed", type=int, default=None, help="make the simulation repeatable")
        parser.add_argument("--prefix", default="sim", help="engine names: <prefix>-1..N")
        parser.add_argument(
            "--stages",
            default="",
            help="the stage of each new engine, in order (the demo's: paper,shadow,small_capital); "
            "the simulator places an engine above paper itself, saying so in its stage history",
        )
        parser.add_argument(
            "--seed-history",
            action="store_true",
            help="give the first new paper engine fifteen days of recorded paper trading that "
            "pass its paper -> shadow gate (the demo's engine ready to promote; "
            "docs/going-live.md), and run it calm so that it stays close to that past",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["engines"]
        tick: float = options["tick"]
        if count < 1:
            raise CommandError("--engines must be at least 1")
        if tick <= 0:
            raise CommandError("--tick must be a positive number of seconds")
        ws_url = engine_ws_url(options["url"])
        if options["verbosity"] < 2:
            # One line per connection comes from this command; the SDK's info lines repeat it.
            logging.getLogger("engine_sdk").setLevel(logging.WARNING)
        if options["wait_for_server"]:
            self._wait_for_server(_health_url(options["url"]), options["wait_timeout"])
        placed = [stage.strip() for stage in options["stages"].split(",") if stage.strip()]
        unknown = [stage for stage in placed if stage not in Stage.values]
        if unknown:
            raise CommandError(f"--stages: {', '.join(unknown)} is not a stage ({Stage.values})")
        engines = self._prepare(
            options["prefix"], count, placed, seed_history=options["seed_history"]
        )
        # The loop below never touches the database; do not hold connections open meanwhile.
        connections.close_all()
        failed = asyncio.run(self._run(engines, ws_url, tick, options["seed"]))
        if failed == len(engines):
            raise CommandError("every engine stopped with an error (see above)")

    def _wait_for_server(self, health_url: str, timeout: float) -> None:
        self.stdout.write(f"Waiting for the control plane at {health_url} ...")
        started = time.monotonic()
        deadline = started + timeout
        next_note = started + 10
        problem = "no answer"
        while True:
            try:
                with urllib.request.urlopen(health_url, timeout=2.0) as response:
                    if response.status == 200:
                        self.stdout.write("The control plane is up.")
                        return
                    problem = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
            except OSError as exc:
                problem = str(getattr(exc, "reason", exc))
            if time.monotonic() >= deadline:
                raise CommandError(
                    f"The control plane at {health_url} did not answer within {timeout:g} s "
                    f"(last: {problem}). Start it with `python manage.py up`, or pass its "
                    f"address with --url."
                )
            if time.monotonic() >= next_note:
                waited = time.monotonic() - started
                self.stdout.write(f"  still waiting after {waited:.0f} s (last: {problem})")
                next_note += 10
            # Polling another process: there is nothing to await instead.
            time.sleep(0.25)

    @transaction.atomic
    def _prepare(
        self, prefix: str, count: int, placed: list[str], *, seed_history: bool = False
    ) -> list[SimEngine]:
        self._describe_instruments()
        data_dir = embedded.data_dir() / "sim"
        engines = []
        names = [f"{prefix}-{number}" for number in range(1, count + 1)]
        # A restarted demo finds its candidate by the recorded past it was given.
        calm = demo_history.seeded(names) if seed_history else set()
        now = datetime.now(UTC)
        for number in range(1, count + 1):
            name = f"{prefix}-{number}"
            strategy = STRATEGIES[(number - 1) % len(STRATEGIES)]
            engine = Engine.objects.filter(name=name).first()
            if engine is None:
                try:
                    engine, token = services.engine_create(
                        name=name,
                        mode=Mode.PAPER,
                        broker=BROKER,
                        account=name,
                        strategy_tags=[strategy],
                        actor_label=ACTOR,
                    )
                except ValidationError as exc:
                    raise CommandError(f"Engine {name} not created: {exc.messages}") from None
                self.stdout.write(f"Engine {name} created ({strategy}).")
                stage = placed[number - 1] if number <= len(placed) else Stage.PAPER
                if stage in REAL_MONEY_STAGES:
                    # Real money is a share of a target capital (docs/going-live.md, the ramp).
                    Engine.objects.filter(pk=engine.pk).update(target_capital=DEMO_TARGET_CAPITAL)
                if stage != engine.stage:
                    # The demo shows the way to real money: its engines start at different stages.
                    stages.stage_set(
                        engine=engine,
                        to_stage=stage,
                        reason=f"placed at {stage} by the simulator (simulate --stages)",
                        actor_label=ACTOR,
                    )
                    engine.refresh_from_db(fields=["stage", "mode"])
                elif seed_history and not calm:
                    demo_history.seed_paper_history(engine, now)
                    calm.add(name)
                    self.stdout.write(
                        f"Engine {name} given {demo_history.DAYS} days of recorded paper trading "
                        "(ready for shadow)."
                    )
            else:
                if not engine.is_active:
                    raise CommandError(
                        f"Engine {name} exists and is inactive; the simulator only runs active "
                        f"engines. Choose other names with --prefix."
                    )
                token = services.engine_rotate_token(engine=engine, actor_label=ACTOR)
            engines.append(
                SimEngine(name, token, strategy, data_dir / name, engine.mode, name in calm)
            )
        return engines

    def _describe_instruments(self) -> None:
        # Sector limits need sectors; a sector a risk manager already set is left as it is.
        Instrument.objects.bulk_create(
            [Instrument(symbol=i.symbol, sector=i.sector) for i in UNIVERSE],
            ignore_conflicts=True,
        )
        for instrument in UNIVERSE:
            Instrument.objects.filter(symbol=instrument.symbol, sector="").update(
                sector=instrument.sector
            )

    async def _run(self, specs: list[SimEngine], ws_url: str, tick: float, seed: int | None) -> int:
        """Run until SIGINT/SIGTERM; return how many engines stopped with an error."""
        stop = asyncio.Event()
        engines = [self._engine(spec, ws_url, seed) for spec in specs]
        # SIGINT/SIGTERM shut each engine down on purpose (docs/sdk.md): new orders refused,
        # working orders cancelled, a final state event, then "stopping" to the control plane.
        for _, client in engines:
            client.install_signal_handlers(
                (signal.SIGINT, signal.SIGTERM),
                on_signal=lambda signum: stop.set(),
                timeout=FLUSH_TIMEOUT_S,
            )
        self.stdout.write(
            f"Running {len(engines)} simulated engines against {ws_url} (Ctrl+C stops)."
        )
        try:
            results = await asyncio.gather(
                *(
                    self._drive(spec.name, engine, client, stop, tick)
                    for spec, (engine, client) in zip(specs, engines, strict=True)
                )
            )
        finally:
            # Whatever is not acked within the timeout stays in the journal for the next run.
            await asyncio.gather(
                *(
                    client.shutdown("simulation stopped", timeout=FLUSH_TIMEOUT_S)
                    for _, client in engines
                ),
                return_exceptions=True,
            )
        self.stdout.write(f"Stopped {len(engines)} paper engines.")
        return results.count(False)

    def _engine(
        self, spec: SimEngine, ws_url: str, seed: int | None
    ) -> tuple[PaperEngine, EngineClient]:
        def connected(welcome: Welcome) -> None:
            self.stdout.write(
                f"{spec.name} connected to {ws_url} (engine id {welcome.engine_id}, "
                f"desired state {welcome.desired_state})"
            )

        engine = PaperEngine.create(
            ws_url,
            spec.token,
            journal_dir=spec.journal_dir,
            account=spec.name,
            strategy=spec.strategy,
            hello=HelloInfo(
                engine_build=f"paper-sim/{__version__}",
                config_hash=spec.strategy,
                mode=spec.mode,  # type: ignore[arg-type]
                broker=BROKER,
                account=spec.name,
            ),
            on_welcome=connected,
            engine_options={
                "seed": None if seed is None else f"{seed}:{spec.name}",
                # A live-mode engine's fills stand for real ones: no market price beside them.
                "market_prices": spec.mode != Mode.LIVE,
                **({**CALM, "universe": CALM_UNIVERSE} if spec.calm else {}),
            },
        )
        assert isinstance(engine.client, EngineClient)
        return engine, engine.client

    async def _drive(
        self,
        name: str,
        engine: PaperEngine,
        client: EngineClient,
        stop: asyncio.Event,
        tick: float,
    ) -> bool:
        await client.start()
        try:
            await engine.run(stop, tick_interval_s=tick)
        except EngineClientError as exc:
            # A refused token or a second process running as this engine: retrying is no use.
            self.stderr.write(f"{name} stopped: {exc}")
            return False
        return True
