"""Commands the tests issue again and again."""

from __future__ import annotations

from controlplane.commands import issuing
from controlplane.models import CommandBatch


def kill(actor, selector="all", **kwargs) -> CommandBatch:
    """A kill of ``selector`` by ``actor``, confirmed as the kill dialogs confirm it."""
    return issuing.command_issue(
        kind="kill",
        selector=selector,
        reason="desk says stop",
        actor=actor,
        confirmation=issuing.kill_confirmation(selector),
        **kwargs,
    )
