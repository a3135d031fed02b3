"""Where Chromium is: the weekly report's PNG charts (kaleido) and the browser tests drive it.

In order: ``CHROMIUM_PATH`` when set (and then only it: a configured path that is wrong is an
error, not a reason to run another browser), the system's Chromium or Chrome on ``PATH``, then a
Chromium that Playwright downloaded (``playwright install chromium``, where the network allows).
Nothing here downloads a browser.

    python -m controlplane.chromium    # prints the path, or one line saying what to install
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["MISSING", "find"]

_ON_PATH = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Playwright's own downloads, by its layout (chrome-linux before its 1.49 release, chrome-linux64
# since).
_PLAYWRIGHT_BUILDS = ("chromium-*/chrome-linux64/chrome", "chromium-*/chrome-linux/chrome")

MISSING = (
    "Chromium is not found: install it (apt-get install chromium), set CHROMIUM_PATH to a "
    "Chromium executable, or let Playwright download its own (.venv/bin/playwright install "
    "chromium)."
)


def _executable(path: str) -> str | None:
    if Path(path).is_file() and os.access(path, os.X_OK):
        return path
    return shutil.which(path)


def _playwright_build() -> str | None:
    root = Path(
        os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright"
    )
    for pattern in _PLAYWRIGHT_BUILDS:
        # The newest build first: Playwright leaves older ones behind after an upgrade.
        for found in sorted(root.glob(pattern), reverse=True):
            if os.access(found, os.X_OK):
                return str(found)
    return None


def find() -> str | None:
    """The Chromium executable to drive, or None when there is none."""
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return _executable(configured)
    for name in _ON_PATH:
        found = shutil.which(name)
        if found:
            return found
    return _playwright_build()


def main() -> int:
    path = find()
    if path is None:
        configured = os.environ.get("CHROMIUM_PATH")
        if configured:
            print(f"CHROMIUM_PATH={configured} is not a Chromium executable.", file=sys.stderr)
        else:
            print(MISSING, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
