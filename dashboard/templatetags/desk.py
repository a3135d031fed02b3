"""How the desk pages write numbers and times; static/js/live.js writes them the same way, so a
live update never changes a cell's look, only its value."""

from __future__ import annotations

from datetime import UTC, datetime

from django import template

from controlplane.models import Mode, Stage

register = template.Library()

DASH = "—"
MINUS = "\u2212"  # a real minus sign: as wide as the plus in tabular figures
MODE_LABELS = dict(Mode.choices)


def _number(value: float, places: int) -> str:
    return f"{abs(value):,.{places}f}"


@register.filter
def money(value: float | None, places: int = 2) -> str:
    if value is None:
        return DASH
    text = _number(value, places)
    return f"{MINUS}{text}" if value < 0 and text.strip("0.,") else text


@register.filter
def signed(value: float | None, places: int = 2) -> str:
    """+1,234.56, 0.00, or a minus-signed loss: P&L always carries its sign."""
    if value is None:
        return DASH
    text = _number(value, places)
    if not text.strip("0.,"):
        return text
    return f"+{text}" if value > 0 else f"{MINUS}{text}"


@register.filter
def sign_class(value: float | None) -> str:
    if not value:
        return "zero"
    return "pos" if value > 0 else "neg"


@register.filter
def drawdown(value: float | None) -> str:
    """Drawdown from the high-water mark, written as the loss it is (minus-signed). One that
    rounds to 0.00 % is none: "-0.00%" in red would call a few cents an alarm."""
    if not value or abs(value) < 0.005:
        return "0.00%"
    return f"{MINUS}{abs(value):,.2f}%"


@register.filter
def rate(value: float | None) -> str:
    """A 0..1 ratio as a percentage with one decimal."""
    if value is None:
        return DASH
    return f"{value * 100:.1f}%"


@register.filter
def latency(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


@register.filter
def bps(value: float | None) -> str:
    if value is None:
        return DASH
    text = f"{abs(value):.1f}"
    if text == "0.0":
        return text
    return f"+{text}" if value > 0 else f"{MINUS}{text}"


@register.filter
def quantity(value: float | None) -> str:
    if value is None:
        return DASH
    text = f"{abs(value):,.8f}".rstrip("0").rstrip(".")
    return f"{MINUS}{text}" if value < 0 and text != "0" else text


@register.filter
def mode_label(value: str) -> str:
    return str(MODE_LABELS.get(value, value))


STAGE_LABELS = dict(Stage.choices)


# As the fleet's badges say them: its name column must stay narrow on a phone.
STAGE_SHORT = {**STAGE_LABELS, "small_capital": "Small cap", "full": "Full"}


@register.filter
def stage_label(value: str | None) -> str:
    return STAGE_LABELS.get(value or "", value or DASH)


@register.filter
def stage_short(value: str | None) -> str:
    return STAGE_SHORT.get(value or "", value or DASH)


def _parse(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def age_text(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


@register.filter
def age(value: str | datetime | None) -> str:
    moment = _parse(value)
    if moment is None:
        return "never"
    return age_text((datetime.now(UTC) - moment).total_seconds())


@register.filter
def utc_clock(value: str | datetime | None) -> str:
    """The server's fallback for a time the browser rewrites in the operator's timezone."""
    moment = _parse(value)
    if moment is None:
        return DASH
    return moment.astimezone(UTC).strftime("%H:%M:%S UTC")


@register.filter
def utc_stamp(value: str | datetime | None) -> str:
    moment = _parse(value)
    if moment is None:
        return DASH
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
