"""Going live: the way from backtest to full production, step by step (docs/going-live.md).

Each engine's stage is the core's (controlplane.models.Engine.stage); this app holds what decides
the steps: the promotion policy, the gates computed from each engine's own recorded data, and the
promotions themselves.
"""
