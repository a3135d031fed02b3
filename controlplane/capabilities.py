"""What an engine said it can enforce (its hello's ``capabilities``, docs/protocol.md,
"Capabilities"), and what the control plane asks of it that it cannot.

An engine that said nothing can do everything (engines from before capabilities). A command of a
kind the engine does not handle is not sent to it: it is marked failed, and an alert is raised,
rather than reported sent as if the engine would act on it. A kill is the exception: it is
always sent, whatever the engine says, because a kill withheld is worse than one the engine may
not handle; an engine that says it cannot kill is flagged. A pre-trade limit of a kind the
engine cannot enforce is flagged on its page and alerted when the engine says hello.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from django.db import transaction

from controlplane import events
from controlplane.models import CommandKind, Engine

# Sent whatever the engine says it handles.
ALWAYS_SENT = frozenset({CommandKind.KILL.value})


def handles(capabilities: Mapping[str, Any] | None, kind: str) -> bool:
    """Whether an engine with ``capabilities`` handles commands of ``kind``."""
    if capabilities is None:
        return True
    return kind in (capabilities.get("commands") or ())


def sent_to(capabilities: Mapping[str, Any] | None, kind: str) -> bool:
    """Whether a command of ``kind`` goes to the engine (a kill always does)."""
    return kind in ALWAYS_SENT or handles(capabilities, kind)


def unenforced_limit_kinds(
    capabilities: Mapping[str, Any] | None, kinds: Iterable[str]
) -> list[str]:
    """The kinds among ``kinds`` (of pre-trade limits that apply) the engine cannot enforce."""
    if capabilities is None:
        return []
    enforced = set(capabilities.get("limit_kinds") or ())
    return sorted({kind for kind in kinds if kind not in enforced})


def unenforced_limits(engine: Engine) -> list[str]:
    """The kinds of the pre-trade limits that apply to ``engine`` which it cannot enforce."""
    if engine.capabilities is None:
        return []
    _, limits = events.limits_for(engine)
    return unenforced_limit_kinds(engine.capabilities, (str(limit["kind"]) for limit in limits))


def flags(engine: Engine) -> list[str]:
    """What the engine page says the engine cannot do that is asked of it."""
    if engine.capabilities is None:
        return []
    found = []
    if not handles(engine.capabilities, CommandKind.KILL):
        found.append("says it cannot handle kill: kills are still sent to it")
    for kind in unenforced_limits(engine):
        found.append(f"cannot enforce the pre-trade limit kind {kind}, which applies to it")
    return found


def announce_missing(engine_id: int, what: str) -> None:
    """Tell (after the commit) that the engine was asked what it cannot do: the alerts app
    raises an alert through its shipped rule."""
    transaction.on_commit(
        partial(events.announce, events.capability_missing, engine_id=engine_id, what=what)
    )
