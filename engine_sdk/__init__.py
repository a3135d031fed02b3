"""The library a trading engine imports to talk to the control plane (no Django here)."""

from __future__ import annotations

__version__ = "0.1.0"
