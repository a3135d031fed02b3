"""Emergency contacts: people, roles, phone, e-mail and escalation order.

Shown on every incident and one click from every Kill button. Alert escalation uses them through
one e-mail notification channel the journal keeps in step with the active contacts, their
addresses in escalation order (``CHANNEL_NAME``): a rule that names it among its escalation
channels escalates to them (docs/alerts.md, docs/operations.md "Emergency contacts").
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from alerts.models import NotificationChannel
from controlplane.audit import audit_record
from journal.incidents import IncidentForbidden, clean_text
from journal.models import EmergencyContact

CHANNEL_NAME = "Emergency contacts"
MAX_ORDER = 99
_PHONE = re.compile(r"\+?[0-9][0-9 ().\-/]{2,30}")


def contacts_list(*, active_only: bool = True) -> QuerySet[EmergencyContact]:
    contacts = EmergencyContact.objects.all()
    if active_only:
        contacts = contacts.filter(active=True)
    return contacts.order_by("escalation_order", "name")


def contact_fields_clean(data: dict[str, Any]) -> dict[str, Any]:
    name = clean_text(data.get("name"), "name", max_length=150, one_line=True)
    role = clean_text(data.get("role"), "role", max_length=100, one_line=True)
    phone = clean_text(data.get("phone"), "phone", max_length=32, one_line=True)
    if not _PHONE.fullmatch(phone):
        raise ValidationError(
            {"phone": "digits, spaces and + ( ) . - / only, like +44 20 7946 0000"}
        )
    email = clean_text(data.get("email"), "email", max_length=254, one_line=True)
    try:
        validate_email(email)
    except ValidationError:
        raise ValidationError({"email": f"{email!r} is not an e-mail address"}) from None
    order = data.get("escalation_order")
    if isinstance(order, str) and order.strip().isdigit():
        order = int(order)
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise ValidationError({"escalation_order": f"a whole number from 1 to {MAX_ORDER}"})
    active = data.get("active", True)
    if not isinstance(active, bool):
        raise ValidationError({"active": "true or false"})
    return {
        "name": name,
        "role": role,
        "phone": phone,
        "email": email,
        "escalation_order": order,
        "active": active,
    }


def _save(contact: EmergencyContact, fields: dict[str, Any]) -> None:
    for field, value in fields.items():
        setattr(contact, field, value)
    try:
        with transaction.atomic():
            contact.save()
    except IntegrityError:
        taken = EmergencyContact.objects.filter(
            active=True, escalation_order=fields["escalation_order"]
        ).first()
        who = f" by {taken.name}" if taken else ""
        raise ValidationError(
            {"escalation_order": f"{fields['escalation_order']} is taken{who}: one contact each"}
        ) from None


def escalation_channel_sync() -> NotificationChannel:
    """The e-mail channel of the active contacts, in escalation order; disabled when none."""
    addresses = list(contacts_list().values_list("email", flat=True))
    channel = NotificationChannel.objects.filter(name=CHANNEL_NAME).first()
    if channel is None:
        channel = NotificationChannel(name=CHANNEL_NAME, kind=NotificationChannel.Kind.EMAIL)
    channel.kind = NotificationChannel.Kind.EMAIL
    channel.target = ", ".join(addresses)
    channel.enabled = bool(addresses)
    channel.save()
    return channel


def _require(actor: AbstractBaseUser, permission: str) -> None:
    if not actor.has_perm(permission):  # type: ignore[attr-defined]
        what = permission.split(".")[1].split("_")[0]
        raise IncidentForbidden(
            f"{actor.get_username()} may not {what} emergency contacts ({permission})"
        )


def _audit_data(contact: EmergencyContact) -> dict[str, Any]:
    return {
        "name": contact.name,
        "role": contact.role,
        "phone": contact.phone,
        "email": contact.email,
        "escalation_order": contact.escalation_order,
        "active": contact.active,
    }


def contact_create(
    *, actor: AbstractBaseUser, data: dict[str, Any], ip_address: str | None = None
) -> EmergencyContact:
    _require(actor, "journal.add_emergencycontact")
    fields = contact_fields_clean(data)
    with transaction.atomic():
        contact = EmergencyContact()
        _save(contact, fields)
        escalation_channel_sync()
        audit_record(
            action="contact_create",
            actor=actor,
            target=contact,
            ip_address=ip_address,
            data=_audit_data(contact),
        )
    return contact


def contact_update(
    *,
    contact: EmergencyContact,
    actor: AbstractBaseUser,
    data: dict[str, Any],
    ip_address: str | None = None,
) -> EmergencyContact:
    _require(actor, "journal.change_emergencycontact")
    fields = contact_fields_clean(data)
    with transaction.atomic():
        before = _audit_data(contact)
        _save(contact, fields)
        escalation_channel_sync()
        audit_record(
            action="contact_update",
            actor=actor,
            target=contact,
            ip_address=ip_address,
            data={"before": before, "after": _audit_data(contact)},
        )
    return contact


def contact_delete(
    *, contact: EmergencyContact, actor: AbstractBaseUser, ip_address: str | None = None
) -> None:
    _require(actor, "journal.delete_emergencycontact")
    with transaction.atomic():
        data = _audit_data(contact)
        audit_record(
            action="contact_delete",
            actor=actor,
            target=contact,
            ip_address=ip_address,
            data=data,
        )
        contact.delete()
        escalation_channel_sync()
