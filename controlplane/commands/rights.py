"""Who may issue what: the permission each command needs, and the right that then holds the state
it sets (a state set by a stronger right is not undone by a weaker one)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from controlplane.models import Command, CommandKind, Engine

# The permission each kind needs. Flattening every symbol, by a flatten or by a reduce to 0 %,
# needs issue_kill (see permission_for).
_PERMISSION = {
    CommandKind.PAUSE: "controlplane.issue_pause",
    CommandKind.RESUME: "controlplane.issue_pause",
    CommandKind.REDUCE: "controlplane.issue_reduce",
    CommandKind.CANCEL_ALL: "controlplane.issue_reduce",
    CommandKind.FLATTEN: "controlplane.issue_reduce",
    CommandKind.KILL: "controlplane.issue_kill",
    # A drill proves the kill path: who may kill may drill it.
    CommandKind.KILL_DRILL: "controlplane.issue_kill",
}

# Whoever has none of these may issue no command at all.
COMMAND_PERMISSIONS = frozenset(_PERMISSION.values())

# How strong each right is, to keep the strongest of the commands that set or hold a state.
RIGHT_RANK = {"": 0, "issue_pause": 1, "issue_reduce": 2, "issue_kill": 3}


def flattens_everything(kind: str, params: dict[str, Any]) -> bool:
    """A flatten of every symbol: a flatten, or a reduce to keep 0 %, naming no symbols."""
    if params.get("symbols"):
        return False
    return kind == CommandKind.FLATTEN or (
        kind == CommandKind.REDUCE and params.get("target_pct") == 0
    )


def permission_for(kind: str, params: dict[str, Any]) -> str | None:
    if flattens_everything(kind, params):
        # Flattening everything is a kill without the halt, whichever command spells it.
        return "controlplane.issue_kill"
    return _PERMISSION.get(kind)  # type: ignore[call-overload]


def right_for(kind: str, params: dict[str, Any]) -> str:
    """The codename of the right a command needs, recorded on the engines whose state it sets."""
    permission = permission_for(kind, params)
    return permission.split(".")[1] if permission else ""


def command_label(kind: str, params: dict[str, Any]) -> str:
    if not flattens_everything(kind, params):
        return f"a {kind}"
    if kind == CommandKind.FLATTEN:
        return "a flatten of every position"
    return "a reduce to 0 % (a flatten of every position)"


def permission_refusal(label: str, kind: str, params: dict[str, Any], permission: str) -> str:
    """Why ``label`` may not issue this command, in the words the UI shows."""
    what = kind
    if flattens_everything(kind, params):
        what = "flatten every position" + (" (a reduce to 0 %)" if kind == "reduce" else "")
    return f"{label} may not {what}: that needs the {permission.split('.')[1]} permission"


def resume_outranked(actor: AbstractBaseUser, label: str, engines: list[Engine]) -> str:
    """Why ``actor`` may not resume these engines, or "": a state set by a right the actor lacks
    (a risk manager's flatten) is not undone by a lower one (an operator's resume)."""
    refusals = []
    for engine in engines:
        right = engine.desired_set_by_right
        if not right or actor.has_perm(f"controlplane.{right}"):  # type: ignore[attr-defined]
            continue
        refusals.append(
            f"{engine.name} is {engine.desired_state}, set by {_state_setter(engine, right)}: "
            f"resuming it needs the {right} permission, which {label} does not have"
        )
    return "; ".join(refusals)


def _state_setter(engine: Engine, right: str) -> str:
    """The latest command that needed ``right`` since the engine's state changed, as words."""
    commands = Command.objects.filter(engine_id=engine.pk).order_by("-created_at")
    if engine.desired_changed_at is not None:
        commands = commands.filter(created_at__gte=engine.desired_changed_at)
    for kind, params, issued_by in commands.values_list("kind", "params", "issued_by_label")[:50]:
        if right_for(kind, params) == right:
            return f"{command_label(kind, params)} of {issued_by}"
    return f"a command needing {right}"
