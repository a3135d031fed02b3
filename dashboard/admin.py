from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from dashboard.models import Baseline, Profile, ReportDelivery
from dashboard.reports.forms import BaselineForm


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "weekly_report", "timezone"]
    list_filter = ["weekly_report"]
    search_fields = ["user__username", "user__email"]
    raw_id_fields = ["user"]


@admin.register(Baseline)
class BaselineAdmin(admin.ModelAdmin):
    form = BaselineForm
    list_display = [
        "engine",
        "name",
        "expected_annual_return_pct",
        "sharpe",
        "trades_per_day",
        "win_rate_pct",
        "profit_factor",
        "tolerance_pct",
        "curve_points",
        "updated_at",
    ]
    search_fields = ["engine__name", "name"]
    readonly_fields = ["curve_points", "created_at", "updated_at"]

    @admin.display(description="profit factor")
    def profit_factor(self, obj: Baseline) -> str:
        factor = obj.profit_factor
        return "—" if factor is None else f"{factor:.2f}"

    @admin.display(description="curve points")
    def curve_points(self, obj: Baseline) -> int:
        return len(obj.equity_curve or [])


@admin.register(ReportDelivery)
class ReportDeliveryAdmin(admin.ModelAdmin):
    list_display = ["week", "user", "status", "attempts", "sent_at", "error_head"]
    list_filter = ["status", "week"]
    search_fields = ["user__username", "user__email", "week"]
    readonly_fields = [
        "user",
        "week",
        "status",
        "attempts",
        "error",
        "claimed_at",
        "sent_at",
        "created_at",
    ]

    @admin.display(description="error")
    def error_head(self, obj: ReportDelivery) -> str:
        return obj.error[:80]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Rows are the record of what was sent; the task writes them.
        return False
