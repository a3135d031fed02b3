"""controlplane.chromium finds the browser the report's charts and the browser tests drive, or
says in one line what to install (make test stops on it before running anything)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import chromium

REPO_ROOT = Path(__file__).resolve().parent.parent


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine with no browser: an empty PATH, no Playwright downloads, no CHROMIUM_PATH."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "ms-playwright"))
    monkeypatch.delenv("CHROMIUM_PATH", raising=False)
    return tmp_path


def test_nothing_found_on_a_bare_machine(bare: Path) -> None:
    assert chromium.find() is None


def test_the_system_chromium_on_path_is_found(bare: Path) -> None:
    found = _executable(bare / "bin" / "chromium-browser")
    assert chromium.find() == str(found)


def test_a_browser_playwright_downloaded_is_found_the_newest_first(bare: Path) -> None:
    _executable(bare / "ms-playwright" / "chromium-1100" / "chrome-linux" / "chrome")
    newest = _executable(bare / "ms-playwright" / "chromium-1200" / "chrome-linux64" / "chrome")
    assert chromium.find() == str(newest)


def test_a_configured_path_is_the_only_one_tried(
    bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _executable(bare / "bin" / "chromium")
    configured = _executable(bare / "elsewhere" / "chrome")
    monkeypatch.setenv("CHROMIUM_PATH", str(configured))
    assert chromium.find() == str(configured)
    # Wrong, it is an error: not a silent fall back on another browser than the one asked for.
    monkeypatch.setenv("CHROMIUM_PATH", str(bare / "no-such-chrome"))
    assert chromium.find() is None


def test_the_check_says_in_one_line_what_to_install(bare: Path) -> None:
    env = {"PATH": str(bare / "bin"), "PLAYWRIGHT_BROWSERS_PATH": str(bare / "ms-playwright")}
    done = subprocess.run(
        [sys.executable, "-m", "controlplane.chromium"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [chromium.MISSING]
    assert "apt-get install chromium" in done.stderr
    assert "playwright install chromium" in done.stderr
