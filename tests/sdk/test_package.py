"""engine_sdk as a distribution of its own (engine_sdk/pyproject.toml).

The SDK is built and installed, as an engine's author would (``pip install ./engine_sdk``), into a
fresh virtual environment with nothing else in it, and used there away from this repository.
pip fetches msgspec and websockets from the package index (its cache makes that quick).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import engine_sdk

REPO = Path(__file__).resolve().parents[2]
SDK_DIR = REPO / "engine_sdk"
DIST = "trading-controlplane-sdk"

# Run in the fresh environment from a directory outside the repository, so that nothing is
# imported from the checkout. Prints what the assertions look at, as JSON.
PROBE = """
import asyncio, importlib.metadata as md, json, tempfile

import engine_sdk
from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, EngineClient, HelloInfo
import engine_sdk.schema, engine_sdk.simulator
import engine_sdk.adapters
import engine_sdk.adapters.freqtrade  # the bridge needs nothing but the SDK (no freqtrade)
import sys

try:
    import django
    django_found = True
except ModuleNotFoundError:
    django_found = False


async def use_client(journal):
    # Nothing listens on port 9: the client keeps the event in its journal and closes cleanly.
    hello = HelloInfo(engine_build="b", config_hash="c", mode="paper", broker="sim", account="a")
    client = EngineClient("ws://127.0.0.1:9/", "token", journal_dir=journal, hello=hello,
                          config=ClientConfig(fsync=False))
    await client.start()
    seq = client.emit(p.MetricEvent(ts=p.utc_now(), name="probe", value=1.0))
    await client.close()
    return seq


with tempfile.TemporaryDirectory() as journal:
    seq = asyncio.run(use_client(journal))

print(json.dumps({
    "file": engine_sdk.__file__,
    "version": engine_sdk.__version__,
    "django_found": django_found,
    "distributions": sorted(d.metadata["Name"].lower() for d in md.distributions()),
    "requires": md.requires(DIST) or [],
    "files": sorted(str(f) for f in md.files(DIST) or []),
    "seq": seq,
    # Adapters are optional extras: importing the SDK never imports a framework.
    "frameworks_loaded": sorted(m for m in ("nautilus_trader", "freqtrade") if m in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The probe's findings in a fresh venv holding only the SDK and what it needs."""
    root = tmp_path_factory.mktemp("sdk-package")
    # A copy: pip builds in the source tree, and its build/ must not land in the repository.
    source = root / "engine_sdk"
    shutil.copytree(
        SDK_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "install", str(source)], check=True, timeout=600)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run(
        [str(python), "-c", f"DIST = {DIST!r}\n{PROBE}"],
        cwd=elsewhere,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    result = json.loads(probe.stdout)
    result["venv"] = str(venv)
    return result


def test_the_sdk_installs_and_runs_in_an_environment_without_django(
    installed: dict[str, Any],
) -> None:
    # Imported from the environment, not from this checkout.
    assert installed["file"].startswith(installed["venv"])
    assert not installed["django_found"]
    assert "django" not in installed["distributions"]
    assert installed["seq"] == 1
    assert installed["frameworks_loaded"] == []
    assert installed["version"] == engine_sdk.__version__


def test_the_sdk_needs_only_msgspec_and_websockets_and_pins_neither(
    installed: dict[str, Any],
) -> None:
    runtime = [Requirement(text) for text in installed["requires"]]
    runtime = [req for req in runtime if req.marker is None]
    assert sorted(req.name for req in runtime) == ["msgspec", "websockets"]
    for req in runtime:
        operators = {spec.operator for spec in req.specifier}
        # A range with a floor: installable beside an engine framework's own versions.
        assert ">=" in operators and not operators & {"==", "==="}, str(req)
    # Nothing but the SDK and its two dependencies (and pip's own) went into the environment.
    assert set(installed["distributions"]) - {"pip", "setuptools"} == {
        DIST,
        "msgspec",
        "websockets",
    }


def test_the_distribution_ships_every_module_and_nothing_else(installed: dict[str, Any]) -> None:
    modules = {f for f in installed["files"] if f.startswith("engine_sdk/") and f.endswith(".py")}
    # The adapters subpackage too (engine_sdk/adapters/nautilus.py, freqtrade.py).
    shipped = [*SDK_DIR.glob("*.py"), *SDK_DIR.glob("adapters/*.py")]
    assert modules == {f"engine_sdk/{path.relative_to(SDK_DIR)}" for path in shipped}
    packaged = {f.split("/")[0] for f in installed["files"]}
    dist_info = f"{DIST.replace('-', '_')}-{engine_sdk.__version__}.dist-info"
    assert packaged <= {"engine_sdk", dist_info}
    assert not any(f.endswith("pyproject.toml") for f in installed["files"])


def test_the_control_plane_depends_on_the_sdk_instead_of_packaging_it() -> None:
    server = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = [Requirement(text) for text in server["project"]["dependencies"]]
    sdk = [req for req in requirements if req.name == DIST]
    assert [str(req.specifier) for req in sdk] == [f"=={engine_sdk.__version__}"]
    included = server["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("engine_sdk") for pattern in included)
