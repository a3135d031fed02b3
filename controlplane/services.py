"""Writes of the engines domain. Views, consumers, tasks and commands call these, nothing else."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from controlplane.audit import audit_record
from controlplane.models import Engine, Mode, new_engine_token


def engine_assign_token(*, engine: Engine) -> str:
    """Give the engine a fresh token and return it: the only time it exists in clear text."""
    token = new_engine_token()
    engine.set_token(token)
    return token


@transaction.atomic
def engine_create(
    *,
    name: str,
    mode: str = Mode.PAPER,
    broker: str = "",
    account: str = "",
    strategy_tags: list[str] | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str | None = None,
) -> tuple[Engine, str]:
    engine = Engine(
        name=name, mode=mode, broker=broker, account=account, strategy_tags=strategy_tags or []
    )
    token = engine_assign_token(engine=engine)
    engine.full_clean()
    engine.save()
    audit_record(
        action="engine_create",
        actor=actor,
        actor_label=actor_label,
        target=engine,
        data={"mode": mode, "broker": broker},
    )
    return engine, token


@transaction.atomic
def engine_rotate_token(
    *, engine: Engine, actor: AbstractBaseUser | None = None, actor_label: str | None = None
) -> str:
    token = engine_assign_token(engine=engine)
    engine.save(update_fields=["token_hash", "token_hint"])
    audit_record(action="engine_rotate_token", actor=actor, actor_label=actor_label, target=engine)
    return token
