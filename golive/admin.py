from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from controlplane.audit import client_ip
from golive import services
from golive.models import (
    PromotionCriterion,
    PromotionCriterionChange,
    RedLine,
    RedLineChange,
    RedLineEvent,
)


class PromotionCriterionForm(forms.ModelForm):
    change_reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why this criterion is changed; kept in its history and the audit log.",
    )

    class Meta:
        model = PromotionCriterion
        fields = ("enabled", "threshold", "threshold_high")

    def clean_change_reason(self) -> str:
        reason = self.cleaned_data["change_reason"].strip()
        if not reason:
            raise ValidationError("Say why: every change of the promotion policy needs a reason.")
        return reason


class ChangeInline(admin.TabularInline):
    model = PromotionCriterionChange
    fields = ("changed_at", "version", "changed_by_label", "change", "changes", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-changed_at",)
    verbose_name_plural = "History (who changed what, from which value to which)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PromotionCriterion)
class PromotionCriterionAdmin(admin.ModelAdmin):
    form = PromotionCriterionForm
    list_display = (
        "step",
        "label",
        "enabled",
        "threshold_text",
        "version",
        "updated_by",
        "updated_at",
    )
    list_filter = ("from_stage", "enabled")
    readonly_fields = ("step", "label", "version", "updated_by", "updated_at")
    fields = ("step", "label", "enabled", "threshold", "threshold_high", "change_reason")
    inlines = [ChangeInline]

    @admin.display(description="Step", ordering="from_stage")
    def step(self, obj: PromotionCriterion) -> str:
        return obj.step_label

    @admin.display(description="Criterion")
    def label(self, obj: PromotionCriterion) -> str:
        spec = obj.spec
        return spec.label if spec is not None else obj.key

    @admin.display(description="Threshold")
    def threshold_text(self, obj: PromotionCriterion) -> str:
        return obj.threshold_text

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_fields(request, obj))
        # The reason is asked only of those who may change the criterion.
        if obj is not None and not self.has_change_permission(request, obj):
            fields.remove("change_reason")
        return fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        # The criteria are those the code measures (golive.policy): created by the migration.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A criterion is switched off (enabled), never deleted, so its history stays whole.
        return False

    def save_model(
        self, request: HttpRequest, obj: PromotionCriterion, form: Any, change: bool
    ) -> None:
        change_entry = services.criterion_save(
            criterion=obj,
            reason=form.cleaned_data["change_reason"],
            actor=request.user,
            ip_address=client_ip(request),
        )
        if change_entry is None:
            messages.info(request, "Nothing changed: the criterion is as it was.")


# --- Red lines (golive.redlines) -----------------------------------------------------------------


class RedLineForm(forms.ModelForm):
    change_reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why this red line is changed; kept in its history and the audit log.",
    )

    class Meta:
        model = RedLine
        fields = ("enabled", "threshold", "window", "action", "demote_to")

    def clean_change_reason(self) -> str:
        reason = self.cleaned_data["change_reason"].strip()
        if not reason:
            raise ValidationError("Say why: every change of a red line needs a reason.")
        if "\x00" in reason:
            raise ValidationError("A reason cannot hold a NUL character.")
        return reason


class RedLineChangeInline(admin.TabularInline):
    model = RedLineChange
    fields = ("changed_at", "version", "changed_by_label", "change", "changes", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-changed_at",)
    verbose_name_plural = "History (who changed what, from which value to which)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RedLine)
class RedLineAdmin(admin.ModelAdmin):
    form = RedLineForm
    list_display = (
        "label",
        "enabled",
        "threshold_text",
        "action",
        "demote_to",
        "version",
        "updated_by",
        "updated_at",
    )
    readonly_fields = ("label", "version", "updated_by", "updated_at")
    fields = ("label", "enabled", "threshold", "window", "action", "demote_to", "change_reason")
    inlines = [RedLineChangeInline]

    @admin.display(description="Red line", ordering="kind")
    def label(self, obj: RedLine) -> str:
        return obj.label

    @admin.display(description="Threshold")
    def threshold_text(self, obj: RedLine) -> str:
        return obj.threshold_text

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            fields.remove("change_reason")
        return fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        # The red lines are those the code measures (golive.redline_specs): made by the migration.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Switched off (enabled), never deleted, so its history and events keep their rule.
        return False

    def save_model(self, request: HttpRequest, obj: RedLine, form: Any, change: bool) -> None:
        change_entry = services.red_line_save(
            red_line=obj,
            reason=form.cleaned_data["change_reason"],
            actor=request.user,
            ip_address=client_ip(request),
        )
        if change_entry is None:
            messages.info(request, "Nothing changed: the red line is as it was.")


@admin.register(RedLineEvent)
class RedLineEventAdmin(admin.ModelAdmin):
    """Red lines crossed: read only, kept for ever."""

    list_display = (
        "at",
        "engine",
        "label",
        "value",
        "threshold_text",
        "stage",
        "action",
        "to_stage",
    )
    list_filter = ("kind", "action", "stage")
    search_fields = ("engine__name", "message")
    list_select_related = ("engine",)
    readonly_fields = [f.name for f in RedLineEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
