"""Fixtures that run real server processes for the tests.

``uvicorn_server`` runs the ASGI application in its own uvicorn process against the test database
(so it sees what the test commits: it needs ``transactional_db``) and the test's Redis database.
``browser`` and ``page`` drive Debian's headless Chromium through Playwright.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from django.conf import settings

from controlplane import chromium
from controlplane.config.serving import UVICORN_OPTIONS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 10.0

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]

# Variables of the test process that must not reach a server it starts: the xdist worker id would
# make the child's settings derive the Redis database a second time, and the async-unsafe switch
# is only for the test process (see the ``page`` fixture).
_NOT_INHERITED = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "DJANGO_ALLOW_ASYNC_UNSAFE")


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it, so parallel workers do not clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def current_database_url() -> str:
    """The URL of the database the current test uses (pytest-django's test database).

    Only meaningful inside a test that has database access set up (``transactional_db``).
    """
    from django.db import connection

    params = connection.settings_dict
    user = quote(params.get("USER") or "", safe="")
    password = quote(params.get("PASSWORD") or "", safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = params.get("HOST") or "127.0.0.1"
    port = f":{params['PORT']}" if params.get("PORT") else ""
    return f"postgresql://{credentials}{host}{port}/{quote(params['NAME'], safe='')}"


SERVER_APPLICATION_NAME = "controlplane-test-server"


def server_env(**overrides: str) -> dict[str, str]:
    """The environment for a server process of the test suite: test settings, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    # With the connection pool, as outside the tests; PGAPPNAME names the servers' connections
    # to PostgreSQL (pg_stat_activity.application_name), for tests that cut them.
    env.update(
        CONTROLPLANE_ENV="test",
        PYTHONUNBUFFERED="1",
        DB_POOL_ENABLED="true",
        PGAPPNAME=SERVER_APPLICATION_NAME,
    )
    env.update(overrides)
    return env


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET a URL; (status, body), with HTTP error statuses returned rather than raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ServerError(RuntimeError):
    """A server process did not start or stop as it should; the message carries its output."""


class UvicornServer:
    """``python -m uvicorn controlplane.config.asgi:application`` in a subprocess.

    The port is chosen once, so ``restart()`` brings the server back at the same URL (what a
    reconnecting engine or browser sees after a deploy). Output goes to ``log_path``; errors
    quote its tail.
    """

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        port: int | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.database_url = database_url
        self.redis_url = redis_url
        self.extra_env = env or {}
        self._owns_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="uvicorn-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _failure(self, message: str) -> ServerError:
        return ServerError(f"{message}\n--- uvicorn output ({self.log_path}) ---\n{self.output()}")

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        if self.running:
            raise ServerError(f"uvicorn is already running on port {self.port}")
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "controlplane.config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *UVICORN_OPTIONS,
        ]
        env = server_env(
            **{"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url, **self.extra_env}
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise self._failure(
                    f"uvicorn exited with code {self.process.returncode} before answering "
                    f"GET {self.url}/healthz"
                )
            try:
                status, _ = http_get(f"{self.url}/healthz", timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise self._failure(
                    f"uvicorn did not answer GET {self.url}/healthz with 200 within {timeout:.0f}s"
                    f" (last status: {status or 'no answer'})"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = SERVER_STOP_TIMEOUT_S) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server; delete its log unless the caller chose where it goes."""
        self.stop()
        if self._owns_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> UvicornServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def uvicorn_server(transactional_db: None, tmp_path: Path) -> Iterator[UvicornServer]:
    """A started uvicorn serving the app against this test's database and Redis database."""
    server = UvicornServer(
        database_url=current_database_url(),
        redis_url=settings.REDIS_URL,
        log_path=tmp_path / "uvicorn.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        # Shown by pytest only when the test fails.
        print(f"--- uvicorn output ---\n{server.output()[-8000:]}")


# --- Browser ------------------------------------------------------------------------------------


def chromium_path() -> str:
    path = chromium.find()
    if path is None:
        configured = os.environ.get("CHROMIUM_PATH")
        pytest.fail(
            f"CHROMIUM_PATH={configured} is not a Chromium executable."
            if configured
            else chromium.MISSING,
            pytrace=False,
        )
    return path


def _set_running_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    # Playwright's sync API keeps its event loop registered as the thread's running loop between
    # calls. Left like that, every later test in this process would see a running loop:
    # pytest-asyncio refuses to start its own, and Django raises SynchronousOnlyOperation on ORM
    # calls. So the loop is registered only while a ``page`` is in use.
    asyncio._set_running_loop(loop)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    playwright = sync_playwright().start()
    loop: Any = playwright._loop  # the loop Playwright's sync API runs on
    try:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
    except BaseException:
        playwright.stop()
        raise
    _set_running_loop(None)
    try:
        yield chromium
    finally:
        _set_running_loop(loop)
        try:
            chromium.close()
        finally:
            playwright.stop()


def _artifact_name(node_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", node_name).strip("_") or "test"


@pytest.fixture
def page(
    browser: Browser, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Page]:
    """A fresh browser context and page; a screenshot goes to test-artifacts/<test name>.png."""
    # While the page is in use Playwright's loop counts as running in this thread (see
    # _set_running_loop), and Django would refuse the test's own ORM calls (fixtures creating
    # users, assertions on rows) as if they came from async code. They do not: the loop is idle
    # while the test's code runs, so allow them for this test only.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    _set_running_loop(browser._loop)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    new_page = context.new_page()
    try:
        yield new_page
    finally:
        from playwright.sync_api import Error as PlaywrightError

        ARTIFACTS_DIR.mkdir(exist_ok=True)
        target = ARTIFACTS_DIR / f"{_artifact_name(request.node.name)}.png"
        try:
            new_page.screenshot(path=str(target), full_page=True)
        except PlaywrightError as exc:
            warnings.warn(f"no screenshot for {request.node.name}: {exc}", stacklevel=1)
        finally:
            context.close()
            _set_running_loop(None)
