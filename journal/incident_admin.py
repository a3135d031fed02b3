"""The admin of incidents (read-only: every change goes through journal.incidents, audited) and
of emergency contacts (saved and deleted through journal.contacts, audited)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from controlplane.audit import client_ip
from journal import contacts
from journal.models import EmergencyContact, Incident, IncidentStep


class StepInline(admin.TabularInline):
    model = IncidentStep
    fields = ("position", "key", "done_at", "by_data", "done_by_label", "note")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    list_display = ("pk", "title", "state", "trigger", "opened_at", "opened_by_label", "closed_at")
    list_filter = ("state", "trigger")
    search_fields = ("title", "reason")
    inlines = [StepInline]
    exclude = ("commands", "alerts", "engines")
    readonly_fields = (
        "title",
        "state",
        "trigger",
        "reason",
        "opened_at",
        "opened_by_label",
        "kill_batch",
        "source_alert",
        "snapshot",
        "lifted_at",
        "closed_at",
        "closed_by_label",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ContactForm(forms.ModelForm):
    class Meta:
        model = EmergencyContact
        fields = ("name", "role", "phone", "email", "escalation_order", "active")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # The service's checks, so the admin refuses what the page and the API refuse.
        contacts.contact_fields_clean(dict(cleaned))
        return cleaned


@admin.register(EmergencyContact)
class EmergencyContactAdmin(admin.ModelAdmin):
    form = ContactForm
    list_display = ("escalation_order", "name", "role", "phone", "email", "active")
    fields = ("name", "role", "phone", "email", "escalation_order", "active")

    def save_model(
        self, request: HttpRequest, obj: EmergencyContact, form: Any, change: bool
    ) -> None:
        data = {field: form.cleaned_data[field] for field in self.fields}
        actor = request.user
        try:
            if change:
                stored = EmergencyContact.objects.get(pk=obj.pk)
                contacts.contact_update(
                    contact=stored,
                    actor=actor,
                    data=data,
                    ip_address=client_ip(request),  # type: ignore[arg-type]
                )
            else:
                created = contacts.contact_create(
                    actor=actor,
                    data=data,
                    ip_address=client_ip(request),  # type: ignore[arg-type]
                )
                obj.pk = created.pk
        except ValidationError as exc:
            # Shown as the admin's error page would be: the service's words, nothing saved.
            self.message_user(request, "; ".join(exc.messages), level="error")

    def delete_model(self, request: HttpRequest, obj: EmergencyContact) -> None:
        contacts.contact_delete(contact=obj, actor=request.user, ip_address=client_ip(request))  # type: ignore[arg-type]

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for contact in queryset:
            self.delete_model(request, contact)
