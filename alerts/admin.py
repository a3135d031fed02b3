from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from alerts import notify, selectors, services
from alerts.models import Alert, AlertRule, Notification, NotificationChannel, Silence
from alerts.rule_metrics import (
    CAPABILITY_METRIC,
    DIVERGENCE_DAY_METRIC,
    METRICS,
    RED_LINE_METRIC,
    RISK_LIMIT_METRIC,
    STAGE_VIOLATION_METRIC,
    STATEMENT_METRIC,
)
from alerts.transports import TRANSPORTS
from controlplane.admin_dates import BoundedDateHierarchy
from controlplane.audit import client_ip

NO_CHANNEL = "no notification channel"

# --- Notification channels and deliveries --------------------------------------------------------

TARGET_HELP = (
    "E-mail: addresses separated by commas. Apprise: one URL, e.g. slack://TokenA/TokenB/TokenC, "
    "pagerduty://IntegrationKey@ApiKey, tgram://BotToken/ChatID, jsons://host/path (a webhook). "
    "Stored encrypted and never shown again."
)


class NotificationChannelForm(forms.ModelForm):
    # Write-only: the stored secret is never sent to the browser; empty on change keeps it.
    target = forms.CharField(
        required=False,
        strip=True,
        max_length=2000,
        widget=forms.TextInput(attrs={"autocomplete": "off", "size": 80, "spellcheck": "false"}),
        help_text=TARGET_HELP,
    )

    class Meta:
        model = NotificationChannel
        fields = ("name", "kind", "target", "enabled")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["target"]
        if self.instance.pk is None:
            field.required = True
            return
        try:
            self.instance.target  # noqa: B018 (decrypts, to tell a lost key apart)
        except ValueError as exc:
            field.help_text = f"Now unreadable: {exc}. {TARGET_HELP}"
        else:
            field.help_text = (
                f"Now: {self.instance.target_hint or '(empty)'}. Leave empty to keep it; "
                f"what you enter replaces it. {TARGET_HELP}"
            )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        kind, target = cleaned.get("kind"), cleaned.get("target", "")
        if kind and not target and self.instance.pk is not None and "kind" in self.changed_data:
            self.add_error("target", "A new kind needs a new target.")
        if kind and target:
            try:
                cleaned["target"] = TRANSPORTS[kind].validate_target(target)
            except ValueError as exc:
                self.add_error("target", str(exc))
        return cleaned

    def save(self, commit: bool = True) -> NotificationChannel:
        channel: NotificationChannel = super().save(commit=False)
        if self.cleaned_data.get("target"):
            channel.target = self.cleaned_data["target"]
        if commit:
            channel.save()
            self.save_m2m()
        return channel


def _report_test(request: HttpRequest, channel: NotificationChannel) -> Notification:
    notification = notify.channel_test(channel=channel)
    if notification.status == Notification.Status.SENT:
        messages.success(request, f"Test notification to {channel.name}: sent.")
    else:
        messages.error(
            request, f"Test notification to {channel.name}: failed: {notification.last_error}"
        )
    return notification


@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    form = NotificationChannelForm
    list_display = ("name", "kind", "target_hint", "enabled", "created_at")
    list_filter = ("kind", "enabled")
    search_fields = ("name",)
    readonly_fields = ("created_at",)
    actions = ["send_test"]

    @admin.action(description="Send a test notification", permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet[NotificationChannel]) -> None:
        for channel in queryset:
            _report_test(request, channel)

    def get_urls(self) -> list[URLPattern]:
        test_view = self.admin_site.admin_view(require_POST(self.test_view))
        return [
            path("<int:object_id>/test/", test_view, name="alerts_notificationchannel_test"),
            *super().get_urls(),
        ]

    def test_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        channel = get_object_or_404(NotificationChannel, pk=object_id)
        if not self.has_change_permission(request, channel):
            raise PermissionDenied
        _report_test(request, channel)
        return HttpResponseRedirect(
            reverse("admin:alerts_notificationchannel_change", args=[channel.pk])
        )


