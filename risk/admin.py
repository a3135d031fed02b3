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
from risk.models import (
    Allocation,
    AllocationChange,
    DeskCapital,
    RiskEvent,
    RiskLimit,
    RiskLimitChange,
)

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


class AllocationForm(forms.ModelForm):
    change_reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why this target is set or changed; kept in its history and the audit log.",
    )

    class Meta:
        model = Allocation
        fields = ("scope", "scope_value", "target_pct", "enabled")

    def clean_change_reason(self) -> str:
        reason = self.cleaned_data["change_reason"].strip()
        if not reason:
            raise ValidationError("Say why: every change of an allocation target needs a reason.")
        return reason

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        # Said on the form; the service checks again under its lock when saving.
        if data.get("target_pct") is not None:
            error = services.engine_targets_error(
                scope=data.get("scope", ""),
                enabled=bool(data.get("enabled")),
                target_pct=data["target_pct"],
                pk=self.instance.pk,
            )
            if error:
                self.add_error("target_pct", error)
        return data


class AllocationChangeInline(admin.TabularInline):
    model = AllocationChange
    fields = ("changed_at", "changed_by_label", "change", "changes", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-changed_at",)
    verbose_name_plural = "History (who changed what, from which value to which)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Allocation)
class AllocationAdmin(admin.ModelAdmin):
    """Target shares of the desk's capital (docs/risk.md, "Allocation"), saved through
    risk.services.allocation_save: validated, versioned, kept in the history and the audit."""

    form = AllocationForm
    list_display = ("scope", "scope_value", "target_pct", "enabled", "version", "updated_at")
    list_filter = ("scope", "enabled")
    readonly_fields = ("version", "updated_by", "updated_at")
    inlines = [AllocationChangeInline]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A target is switched off (enabled), never deleted, so its history stays whole.
        return False

    def save_model(self, request: HttpRequest, obj: Allocation, form: Any, change: bool) -> None:
        entry = services.allocation_save(
            allocation=obj,
            reason=form.cleaned_data["change_reason"],
            actor=request.user,
            ip_address=client_ip(request),
        )
        if entry is None:
            messages.info(request, "Nothing changed: the target is as it was.")


class DeskCapitalForm(forms.ModelForm):
    change_reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why the desk's capital is set or changed; kept in the audit log.",
    )

    class Meta:
        model = DeskCapital
        fields = ("amount",)


@admin.register(DeskCapital)
class DeskCapitalAdmin(admin.ModelAdmin):
    """The desk's capital: one row, what allocation shares are shares of."""

    form = DeskCapitalForm
    list_display = ("amount", "updated_by", "updated_at")
    readonly_fields = ("updated_by", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and not DeskCapital.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: DeskCapital, form: Any, change: bool) -> None:
        obj.pk = 1  # the one row
        entry = services.desk_capital_set(
            amount=obj.amount,
            reason=form.cleaned_data["change_reason"],
            actor=request.user,
            ip_address=client_ip(request),
        )
        if entry is None:
            messages.info(request, "Nothing changed: the desk's capital is as it was.")
