"""Fixtures that run real server processes for the tests (filled in below)."""

from __future__ import annotations
