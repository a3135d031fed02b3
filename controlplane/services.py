"""Writes of the engines domain (engines, API tokens); commands to them are controlplane.commands.

Views, consumers, tasks and management commands call these, nothing else.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache, partial

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from controlplane.audit import audit_record
from controlplane.commands import delivery
from controlplane.models import (
    CREATION_STAGES,
    MODES_OF_STAGE,
    ApiToken,
    Engine,
    Mode,
    Stage,
    hash_token,
    mode_refusal,
    new_engine_token,
)
from controlplane.sqlscript import Script
from controlplane.stages import stage_record_first


def engine_assign_token(*, engine: Engine) -> str:
    """Give the engine a fresh token and return it: the only time it exists in clear text."""
    token = new_engine_token()
    engine.set_token(token)
    return token


NEW_ENGINE_STAGE_REFUSAL = (
    "a new engine starts at backtest or paper; shadow and above are reached through the gates "
    "(docs/going-live.md)"
)


def creation_stage_check(*, stage: str | None, mode: str) -> str:
    """The stage a new engine starts at: ``stage`` if given (backtest or paper only), else the
    one its mode implies (backtest or paper), else paper. A mode the stage does not allow is
    refused by the engine's own validation (Engine.clean)."""
    if stage is None:
        stage = mode if mode in CREATION_STAGES else Stage.PAPER
    if stage not in CREATION_STAGES:
        raise ValidationError({"stage": NEW_ENGINE_STAGE_REFUSAL})
    if mode not in MODES_OF_STAGE[stage]:
        raise ValidationError({"mode": f"{mode_refusal(stage, mode)}: {NEW_ENGINE_STAGE_REFUSAL}"})
    return stage


@transaction.atomic
def engine_create(
    *,
    name: str,
    mode: str = Mode.PAPER,
    stage: str | None = None,
    broker: str = "",
    account: str = "",
    strategy_tags: list[str] | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str | None = None,
) -> tuple[Engine, str]:
    """Register an engine at ``stage`` (backtest or paper: ``creation_stage_check``); its mode
    must be one the stage allows (``MODES_OF_STAGE``). Its stage history starts here."""
    stage = creation_stage_check(stage=stage, mode=mode)
    engine = Engine(
        name=name,
        mode=mode,
        stage=stage,
        broker=broker,
        account=account,
        strategy_tags=strategy_tags or [],
    )
    token = engine_assign_token(engine=engine)
    engine.full_clean()
    engine.save()
    audit_record(
        action="engine_create",
        actor=actor,
        actor_label=actor_label,
        target=engine,
        data={"mode": mode, "stage": stage, "broker": broker},
    )
    stage_record_first(engine=engine, actor=actor, actor_label=actor_label)
    return engine, token


@transaction.atomic
def engine_rotate_token(
    *, engine: Engine, actor: AbstractBaseUser | None = None, actor_label: str | None = None
) -> str:
    token = engine_assign_token(engine=engine)
    engine.save(update_fields=["token_hash", "token_hint"])
    audit_record(action="engine_rotate_token", actor=actor, actor_label=actor_label, target=engine)
    return token


@transaction.atomic
def engine_deactivate(
    *, engine: Engine, actor: AbstractBaseUser | None = None, actor_label: str | None = None
) -> None:
    """Refuse the engine's token from now on, and close its open sockets once that is committed.

    Its data stays; reactivating it (is_active) lets the same token in again.
    """
    engine.is_active = False
    engine.save(update_fields=["is_active"])
    audit_record(action="engine_deactivate", actor=actor, actor_label=actor_label, target=engine)
    transaction.on_commit(partial(delivery.close_sockets, engine.pk))


# --- personal API tokens --------------------------------------------------------------------------


@transaction.atomic
def api_token_create(
    *, user: AbstractBaseUser, name: str, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """A token for scripts acting as ``user``; returned in clear text this once only."""
    token = ApiToken.new_token()
    api_token = ApiToken(user=user, name=name, expires_at=expires_at)
    api_token.set_token(token)
    api_token.full_clean()
    api_token.save()
    audit_record(action="api_token_create", actor=user, target=api_token, data={"name": name})
    return api_token, token


@cache
def _token_user_sql() -> tuple[str, list[str]]:
    """The token, its user's row and the user's permissions (their own and their groups', named
    as ModelBackend names them) in one statement, and the user's field names in its order."""
    user_model = get_user_model()
    meta = user_model._meta
    fields = meta.concrete_fields
    columns = ", ".join(f"u.{connection.ops.quote_name(f.column)}" for f in fields)
    pk = meta.pk.column  # type: ignore[union-attr]
    own = user_model.user_permissions.through._meta.db_table  # type: ignore[attr-defined]
    groups = user_model.groups.through._meta.db_table  # type: ignore[attr-defined]
    sql = f"""
        SELECT t.id, t.expires_at, t.last_used_at,
               ARRAY(SELECT ct.app_label || '.' || p.codename
                       FROM auth_permission p
                       JOIN django_content_type ct ON ct.id = p.content_type_id
                      WHERE p.id IN (SELECT permission_id FROM {own} WHERE user_id = u.{pk})
                         OR p.id IN (SELECT gp.permission_id FROM auth_group_permissions gp
                                       JOIN {groups} ug ON ug.group_id = gp.group_id
                                      WHERE ug.user_id = u.{pk})),
               {columns}
          FROM {ApiToken._meta.db_table} t
          JOIN {meta.db_table} u ON u.{pk} = t.user_id
         WHERE t.token_hash = %s
    """
    return sql, [f.attname for f in fields]


def api_token_user(token: str | None) -> AbstractBaseUser | None:
    """The active user a personal API token belongs to, or None.

    Every API call starts here, a kill among them: one prepared statement, without the ORM's
    query building, which took longer than the database did.
    """
    if not token or not token.startswith(ApiToken.PREFIX) or len(token) > 200:
        return None
    sql, attnames = _token_user_sql()
    with connection.cursor() as cursor:
        script = Script(cursor)
        script.add(sql, [hash_token(token)], fetch="token")
        rows = script.run()["token"]
    if not rows:
        return None
    token_id, expires_at, last_used_at, permissions, *values = rows[0]
    user = get_user_model().from_db(connection.alias, attnames, values)
    now = timezone.now()
    if not user.is_active:
        return None
    if not user.is_superuser:  # (has_perm asks no backend for a superuser)
        # ModelBackend's own cache of the user's permissions, filled by the query that found
        # the token: the request's permission checks then cost no round trip of their own.
        user._perm_cache = set(permissions)  # type: ignore[attr-defined]
    if expires_at is not None and expires_at <= now:
        return None
    if last_used_at is None or now - last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token_id).update(last_used_at=now)
    return user
