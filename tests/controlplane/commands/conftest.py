from __future__ import annotations

import pytest


@pytest.fixture
def fleet(make_engine):
    engines = [
        make_engine("alpha", mode="live", strategy_tags=["momentum"])[0],
        make_engine("beta", mode="live", strategy_tags=["meanrev"])[0],
        make_engine("gamma", mode="paper", strategy_tags=["momentum"])[0],
    ]
    return {e.name: e for e in engines}
