"""Typed readers for environment variables that fail loudly on a bad value.

A typo in production configuration must stop the process at start, not surface as a silent
default hours later.

Every variable may instead be given as NAME_FILE, the path of a file holding its value (Docker and
Kubernetes secrets are mounted as files): a secret then never appears in the process's
environment, where `docker inspect`, /proc/<pid>/environ and crash reports would show it.
"""

from __future__ import annotations

import itertools
import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_raw(name: str) -> str | None:
    """NAME's value, or the content of the file NAME_FILE names (one trailing newline dropped, as
    `echo` and editors leave one); None when neither is set.

    Both set is refused: which one wins would be a guess. So is a file that cannot be read or is
    empty: an empty secret is a mistake in the deployment, not a value to run with.
    """
    file_name = f"{name}_FILE"
    value = os.environ.get(name)
    path = os.environ.get(file_name)
    if path is None:
        return value
    if value is not None:
        raise ImproperlyConfigured(
            f"Both {name} and {file_name} are set: set only one ({file_name} names a file "
            f"holding the value)."
        )
    try:
        with open(path, encoding="utf-8") as file:
            content = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImproperlyConfigured(
            f"{file_name}={path!r}: the file cannot be read ({reason})."
        ) from None
    content = content.removesuffix("\n").removesuffix("\r")
    if not content:
        raise ImproperlyConfigured(f"{file_name}={path!r}: the file is empty.")
    return content


def env_str(name: str, default: str | None = None) -> str:
    value = env_raw(name)
    if value is None:
        if default is None:
            raise ImproperlyConfigured(
                f"Environment variable {name} is required but not set (nor {name}_FILE)."
            )
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = env_raw(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={raw!r} is not a boolean: use one of 1/0, true/false, yes/no."
    )


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env_raw(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = env_raw(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = env_raw(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env_raw(name)
    value = (default if raw is None else raw).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of: {', '.join(choices)}.")
    return value


def env_ramp(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """Shares of a whole in %, comma-separated: whole numbers from 1 to 100, rising, the last 100
    (the capital ramp ends at the full target)."""
    raw = env_raw(name)
    if raw is None or raw.strip() == "":
        return default
    steps = []
    for item in raw.split(","):
        try:
            steps.append(int(item.strip()))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}={raw!r}: {item.strip()!r} is not a whole number of per cent."
            ) from None
    if any(not 1 <= step <= 100 for step in steps):
        raise ImproperlyConfigured(f"{name}={raw!r}: each step is between 1 and 100 (%).")
    if any(a >= b for a, b in itertools.pairwise(steps)):
        raise ImproperlyConfigured(f"{name}={raw!r}: the steps must rise, each above the last.")
    if steps[-1] != 100:
        raise ImproperlyConfigured(f"{name}={raw!r}: the last step is 100 (the full target).")
    return tuple(steps)
