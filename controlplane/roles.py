"""Roles are Django groups. Each role is a list of permission patterns ``app_label.codename``
(``*`` wildcards), resolved against the permissions that exist, so a later app's permissions
join the right groups on the next migrate without a hand-written data migration."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

VIEWER = "viewer"
OPERATOR = "operator"
RISK_MANAGER = "risk_manager"
ADMIN = "admin"

_VIEW = [
    "controlplane.view_*",
    "risk.view_*",
    "alerts.view_*",
    "golive.view_*",
    "dashboard.view_*",
    "journal.view_*",
]
_OPERATE = [
    "controlplane.issue_pause",  # pause, and resume from a pause
    "controlplane.issue_reduce",  # reduce, cancel working orders
    "alerts.acknowledge_*",
    "alerts.add_silence",
    "alerts.change_silence",
    "golive.request_promotion",  # ask for an engine's next stage
    "journal.open_incident",  # by hand, from an engine or an alert
    "journal.tick_incident",  # the checklist's steps a person ticks
    "journal.add_logentry",  # the trading log
    "journal.change_logentry",
    "journal.sign_review",  # a daily or weekly review
]
_RISK = [
    "controlplane.issue_kill",  # kill, flatten the fleet
    "controlplane.approve_resume",  # the second person of a resume after a kill
    "risk.add_*",
    "risk.change_*",
    "golive.change_promotioncriterion",  # the promotion policy
    "golive.change_redline",  # the red lines that stop a strategy
    "golive.approve_promotion",  # the second person of a promotion; overrides a failing gate
    "controlplane.import_statement",  # a broker statement, reconciled against the ledger
    "journal.add_postmortem",
    "journal.change_postmortem",
    "journal.close_incident",  # only with its post-mortem
    "journal.*_emergencycontact",
    "journal.add_runbook",  # the runbooks, and which alert rules and limits point at them
    "journal.change_runbook",
    "journal.change_runbooklink",
    "journal.sign_period_review",  # a monthly or quarterly review
]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    VIEWER: _VIEW,
    OPERATOR: _VIEW + _OPERATE,
    RISK_MANAGER: _VIEW + _OPERATE + _RISK,
    ADMIN: ["*.*"],
}
ROLES = tuple(ROLE_PERMISSIONS)


def sync_roles(apps: Any = None) -> None:
    """Create the role groups and give each exactly the permissions its patterns match."""
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    permissions = list(permission_model.objects.select_related("content_type"))
    for role, patterns in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        wanted = [
            perm
            for perm in permissions
            if any(
                fnmatchcase(f"{perm.content_type.app_label}.{perm.codename}", pattern)
                for pattern in patterns
            )
        ]
        group.permissions.set(wanted)


def sync_roles_after_migrate(sender: Any, **kwargs: Any) -> None:
    # Permissions of apps migrated after ours exist only once post_migrate has run. The signal
    # comes once per app with models, each time after that app's permissions are created: the
    # roles are synced once, after the last app's, when every permission exists (a dozen syncs
    # of the same groups took seconds after each flush of the test database).
    from django.apps import apps as global_apps

    with_models = [config for config in global_apps.get_app_configs() if config.models_module]
    if with_models and sender is with_models[-1]:
        sync_roles()
