"""The journal's records; each part of it in its own section below."""

from __future__ import annotations
