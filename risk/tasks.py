"""Celery tasks of the risk limits. Their schedules live in controlplane.config.schedules."""

from __future__ import annotations

from celery import shared_task

from risk import portfolio


@shared_task
def portfolio_limits() -> int:
    """Measure the portfolio limits (risk.portfolio) and move their states; returns how many
    risk events were raised."""
    return len(portfolio.evaluate_all())
