from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils.html import format_html

from controlplane.admin_dates import BoundedDateHierarchy
from controlplane.audit import client_ip
from risk import events, services
from risk.models import RiskEvent, RiskLimit, RiskLimitChange

NO_CHANNEL = "no notification channel"


class RiskLimitForm(forms.ModelForm):
    change_reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why this limit is set or changed; kept in its history and the audit log.",
    )

    class Meta:
        model = RiskLimit
        fields = (
            "kind",
            "scope",
            "scope_value",
            "threshold",
            "warning_levels",
            "action",
            "reduce_to_pct",
            "window_days",
            "enabled",
            "description",
        )

    def clean_change_reason(self) -> str:
        reason = self.cleaned_data["change_reason"].strip()
        if not reason:
            raise ValidationError("Say why: every change of a risk limit needs a reason.")
        return reason


class ChangeInline(admin.TabularInline):
    model = RiskLimitChange
    fields = ("changed_at", "version", "changed_by_label", "change", "changes", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-changed_at",)
    verbose_name_plural = "History (who changed what, from which value to which)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RiskLimit)
class RiskLimitAdmin(admin.ModelAdmin):
    form = RiskLimitForm
    list_display = (
        "id",
        "kind",
        "scope",
        "scope_value",
        "threshold",
        "warning_levels",
        "action",
        "enabled",
        "version",
        "updated_by",
        "updated_at",
    )
    list_filter = ("enabled", "kind", "scope", "action")
    search_fields = ("scope_value", "description")
    readonly_fields = ("version", "updated_by", "updated_at")
    inlines = [ChangeInline]

    def get_list_display(self, request: HttpRequest) -> Any:
        # Asked once per page: a limit's alerts reach the channels of the risk-limit rule.
        channels = events.limit_channel_count()

        @admin.display(description="Notifies")
        def notifies(limit: RiskLimit) -> str:
            if not limit.enabled:
                return "—"
            if channels is None:
                return "no alerting"
            if channels == 0:
                return format_html(
                    '<span class="no-channel" style="color: #b35c00; font-weight: 600">⚠ {}</span>',
                    NO_CHANNEL,
                )
            return f"{channels} channel{'s' if channels != 1 else ''}"

        return (*self.list_display, notifies)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        if events.limit_channel_count() == 0:
            messages.warning(
                request,
                f"{NO_CHANNEL}: the warnings and breaches of risk limits "
                'show in the app and notify nobody. Give the "Risk limits" alert '
                "rule a channel.",
            )
        return super().changelist_view(request, extra_context)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A limit is switched off (enabled), never deleted, so its history stays whole.
        return False

    def save_model(self, request: HttpRequest, obj: RiskLimit, form: Any, change: bool) -> None:
        change_entry = services.limit_save(
            limit=obj,
            reason=form.cleaned_data["change_reason"],
            actor=request.user,
            ip_address=client_ip(request),
        )
        if change_entry is None:
            messages.info(request, "Nothing changed: the limit is as it was.")


@admin.register(RiskEvent)
class RiskEventAdmin(BoundedDateHierarchy, admin.ModelAdmin):
    list_display = ("at", "engine", "subject", "kind", "level", "utilisation", "message")
    list_filter = ("kind", "engine")
    list_select_related = ("engine",)
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
