from __future__ import annotations

from typing import Any

from axes import admin as axes_admin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django_celery_beat import admin as celery_beat_admin
from django_celery_beat.models import PeriodicTask

from controlplane import services
from controlplane.admin_dates import BoundedDateHierarchy
from controlplane.audit import audit_record, client_ip
from controlplane.models import (
    CREATION_STAGES,
    AccountSnapshot,
    ApiToken,
    AuditEvent,
    BrokerStatement,
    Command,
    CommandBatch,
    Engine,
    EngineLog,
    Fill,
    Instrument,
    MetricSample,
    Order,
    Position,
    ResumeRequest,
    StageChange,
    StatementDifference,
)
from controlplane.stages import stage_record_first
from controlplane.statements import MAX_BYTES, StatementRefused, statement_import


class ReadOnlyAdmin(BoundedDateHierarchy, admin.ModelAdmin):
    """Data streamed by engines is evidence: the admin shows it but never edits it."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EngineForm(forms.ModelForm):
    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.instance.pk is None and "mode" in data:
            # A new engine: at the stage chosen, or the one its mode implies, backtest or paper
            # only (services.creation_stage_check, as create_engine and the API's callers).
            try:
                stage = services.creation_stage_check(
                    stage=data.get("stage") or None, mode=data["mode"]
                )
            except ValidationError as exc:
                raise ValidationError(exc.message_dict) from None
            data["stage"] = self.instance.stage = stage
        return data


CAPITAL = ("target_capital", "capital_pct", "capital_ceiling")


@admin.register(Engine)
class EngineAdmin(admin.ModelAdmin):
    form = EngineForm
    list_display = (
        "name",
        "mode",
        "stage",
        "connected",
        "reported_state",
        "desired_state",
        "equity",
        "day_pnl",
        "last_seen_at",
        "is_active",
    )
    list_filter = (
        "mode",
        "stage",
        "connected",
        "reported_state",
        "desired_state",
        "is_active",
        "broker",
    )
    search_fields = ("name", "broker", "account", "strategy_tags")
    readonly_fields = (
        "token_hint",
        "connected",
        "last_seen_at",
        "reported_state",
        "desired_state",
        "engine_build",
        "config_hash",
        "last_seq",
        "limits_version",
        "equity",
        "cash",
        "session_start_at",
        "session_start_equity",
        "high_water_mark",
        "day_pnl",
        "drawdown_pct",
        "created_at",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "mode",
                    "stage",
                    "broker",
                    "account",
                    "strategy_tags",
                    "description",
                    "is_active",
                )
            },
        ),
        ("Live", {"fields": readonly_fields}),
        (
            "Capital",
            {
                "fields": CAPITAL,
                "description": "Set by a risk manager on the engine's go-live page, with a "
                "reason; the share follows the stage and the capital ramp.",
            },
        ),
    )

    actions = ("deactivate",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # An engine's stage moves through the gates (a recorded stage change), never here; its
        # capital is set on its go-live page (audited, pushed to the engine).
        fields = (*self.readonly_fields, *CAPITAL)
        return (*fields, "stage") if obj is not None else fields

    def formfield_for_choice_field(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "stage":
            # Only on the add form (read-only after): a new engine starts at backtest or paper.
            kwargs["choices"] = [
                ("", "(the mode's)"),
                *((s.value, s.label) for s in CREATION_STAGES),
            ]
            kwargs["required"] = False
            kwargs["help_text"] = services.NEW_ENGINE_STAGE_REFUSAL.capitalize() + "."
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Engine, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            if "is_active" in form.changed_data and not obj.is_active:
                # Through the service: the audit, and the engine's open sockets closed.
                services.engine_deactivate(engine=obj, actor=request.user)
            return
        # The token exists in clear text only in this one message.
        token = services.engine_assign_token(engine=obj)
        super().save_model(request, obj, form, change)
        audit_record(
            action="engine_create",
            actor=request.user,
            target=obj,
            ip_address=client_ip(request),
            data={"mode": obj.mode, "stage": obj.stage, "broker": obj.broker},
        )
        stage_record_first(engine=obj, actor=request.user)
        messages.warning(
            request,
            f"Engine token for {obj.name} (shown once, store it in the engine's secrets): {token}",
        )

    @admin.action(
        description="Deactivate the selected engines (refuse their tokens, disconnect)",
        permissions=["change"],
    )
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Engine]) -> None:
        engines = list(queryset.filter(is_active=True))
        for engine in engines:
            services.engine_deactivate(engine=engine, actor=request.user)
        names = ", ".join(engine.name for engine in engines) or "none (already inactive)"
        messages.success(request, f"Deactivated: {names}.")


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = (
        "symbol",
        "sector",
        "asset_class",
        "multiplier",
        "currency",
        "tick_size",
        "described_by",
    )
    list_filter = ("asset_class", "sector", "currency")
    search_fields = ("symbol", "sector")
    readonly_fields = ("described_by",)

    def save_model(self, request: Any, obj: Instrument, form: Any, change: bool) -> None:
        # A person's description stands: no engine's declaration may contradict it after this.
        obj.described_by = f"user {request.user.get_username()}"[:160]
        super().save_model(request, obj, form, change)


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = (
        "client_order_id",
        "engine",
        "instrument",
        "side",
        "order_type",
        "quantity",
        "limit_price",
        "status",
        "filled_quantity",
        "updated_at",
    )
    list_filter = ("status", "side", "order_type", "engine")
    search_fields = ("client_order_id", "broker_order_id", "instrument__symbol")
    list_select_related = ("engine", "instrument")
    date_hierarchy = "updated_at"


@admin.register(Fill)
class FillAdmin(ReadOnlyAdmin):
    list_display = ("fill_id", "engine", "instrument", "side", "quantity", "price", "fee", "ts")
    list_filter = ("side", "engine")
    search_fields = ("fill_id", "order__client_order_id", "instrument__symbol")
    list_select_related = ("engine", "instrument")
    date_hierarchy = "ts"


@admin.register(Position)
class PositionAdmin(ReadOnlyAdmin):
    list_display = (
        "engine",
        "instrument",
        "quantity",
        "avg_price",
        "realized_pnl",
        "reported_quantity",
        "mismatch_since",
    )
    list_filter = ("engine", ("mismatch_since", admin.EmptyFieldListFilter))
    search_fields = ("instrument__symbol",)
    list_select_related = ("engine", "instrument")


@admin.register(AccountSnapshot)
class AccountSnapshotAdmin(ReadOnlyAdmin):
    list_display = ("engine", "ts", "equity", "cash", "margin_used", "currency")
    list_filter = ("engine",)
    list_select_related = ("engine",)
    date_hierarchy = "ts"


@admin.register(MetricSample)
class MetricSampleAdmin(ReadOnlyAdmin):
    list_display = ("engine", "name", "value", "ts")
    list_filter = ("name", "engine")
    list_select_related = ("engine",)
    date_hierarchy = "ts"


@admin.register(EngineLog)
class EngineLogAdmin(ReadOnlyAdmin):
    list_display = ("engine", "ts", "level", "message")
    list_filter = ("level", "engine")
    search_fields = ("message",)
    list_select_related = ("engine",)
    date_hierarchy = "ts"


@admin.register(CommandBatch)
class CommandBatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "selector", "issued_by_label", "created_at")
    list_filter = ("kind",)


@admin.register(Command)
class CommandAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "engine",
        "kind",
        "status",
        "issued_by_label",
        "created_at",
        "acknowledged_at",
        "completed_at",
    )
    list_filter = ("status", "kind", "engine")
    search_fields = ("id", "reason", "issued_by_label")
    list_select_related = ("engine",)
    date_hierarchy = "created_at"


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("ts", "actor", "action", "target_label", "outcome", "ip_address", "reason")
    list_filter = ("action", "outcome", "target_type")
    search_fields = ("actor", "target_label", "reason")
    date_hierarchy = "ts"


@admin.register(ResumeRequest)
class ResumeRequestAdmin(ReadOnlyAdmin):
    """Decided in the app (Resume requests page or API), where the four-eyes rule is applied."""

    list_display = (
        "engine",
        "status",
        "requested_by_label",
        "created_at",
        "decided_by_label",
        "decided_at",
    )
    list_filter = ("status",)
    list_select_related = ("engine",)


@admin.register(StageChange)
class StageChangeAdmin(ReadOnlyAdmin):
    """An engine's stage history: moved through the going-live policy, shown here as evidence."""

    list_display = ("engine", "from_stage", "to_stage", "override", "actor_label", "at")
    list_filter = ("to_stage", "override")
    list_select_related = ("engine",)
    search_fields = ("engine__name", "actor_label", "reason")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created with `manage.py create_api_token` (shown once); revoke by deleting."""

    list_display = ("name", "user", "token_hint", "created_at", "last_used_at", "expires_at")
    list_select_related = ("user",)
    readonly_fields = ("user", "name", "token_hint", "created_at", "last_used_at")
    fields = ("user", "name", "token_hint", "created_at", "last_used_at", "expires_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: ApiToken) -> None:
        audit_record(
            action="api_token_revoke",
            actor=request.user,
            target=obj,
            ip_address=client_ip(request),
            data={"user": obj.user.get_username()},
        )
        super().delete_model(request, obj)


# django_celery_beat's schedule list drills down by start date too.
class StatementImportForm(forms.Form):
    engine = forms.ModelChoiceField(queryset=Engine.objects.order_by("name"))
    file = forms.FileField(
        help_text="CSV: type,date,trade_id,order_id,symbol,side,quantity,price,fee "
        "(docs/going-live.md, Broker statements). One day of one engine's account."
    )

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size > MAX_BYTES:
            raise ValidationError(f"The file is larger than {MAX_BYTES // 1024 // 1024} MB.")
        return upload


class StatementDifferenceInline(admin.TabularInline):
    model = StatementDifference
    extra = 0
    can_delete = False
    fields = ("kind", "line", "symbol", "trade_id", "ledger_value", "broker_value", "detail")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BrokerStatement)
class BrokerStatementAdmin(BoundedDateHierarchy, admin.ModelAdmin):
    """Statements are imported (the add page reads a file), never edited: a statement that was
    wrong is corrected by importing the right one, and both stay."""

    list_display = (
        "engine",
        "statement_date",
        "trades",
        "positions",
        "differences_count",
        "imported_by_label",
        "imported_at",
    )
    list_filter = ("engine",)
    date_hierarchy = "statement_date"
    readonly_fields = (
        "engine",
        "statement_date",
        "filename",
        "sha256",
        "trades",
        "positions",
        "differences_count",
        "ledger_summary",
        "broker_summary",
        "imported_by_label",
        "imported_at",
    )
    fields = readonly_fields
    inlines = (StatementDifferenceInline,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("controlplane.import_statement")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            return super().add_view(request, form_url, extra_context)  # Django's 403
        form = StatementImportForm(request.POST or None, request.FILES or None)
        refusal: StatementRefused | None = None
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                statement = statement_import(
                    engine=form.cleaned_data["engine"],
                    data=upload.read(),
                    filename=upload.name or "",
                    actor=request.user,  # type: ignore[arg-type]
                    ip_address=client_ip(request),
                )
            except StatementRefused as exc:
                refusal = exc
            else:
                if statement.matched:
                    messages.success(request, f"{statement}: matches the ledger.")
                else:
                    messages.warning(
                        request,
                        f"{statement}: {statement.differences_count} differences with the "
                        "ledger, listed below; an alert is raised.",
                    )
                url = reverse("admin:controlplane_brokerstatement_change", args=[statement.pk])
                return HttpResponseRedirect(url)
        context = {
            **self.admin_site.each_context(request),
            "title": "Import a broker statement",
            "opts": self.model._meta,
            "form": form,
            "refusal": refusal,
        }
        return TemplateResponse(request, "admin/controlplane/brokerstatement/import.html", context)


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BoundedDateHierarchy, celery_beat_admin.PeriodicTaskAdmin):
    pass


# django-axes' lists of login attempts drill down by attempt time too.
for _model, _admin in (
    (AccessAttempt, axes_admin.AccessAttemptAdmin),
    (AccessLog, axes_admin.AccessLogAdmin),
    (AccessFailureLog, axes_admin.AccessFailureLogAdmin),
):
    if admin.site.is_registered(_model):  # AXES_ENABLE_ADMIN
        admin.site.unregister(_model)
        admin.site.register(_model, type(_admin.__name__, (BoundedDateHierarchy, _admin), {}))
