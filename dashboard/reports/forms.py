"""Forms of the reports: a user's report settings, and a baseline with its equity-curve CSV."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from dashboard.models import Baseline, Profile
from dashboard.reports.baselines import parse_equity_curve_csv

MAX_CSV_BYTES = 5 * 1024 * 1024


class ProfileForm(forms.ModelForm):
    class Meta:
        model = Profile
        fields = ["weekly_report", "timezone"]
        labels = {"weekly_report": "E-mail me the weekly report (Mondays)"}


class BaselineForm(forms.ModelForm):
    equity_curve_csv = forms.FileField(
        required=False,
        label="Equity curve (CSV)",
        help_text="Header 'ts,equity', then one row per point, oldest first; ts is a date or an "
        "ISO 8601 timestamp (UTC when it has no offset). Replaces the stored curve.",
    )
    clear_equity_curve = forms.BooleanField(required=False, label="Remove the stored curve")

    class Meta:
        model = Baseline
        fields = [
            "engine",
            "name",
            "expected_annual_return_pct",
            "sharpe",
            "trades_per_day",
            "win_rate_pct",
            "gross_profit",
            "gross_loss",
            "tolerance_pct",
            "notes",
        ]

    def clean_equity_curve_csv(self) -> list[list[str]] | None:
        upload = self.cleaned_data.get("equity_curve_csv")
        if not upload:
            return None
        if upload.size > MAX_CSV_BYTES:
            raise ValidationError(f"The file is larger than {MAX_CSV_BYTES // 1024 // 1024} MB.")
        raw = upload.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"The file is not UTF-8 text (byte {exc.start}).") from None
        return parse_equity_curve_csv(text)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        curve = cleaned.get("equity_curve_csv")
        if curve is not None:
            self.instance.equity_curve = curve
        elif cleaned.get("clear_equity_curve"):
            self.instance.equity_curve = []
        return cleaned
