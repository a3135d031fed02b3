"""Checks of the text people type into the journal, shared by its parts."""

from __future__ import annotations

from django.core.exceptions import ValidationError


def clean_text(field: str, value: object, max_length: int, *, required: bool = False) -> str:
    """``value`` as text for ``field``, or ValidationError naming the field: not text, a NUL byte
    (PostgreSQL cannot store it), longer than ``max_length``, or empty when ``required``."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError({field: "must be text"})
    if "\x00" in value:
        raise ValidationError({field: "must not contain a NUL byte"})
    if len(value) > max_length:
        raise ValidationError({field: f"is {len(value)} characters long; at most {max_length}"})
    # Browsers send CRLF from a textarea: stored as LF, so an edit that changes nothing is none.
    value = value.replace("\r\n", "\n")
    if required and not value.strip():
        raise ValidationError({field: "is required"})
    return value
