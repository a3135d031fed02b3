#!/usr/bin/env python3
"""Write the secrets docker-compose.yml reads into ./secrets/, one random value a file.

    python3 deploy/make_secrets.py [DIRECTORY]      (`make secrets`)

A file that exists is left alone: the database and Redis keep the password they were first
started with (it is stored in their volumes), and a new SECRET_KEY would log everyone out. To
change one, delete its file, run this again, and follow docs/operations.md ("Rotating secrets").

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

# name -> bytes of randomness (URL-safe base64: about 4/3 as many characters).
SECRETS = {
    "secret_key": 50,  # Django's SECRET_KEY: 50 characters at least (settings.py)
    "channel_secret_key": 32,  # encrypts the notification channels' targets
    "metrics_token": 32,  # the bearer token Prometheus sends to /metrics
    "postgres_password": 32,
    "redis_password": 32,
}


def make_secrets(directory: Path) -> list[str]:
    """Create the missing secret files; returns the names written."""
    # The folder is the owner's alone on this machine. The files themselves must stay readable
    # by the containers' users (PostgreSQL's, Redis's and the control plane's, none of them the
    # owner): Compose mounts each file as it is, without changing its owner or mode.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    written = []
    for name, size in SECRETS.items():
        path = directory / name
        if path.exists():
            continue
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.fchmod(descriptor, 0o644)  # whatever the umask: see above
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(secrets.token_urlsafe(size) + "\n")
        written.append(name)
    return written


def main(argv: list[str]) -> int:
    directory = Path(
        argv[1] if len(argv) > 1 else Path(__file__).resolve().parent.parent / "secrets"
    )
    written = make_secrets(directory)
    kept = [name for name in SECRETS if name not in written]
    for name in written:
        print(f"wrote {directory / name}")
    for name in kept:
        print(f"kept  {directory / name} (exists)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
