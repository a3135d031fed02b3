"""Celery tasks of alert evaluation (notification sending is in alerts.tasks)."""

from __future__ import annotations

from celery import shared_task

from alerts import evaluation
from alerts.registry import METRICS
from controlplane.models import Engine


@shared_task(name="alerts.evaluate_engine", ignore_result=True)
def evaluate_engine_task(engine_id: int) -> int:
    # The web process queues evaluate_engines now; this one stays for tasks an older web process
    # queued before an upgrade, which a new worker must still run.
    return len(evaluation.evaluate_engine(engine_id))


@shared_task(name="alerts.evaluate_engines", ignore_result=True)
def evaluate_engines_task(engine_ids: list[int]) -> int:
    """Several engines in one task: the web process queues a burst of engines (a fleet kill's
    hundred results) as a few tasks instead of a hundred broker messages."""
    return sum(len(evaluation.evaluate_engine(engine_id)) for engine_id in engine_ids)


@shared_task(name="alerts.sweep", ignore_result=True)
def sweep() -> int:
    """Every few seconds: rules that time alone can trip (an engine gone quiet), then repeats
    and escalations of firing alerts."""
    time_based = any(
        METRICS[m].time_based for m in evaluation.AlertRule.objects.filter(enabled=True)
        .values_list("metric", flat=True) if m in METRICS
    )  # fmt: skip
    moved = 0
    if time_based:
        for engine_id in Engine.objects.filter(is_active=True).values_list("pk", flat=True):
            moved += len(evaluation.evaluate_engine(engine_id))
    return moved + evaluation.repeat_and_escalate()
