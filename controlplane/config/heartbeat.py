"""The beat's liveness file: written after each pass of its schedule, checked by the health check.

Beat serves nothing a probe could ask: a process that is up but wedged (its database gone, a pass
that never returns) looks the same as a working one from outside. So each completed pass touches
a file, and the container's health check fails once the file is older than it should ever be.

    python -m controlplane.config.heartbeat /tmp/beat-heartbeat --max-age 60

No Django here: the check runs every few seconds and must not load the settings to do it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def touch(path: Path) -> None:
    path.touch()  # creates it, or sets an existing file's mtime to now


def age_s(path: Path) -> float | None:
    """Seconds since the file was last touched; None when there is no file."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 when the heartbeat file is recent.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--max-age", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)
    age = age_s(args.path)
    if age is None:
        print(f"unhealthy: {args.path} does not exist (no pass of the schedule yet)")
        return 1
    if age > args.max_age:
        print(f"unhealthy: {args.path} was last touched {age:.0f}s ago (> {args.max_age:.0f}s)")
        return 1
    print(f"healthy: {args.path} touched {age:.1f}s ago")
    return 0


if __name__ == "__main__":
    sys.exit(main())
