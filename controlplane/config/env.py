"""Typed readers for environment variables that fail loudly on a bad value.

A typo in production configuration must stop the process at start, not surface as a silent
default hours later.
"""

from __future__ import annotations

import itertools
import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ImproperlyConfigured(f"Environment variable {name} is required but not set.")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
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
    raw = os.environ.get(name)
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
    raw = os.environ.get(name)
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
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of: {', '.join(choices)}.")
    return value


def env_ramp(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """Shares of a whole in %, comma-separated: whole numbers from 1 to 100, rising, the last 100
    (the capital ramp ends at the full target)."""
    raw = os.environ.get(name)
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
