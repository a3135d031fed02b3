"""Runbooks and contingency plans (docs/operations.md, "Runbooks"): plans for scenarios, edited by
risk managers with their history, and the alert rules and kinds of risk limit that point at them.

The alerts layer asks for an alert's runbook through ``alerts.runbooks``; this module's
``runbooks_for_alerts`` is the answer, handed in when the journal's app is ready.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.urls import reverse

from alerts.models import Alert, AlertRule
from alerts.runbooks import RunbookRef
from controlplane.audit import audit_record
from journal.models import RUNBOOK_BODY_MAX, Runbook, RunbookLink, RunbookRevision
from journal.text import clean_text
from risk.models import LimitKind, RiskLimit

CHANGE_PERMISSION = "journal.change_runbook"
ADD_PERMISSION = "journal.add_runbook"
LINK_PERMISSION = "journal.change_runbooklink"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


# --- Reads ---------------------------------------------------------------------------------------


def url_of(runbook: Runbook) -> str:
    return reverse("journal:runbook", args=[runbook.slug])


def runbooks_for_alerts(alerts: Sequence[Alert]) -> Mapping[int, RunbookRef]:
    """Each alert's runbook, by alert id: a risk limit's alert (source ``limit#<id>``) by its
    limit's kind first, then any alert by its rule. Three queries however many alerts."""
    limit_ids = {
        int(a.source.removeprefix("limit#"))
        for a in alerts
        if a.source.startswith("limit#") and a.source.removeprefix("limit#").isdigit()
    }
    kinds = dict(RiskLimit.objects.filter(pk__in=limit_ids).values_list("pk", "kind"))
    rule_ids = {a.rule_id for a in alerts if a.rule_id is not None}
    links = RunbookLink.objects.select_related("runbook").filter(
        alert_rule_id__in=rule_ids
    ) | RunbookLink.objects.select_related("runbook").filter(limit_kind__in=set(kinds.values()))
    by_rule: dict[int, Runbook] = {}
    by_kind: dict[str, Runbook] = {}
    for link in links:
        if link.alert_rule_id is not None:
            by_rule[link.alert_rule_id] = link.runbook
        else:
            by_kind[link.limit_kind] = link.runbook
    found: dict[int, RunbookRef] = {}
    for alert in alerts:
        runbook = None
        if alert.source.startswith("limit#"):
            kind = kinds.get(_int(alert.source.removeprefix("limit#")))
            runbook = by_kind.get(kind) if kind else None
        if runbook is None and alert.rule_id is not None:
            runbook = by_rule.get(alert.rule_id)
        if runbook is not None:
            found[alert.pk] = RunbookRef(title=runbook.title, url=url_of(runbook))
    return found


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class Links:
    alert_rules: list[str]
    limit_kinds: list[str]


def links_of(runbook: Runbook) -> Links:
    rules, kinds = [], []
    for link in runbook.links.select_related("alert_rule").order_by(
        "alert_rule__name", "limit_kind"
    ):
        if link.alert_rule_id is not None:
            rules.append(link.alert_rule.name)  # type: ignore[union-attr]
        else:
            kinds.append(link.limit_kind)
    return Links(alert_rules=rules, limit_kinds=kinds)


# --- Writes --------------------------------------------------------------------------------------


def _label(actor: AbstractBaseUser | None) -> str:
    return actor.get_username() if actor is not None else "system"


def _require(actor: AbstractBaseUser | None, permission: str) -> None:
    if actor is not None and not actor.has_perm(permission):  # type: ignore[attr-defined]
        raise PermissionDenied(f"{actor.get_username()} lacks the {permission} permission")


def runbook_save(
    *,
    runbook: Runbook | None,
    actor: AbstractBaseUser | None,
    slug: str = "",
    title: Any,
    scenario: Any,
    body: Any,
    reason: Any = "",
    ip_address: str | None = None,
) -> Runbook:
    """Create (``runbook`` None, with ``slug``) or edit a runbook; each save is a new version in
    its history and an audit entry. Raises ValidationError naming each bad field (nothing is
    stored), PermissionDenied without the right. An edit that changes nothing stores nothing."""
    _require(actor, ADD_PERMISSION if runbook is None else CHANGE_PERMISSION)
    title = clean_text("title", title, 120, required=True).strip()
    scenario = clean_text("scenario", scenario, 300, required=True).strip()
    body = clean_text("body", body, RUNBOOK_BODY_MAX, required=True)
    reason = clean_text("reason", reason, 2000).strip()
    label = _label(actor)
    with transaction.atomic():
        if runbook is None:
            slug = clean_text("slug", slug, 64, required=True)
            if not _SLUG.match(slug):
                raise ValidationError(
                    {
                        "slug": "lower-case letters, digits and hyphens, starting with a letter "
                        "or digit"
                    }
                )
            if slug == "new":
                raise ValidationError({"slug": '"new" is the address of the new-runbook page'})
            if Runbook.objects.filter(slug=slug).exists():
                raise ValidationError({"slug": f"a runbook {slug!r} exists already"})
            current = Runbook(slug=slug, version=0)
            action = "journal.runbook_create"
        else:
            current = Runbook.objects.select_for_update().get(pk=runbook.pk)
            if (current.title, current.scenario, current.body) == (title, scenario, body):
                return current
            action = "journal.runbook_change"
        before = {"title": current.title, "scenario": current.scenario} if current.pk else {}
        current.title, current.scenario, current.body = title, scenario, body
        current.version += 1
        current.updated_by = actor  # type: ignore[assignment]
        current.updated_by_label = label
        current.save()
        RunbookRevision.objects.create(
            runbook=current,
            version=current.version,
            title=title,
            scenario=scenario,
            body=body,
            reason=reason,
            edited_by_label=label,
        )
        audit_record(
            action=action,
            actor=actor,
            target=current,
            reason=reason,
            data={"version": current.version, "before": before, "body_chars": len(body)},
            ip_address=ip_address,
        )
    return current


def runbook_links_set(
    *,
    runbook: Runbook,
    actor: AbstractBaseUser | None,
    alert_rules: Any,
    limit_kinds: Any,
    ip_address: str | None = None,
) -> Links:
    """Point exactly these alert rules (by name) and kinds of risk limit at ``runbook``; one
    that pointed at another runbook now points here. ValidationError names an unknown one."""
    _require(actor, LINK_PERMISSION)
    if not isinstance(alert_rules, list) or not all(isinstance(n, str) for n in alert_rules):
        raise ValidationError({"alert_rules": "must be a list of alert rule names"})
    if not isinstance(limit_kinds, list) or not all(isinstance(k, str) for k in limit_kinds):
        raise ValidationError({"limit_kinds": "must be a list of kinds of risk limit"})
    names = set(alert_rules)
    rules = {rule.name: rule for rule in AlertRule.objects.filter(name__in=names)}
    unknown_rules = sorted(names - set(rules))
    unknown_kinds = sorted(set(limit_kinds) - set(LimitKind.values))
    problems = {}
    if unknown_rules:
        problems["alert_rules"] = f"no alert rule is named {', '.join(map(repr, unknown_rules))}"
    if unknown_kinds:
        problems["limit_kinds"] = (
            f"not a kind of risk limit: {', '.join(map(repr, unknown_kinds))} "
            f"(one of {', '.join(LimitKind.values)})"
        )
    if problems:
        raise ValidationError(problems)
    before = links_of(runbook)
    with transaction.atomic():
        Runbook.objects.select_for_update().filter(pk=runbook.pk).first()
        runbook.links.exclude(alert_rule__in=rules.values()).exclude(
            limit_kind__in=set(limit_kinds)
        ).delete()
        # Taken from whichever runbook had them: one runbook per rule and per kind.
        RunbookLink.objects.filter(alert_rule__in=rules.values()).exclude(runbook=runbook).delete()
        RunbookLink.objects.filter(limit_kind__in=set(limit_kinds)).exclude(
            runbook=runbook
        ).delete()
        for rule in rules.values():
            RunbookLink.objects.get_or_create(runbook=runbook, alert_rule=rule)
        for kind in set(limit_kinds):
            RunbookLink.objects.get_or_create(runbook=runbook, limit_kind=kind)
        after = links_of(runbook)
        audit_record(
            action="journal.runbook_links",
            actor=actor,
            target=runbook,
            data={
                "before": {"alert_rules": before.alert_rules, "limit_kinds": before.limit_kinds},
                "after": {"alert_rules": after.alert_rules, "limit_kinds": after.limit_kinds},
            },
            ip_address=ip_address,
        )
    return after


# --- Defaults ------------------------------------------------------------------------------------

# The desk's plans before anyone edits them (the guides' four scenarios), and what points at each.
DEFAULTS: list[dict[str, Any]] = [
    {
        "slug": "broker-api-failure",
        "title": "Broker API failure",
        "scenario": "The broker's API stops answering, refuses orders or disconnects engines.",
        "body": (
            "1. **Switch to the backup**: point the affected engines at the backup broker "
            "connection, or pause them if there is none.\n"
            "2. **Manual review**: compare every open position and working order with the "
            "broker's own screens; reconcile before resuming.\n"
            "3. Note what happened in the day's trading log.\n"
        ),
        "alert_rules": ["Engine down", "Rejections", "Position mismatch"],
        "limit_kinds": [],
    },
    {
        "slug": "unexpected-loss",
        "title": "Unexpected loss above 5 %",
        "scenario": "An engine or the desk loses more than 5 % in a day, or from its high.",
        "body": (
            "1. **Pause** the engines concerned (Fleet, Pause) at once.\n"
            "2. **Investigate**: the fills, slippage and market conditions behind the loss; "
            "is it the strategy, the market or a bug?\n"
            "3. Resume only with a risk manager's approval, and say why in the log.\n"
        ),
        "alert_rules": ["Daily loss", "Drawdown"],
        "limit_kinds": [
            LimitKind.MAX_DAILY_LOSS_PCT,
            LimitKind.MAX_DAILY_LOSS,
            LimitKind.MAX_DRAWDOWN_PCT,
        ],
    },
    {
        "slug": "market-circuit-breaker",
        "title": "Market circuit breaker",
        "scenario": "The exchange halts trading market-wide or in the instruments we trade.",
        "body": (
            "1. **Halt all strategies**: pause the whole fleet (selector *all*).\n"
            "2. Cancel working orders; they may fill at the reopening's prices.\n"
            "3. Resume engine by engine once the market has reopened and quotes are fresh.\n"
        ),
        "alert_rules": ["Stale quotes"],
        "limit_kinds": [],
    },
    {
        "slug": "strategy-bug",
        "title": "Strategy bug",
        "scenario": (
            "An engine trades in a way its strategy should not (wrong sizes, loops, errors)."
        ),
        "body": (
            "1. **Immediate stop**: kill the engine.\n"
            "2. **Fix** the bug, with a test that reproduces it.\n"
            "3. **Paper test** the fixed build before it trades real money again.\n"
        ),
        "alert_rules": ["Error burst", "Refused events", "Reused ids", "Orphaned positions"],
        "limit_kinds": [
            LimitKind.MAX_ORDER_QTY,
            LimitKind.MAX_ORDER_NOTIONAL,
            LimitKind.MAX_ORDER_RATE,
            LimitKind.DUPLICATE_ORDER,
            LimitKind.MAX_TRADES_PER_DAY,
        ],
    },
]


def seed_defaults(apps: Any = None) -> None:
    """Store the default runbooks and their links, unless a runbook of that slug exists (an edited
    plan is never overwritten). Used by the data migration and by tests on a flushed database."""
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    runbook_model = apps.get_model("journal", "Runbook")
    revision_model = apps.get_model("journal", "RunbookRevision")
    link_model = apps.get_model("journal", "RunbookLink")
    rule_model = apps.get_model("alerts", "AlertRule")
    for plan in DEFAULTS:
        if runbook_model.objects.filter(slug=plan["slug"]).exists():
            continue
        runbook = runbook_model.objects.create(
            slug=plan["slug"],
            title=plan["title"],
            scenario=plan["scenario"],
            body=plan["body"],
            updated_by_label="system",
        )
        revision_model.objects.create(
            runbook=runbook,
            version=1,
            title=plan["title"],
            scenario=plan["scenario"],
            body=plan["body"],
            reason="default plan",
            edited_by_label="system",
        )
        for rule in rule_model.objects.filter(name__in=plan["alert_rules"]):
            if not link_model.objects.filter(alert_rule=rule).exists():
                link_model.objects.create(runbook=runbook, alert_rule=rule)
        for kind in plan["limit_kinds"]:
            if not link_model.objects.filter(limit_kind=kind).exists():
                link_model.objects.create(runbook=runbook, limit_kind=str(kind))
