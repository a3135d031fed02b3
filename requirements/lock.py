"""Write the lockfiles: every transitive dependency pinned with the hashes of its files.

    .venv/bin/python requirements/lock.py      # (make lock) after changing a pyproject.toml

- requirements/production.lock: what `pip install .` needs, for the image (Dockerfile);
- requirements/dev.lock: that plus the `embedded` and `dev` extras, for make demo / make test
  and CI;
- tests/engines/requirements.lock: the trading frameworks the adapter tests run, beside the SDK.

The SDK (engine_sdk/, on no index) is left out of each: its own dependencies are locked in its
place, and it is installed from ./engine_sdk with --no-deps after the lock.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDK = "trading-controlplane-sdk"
PYTHON = "3.11"


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


def _requirements(*extras: str) -> list[str]:
    server, sdk = _project(ROOT / "pyproject.toml"), _project(ROOT / "engine_sdk/pyproject.toml")
    wanted = [*server["dependencies"], *sdk["dependencies"]]
    for extra in extras:
        wanted += server["optional-dependencies"][extra]
    return [r for r in wanted if not r.replace(" ", "").startswith(SDK)]


def _compile(requirements: list[str], output: Path) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".in") as spec:
        spec.write("\n".join(requirements) + "\n")
        spec.flush()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "uv",
                "pip",
                "compile",
                spec.name,
                "--generate-hashes",
                "--universal",
                "--python-version",
                PYTHON,
                "--no-header",
                "--no-annotate",
                "--quiet",
                # PyPI only: a wheel of the same version found elsewhere has other hashes.
                "--index-url",
                "https://pypi.org/simple",
                "--output-file",
                str(output),
            ],
            check=True,
        )
    print(f"wrote {output.relative_to(ROOT)}")


def main() -> None:
    _compile(_requirements(), ROOT / "requirements/production.lock")
    _compile(_requirements("embedded", "dev"), ROOT / "requirements/dev.lock")
    engines = (ROOT / "tests/engines/requirements.txt").read_text().splitlines()
    sdk = _project(ROOT / "engine_sdk/pyproject.toml")["dependencies"]
    pinned = [line for line in engines if line.strip() and not line.startswith("#")]
    _compile([*pinned, *sdk], ROOT / "tests/engines/requirements.lock")


if __name__ == "__main__":
    main()
