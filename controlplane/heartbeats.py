"""When each periodic task last ran to the end, kept where every process can read it.

A worker records the time a scheduled task returned (controlplane.config.celery connects
``task_ran`` to Celery's ``task_success`` for the tasks in the schedule); /metrics exports it as a
timestamp per task, so ``time() - cp_task_last_run_timestamp_seconds`` is how long a sweep has
been silent. One Redis hash, one HSET per run: nothing here may slow a 5-second sweep down.
"""

from __future__ import annotations

import logging
import time

from controlplane import hub

log = logging.getLogger(__name__)


def last_runs_key() -> str:
    # Under the channel layer's prefix: per environment and database, as the hubs' channels.
    return hub.channel_name("task_last_run")


def task_ran(name: str, at: float | None = None) -> None:
    """Record that the task ``name`` just ran to the end (``at``: Unix time, now by default)."""
    try:
        hub.sync_client().hset(last_runs_key(), name, repr(time.time() if at is None else at))
    except Exception as exc:  # Redis away: the run happened all the same; the log says so
        log.warning("last run of %s not recorded: %s", name, exc)


def last_runs() -> dict[str, float]:
    """Task name -> Unix time of its last run to the end, for the tasks that ever ran.

    Raises redis.RedisError when Redis cannot be reached.
    """
    stored = hub.sync_client().hgetall(last_runs_key())
    return {key.decode(): float(value) for key, value in stored.items()}