@admin.register(Notification)
class NotificationAdmin(BoundedDateHierarchy, admin.ModelAdmin):
    list_display = ("created_at", "event", "channel", "status", "attempts", "last_error")
    list_filter = ("status", "event", "channel")
    list_select_related = ("channel",)
    search_fields = ("key", "subject")
    date_hierarchy = "created_at"
    fields = (
        "key",
        "alert",
        "channel",
        "event",
        "status",
        "attempts",
        "last_error",
        "claimed_until",
        "created_at",
        "sent_at",
        "subject",
        "body",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Alert rules ---------------------------------------------------------------------------------


def metric_choices() -> list[tuple[str, str]]:
    choices = [(m.name, f"{m.name} ({m.unit}): {m.description}") for m in METRICS.values()]
    risk = (RISK_LIMIT_METRIC, f"{RISK_LIMIT_METRIC}: the warnings and breaches of risk limits")
    stage = (
        STAGE_VIOLATION_METRIC,
        f"{STAGE_VIOLATION_METRIC}: an engine said hello in a mode its stage forbids",
    )
    statement = (
        STATEMENT_METRIC,
        f"{STATEMENT_METRIC}: a broker statement differs from the ledger",
    )
    divergence = (
        DIVERGENCE_DAY_METRIC,
        f"{DIVERGENCE_DAY_METRIC}: a day of an engine's divergence log beyond its threshold",
    )
    red_line = (RED_LINE_METRIC, f"{RED_LINE_METRIC}: an engine crossed a red line (going live)")
    capability = (
        CAPABILITY_METRIC,
        f"{CAPABILITY_METRIC}: an engine was asked what it said it cannot enforce",
    )
    return [
        ("", "---------"),
        *sorted(choices),
        risk,
        stage,
        statement,
        divergence,
        red_line,
        capability,
    ]


class AlertRuleForm(forms.ModelForm):
    # A choice of the registry, not free text: a typo would make a rule that never fires.
    metric = forms.ChoiceField(
        choices=metric_choices,
        help_text="What the rule watches, for each engine in its scope (docs/alerts.md).",
        error_messages={
            "invalid_choice": "%(value)s is not a metric of the registry: choose one "
            "of the list (docs/alerts.md, the metric registry)."
        },
    )

    class Meta:
        model = AlertRule
        fields = (
            "name",
            "metric",
            "comparator",
            "threshold",
            "hysteresis",
            "pending_s",
            "severity",
            "scope",
            "scope_value",
            "channels",
            "repeat_interval_s",
            "escalate_after_s",
            "escalation_channels",
            "action",
            "enabled",
            "description",
        )


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    form = AlertRuleForm
    list_display = (
        "name",
        "metric",
        "comparator",
        "threshold",
        "severity",
        "scope",
        "scope_value",
        "action",
        "enabled",
        "notifies",
    )
    list_filter = ("enabled", "severity", "scope", "action")
    search_fields = ("name", "metric", "description")
    filter_horizontal = ("channels", "escalation_channels")

    def get_queryset(self, request: HttpRequest) -> QuerySet[AlertRule]:
        return selectors.rules_with_channel_counts()

    @admin.display(description="Notifies", ordering="channel_count")
    def notifies(self, rule: AlertRule) -> str:
        count = rule.channel_count  # type: ignore[attr-defined]
        if count:
            return f"{count} channel{'s' if count != 1 else ''}"
        return format_html(
            '<span class="no-channel" style="color: #b35c00; font-weight: 600">⚠ {}</span>',
            NO_CHANNEL,
        )

    def save_model(self, request: HttpRequest, obj: AlertRule, form: Any, change: bool) -> None:
        services.rule_save(rule=obj, actor=request.user, ip_address=client_ip(request))

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if not form.instance.channels.filter(enabled=True).exists() and form.instance.enabled:
            message = (
                f"{form.instance.name}: {NO_CHANNEL}: its alerts show in the app only; "
                "add a channel to have anyone told."
            )
            messages.warning(request, message)


# --- Alerts --------------------------------------------------------------------------------------


@admin.register(Alert)
class AlertAdmin(BoundedDateHierarchy, admin.ModelAdmin):
    list_display = (
        "started_at",
        "state",
        "severity",
        "summary",
        "engine",
        "rule",
        "acknowledged_at",
        "acknowledged_by_label",
    )
    list_filter = ("state", "severity", "rule")
    list_select_related = ("engine", "rule")
    search_fields = ("summary",)
    date_hierarchy = "started_at"
    actions = ["acknowledge"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in Alert._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_acknowledge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("alerts.acknowledge_alert")

    @admin.action(
        description="Acknowledge (stops repeats and escalation)", permissions=["acknowledge"]
    )
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        ip_address = client_ip(request)
        done = 0
        for alert in queryset:
            done += services.alert_acknowledge(
                alert=alert,
                actor=request.user,  # type: ignore[arg-type]
                ip_address=ip_address,
            )
        messages.info(request, f"{done} alert(s) acknowledged.")


# --- Silences ------------------------------------------------------------------------------------


class SilenceForm(forms.ModelForm):
    class Meta:
        model = Silence
        fields = ("rule", "engine", "tag", "ends_at", "reason")

    def clean(self) -> dict[str, Any]:
        # The service's rules, checked here so the admin shows them beside the fields.
        cleaned = super().clean()
        ends_at, now = cleaned.get("ends_at"), timezone.now()
        if ends_at is not None and self.instance.pk is None:
            if ends_at <= now:
                self.add_error("ends_at", "A silence must end in the future.")
            elif ends_at - now > services.MAX_SILENCE:
                self.add_error("ends_at", "A silence lasts at most 7 days; set a new one after.")
        return cleaned


@admin.register(Silence)
class SilenceAdmin(admin.ModelAdmin):
    form = SilenceForm
    list_display = ("ends_at", "rule", "engine", "tag", "reason", "created_by_label", "active")
    list_filter = ("rule", "engine")
    list_select_related = ("rule", "engine")

    @admin.display(boolean=True)
    def active(self, obj: Silence) -> bool:
        return obj.ends_at > timezone.now()

    def save_model(self, request: HttpRequest, obj: Silence, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        silence = services.silence_create(
            actor=request.user,  # type: ignore[arg-type]
            reason=obj.reason,
            ends_at=obj.ends_at,
            rule=obj.rule,
            engine=obj.engine,
            tag=obj.tag,
            ip_address=client_ip(request),
        )
        obj.pk = silence.pk
        obj.starts_at = silence.starts_at
        obj.created_by = silence.created_by
        obj.created_by_label = silence.created_by_label
