"""Live against backtest: the divergence alert rules can watch.

Engines carry no backtest baseline yet (the performance-analytics feature adds them), so the
divergence is unknown and a rule on it neither fires nor resolves.
"""

from __future__ import annotations

from datetime import datetime

from controlplane.models import Engine


def divergence_pct(engine: Engine, now: datetime) -> float | None:
    return None
