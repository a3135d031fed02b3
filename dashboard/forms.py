"""The dashboard's forms: they parse what a person typed into what the services take."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from controlplane.models import CommandKind

# What a person may issue from the pages; set_limits is the control plane's own.
ISSUABLE_KINDS = [
    (CommandKind.PAUSE, "pause"),
    (CommandKind.RESUME, "resume"),
    (CommandKind.REDUCE, "reduce"),
    (CommandKind.CANCEL_ALL, "cancel all orders"),
    (CommandKind.FLATTEN, "flatten"),
    (CommandKind.KILL, "kill"),
]


class CommandForm(forms.Form):
    """One form for every kind: each dialog posts the fields its kind uses."""

    kind = forms.ChoiceField(choices=ISSUABLE_KINDS)
    selector = forms.CharField(max_length=128)
    reason = forms.CharField(max_length=2000, required=False)
    # pause
    duration_min = forms.IntegerField(required=False, min_value=1, max_value=7 * 24 * 60)
    cancel_open = forms.BooleanField(required=False)
    # reduce
    target_pct = forms.FloatField(required=False)
    # reduce, flatten, cancel_all: comma or space separated; empty means every symbol
    symbols = forms.CharField(max_length=2000, required=False)
    # kill
    flatten = forms.BooleanField(required=False)
    confirm = forms.CharField(max_length=128, required=False, strip=True)

    def params(self) -> dict[str, Any]:
        """The command's parameters in the service's terms; the service validates them."""
        data = self.cleaned_data
        kind = data["kind"]
        params: dict[str, Any] = {}
        if kind == CommandKind.PAUSE:
            if data["duration_min"]:
                params["duration"] = data["duration_min"] * 60
            params["cancel_open"] = data["cancel_open"]
        elif kind == CommandKind.REDUCE:
            params["target_pct"] = data["target_pct"]
        elif kind == CommandKind.KILL:
            params["flatten"] = data["flatten"]
        if kind in (CommandKind.REDUCE, CommandKind.FLATTEN, CommandKind.CANCEL_ALL):
            symbols = data["symbols"].replace(",", " ").split()
            if symbols:
                params["symbols"] = symbols
        return params


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False)


class PromotionDecisionForm(ReasonForm):
    # Approve although the gate fails or is not known; the reason is then required.
    override = forms.BooleanField(required=False)


OUTCOMES = ["ok", "refused", "succeeded", "partial", "failed"]


class AuditFilterForm(forms.Form):
    actor = forms.CharField(max_length=150, required=False)
    action = forms.ChoiceField(required=False)
    outcome = forms.ChoiceField(
        required=False, choices=[("", "any outcome")] + [(o, o) for o in OUTCOMES]
    )
    target = forms.CharField(max_length=200, required=False)
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args: Any, actions: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [("", "any action")] + [(a, a) for a in actions]  # type: ignore[attr-defined]

    def filters(self) -> dict[str, Any]:
        """Keyword arguments for the audit selector; the dates bound whole days."""
        data = self.cleaned_data
        tz = timezone.get_current_timezone()
        since = until = None
        if data.get("date_from"):
            since = datetime.combine(data["date_from"], time.min, tzinfo=tz)
        if data.get("date_to"):
            until = datetime.combine(data["date_to"], time.min, tzinfo=tz) + timedelta(days=1)
        return {
            "actor": data.get("actor") or None,
            "action": data.get("action") or None,
            "outcome": data.get("outcome") or None,
            "target": data.get("target") or None,
            "since": since,
            "until": until,
        }
