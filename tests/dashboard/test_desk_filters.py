"""The desk's number filters: what an operator reads in the fleet table."""

from __future__ import annotations

import pytest

from dashboard.templatetags.desk import MINUS, drawdown


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "0.00%"),
        (0.0, "0.00%"),
        (0.004, "0.00%"),  # a few cents off the high-water mark is no drawdown to flag
        (0.005, f"{MINUS}0.01%"),
        (1.234, f"{MINUS}1.23%"),
        (12.5, f"{MINUS}12.50%"),
    ],
)
def test_a_drawdown_is_a_loss_and_one_that_rounds_to_nothing_is_none(value, text):
    assert drawdown(value) == text
