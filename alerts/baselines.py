"""Live against backtest: the divergence alert rules can watch.

The largest relative divergence (%) of the engine's last 30 days from its backtest baseline
(return, trade count, win rate; docs/analytics.md). Without a baseline it is unknown, and a rule
on it neither fires nor resolves.
"""

from __future__ import annotations

from datetime import datetime

from controlplane.models import Engine


def divergence_pct(engine: Engine, now: datetime) -> float | None:
    from dashboard import baselines

    return baselines.divergence_pct(engine, now)
