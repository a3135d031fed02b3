"""Writes of the alerts: acknowledging, explaining, silencing, saving a rule. All audited."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from alerts import evaluation, hooks
from alerts.models import Alert, AlertRule, Silence
from controlplane.audit import audit_record
from controlplane.models import Engine

MAX_SILENCE = timedelta(days=7)


def alert_acknowledge(
    *, alert: Alert, actor: AbstractBaseUser, ip_address: str | None = None
) -> bool:
    """Stop repeats and escalation of a firing alert. False if it was already acknowledged."""
    if not actor.has_perm("alerts.acknowledge_alert"):  # type: ignore[attr-defined]
        raise PermissionDenied(f"{actor.get_username()} may not acknowledge alerts")
    now = timezone.now()
    with transaction.atomic():
        claimed = Alert.objects.filter(
            pk=alert.pk, acknowledged_at__isnull=True, state__in=Alert.OPEN
        ).update(
            acknowledged_at=now, acknowledged_by=actor, acknowledged_by_label=actor.get_username()
        )
        if claimed:
            audit_record(
                action="alert_acknowledge",
                actor=actor,
                target=alert,
                ip_address=ip_address,
                data={"summary": alert.summary},
            )
            evaluation._publish(alert)
    return bool(claimed)


MAX_EXPLANATION = 2000


def alert_explain(
    *, alert: Alert, actor: AbstractBaseUser, text: str, ip_address: str | None = None
) -> Alert:
    """Record what caused ``alert`` (an operator's finding, for the go-live gate's "no critical
    alert left unexplained"). A later explanation replaces it; the audit log keeps both."""
    if not actor.has_perm("alerts.acknowledge_alert"):  # type: ignore[attr-defined]
        raise PermissionDenied(f"{actor.get_username()} may not explain alerts")
    text = (text or "").strip()
    if not text:
        raise ValidationError({"explanation": "Say what caused the alert."})
    if len(text) > MAX_EXPLANATION:
        raise ValidationError(
            {"explanation": f"An explanation holds at most {MAX_EXPLANATION} characters."}
        )
    label = actor.get_username()
    with transaction.atomic():
        locked = Alert.objects.select_for_update().get(pk=alert.pk)
        before = locked.explanation
        locked.explanation = text
        locked.explained_by = actor
        locked.explained_by_label = label
        locked.explained_at = timezone.now()
        locked.save(
            update_fields=["explanation", "explained_by", "explained_by_label", "explained_at"]
        )
        audit_record(
            action="alert_explain",
            actor=actor,
            target=locked,
            reason=text,
            ip_address=ip_address,
            data={"summary": locked.summary, "severity": locked.severity, "before": before},
        )
    return locked


def silence_create(
    *,
    actor: AbstractBaseUser,
    reason: str,
    ends_at: datetime,
    rule: AlertRule | None = None,
    engine: Engine | None = None,
    tag: str = "",
    ip_address: str | None = None,
) -> Silence:
    if not actor.has_perm("alerts.add_silence"):  # type: ignore[attr-defined]
        raise PermissionDenied(f"{actor.get_username()} may not silence alerts")
    reason = (reason or "").strip()
    errors = {}
    if not reason:
        errors["reason"] = "Say why the alerts are silenced."
    now = timezone.now()
    if ends_at <= now:
        errors["ends_at"] = "A silence must end in the future."
    elif ends_at - now > MAX_SILENCE:
        errors["ends_at"] = "A silence lasts at most 7 days; set a new one after that."
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        silence = Silence.objects.create(
            rule=rule,
            engine=engine,
            tag=tag.strip(),
            ends_at=ends_at,
            reason=reason,
            created_by=actor,
            created_by_label=actor.get_username(),
        )
        audit_record(
            action="alert_silence",
            actor=actor,
            target=silence,
            reason=reason,
            ip_address=ip_address,
            data={
                "rule": rule.name if rule else None,
                "engine": engine.name if engine else None,
                "tag": tag,
                "ends_at": ends_at.isoformat(),
            },
        )
    return silence


def rule_save(
    *, rule: AlertRule, actor: AbstractBaseUser | None, ip_address: str | None = None
) -> AlertRule:
    """Validate and save a rule (new or changed). Switched off, its open alerts are over: they
    resolve (a firing one with its resolved notice), since nothing evaluates them any more.
    Raises ValidationError naming each bad field (an unknown metric, say)."""
    rule.full_clean()
    label = actor.get_username() if actor is not None else "system"
    with transaction.atomic():
        before = (
            AlertRule.objects.select_for_update().filter(pk=rule.pk).first() if rule.pk else None
        )
        rule.save()
        audit_record(
            action="alert_rule_create" if before is None else "alert_rule_change",
            actor=actor,
            actor_label=label,
            target=rule,
            ip_address=ip_address,
            data={
                "metric": rule.metric,
                "comparator": rule.comparator,
                "threshold": rule.threshold,
                "severity": rule.severity,
                "enabled": rule.enabled,
            },
        )
        if before is not None and before.enabled and not rule.enabled:
            hooks.rule_disabled(rule.pk, why=f"rule disabled by {label}")
    return rule
