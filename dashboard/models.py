"""Reports: who wants the weekly report and in which timezone, backtest baselines, deliveries."""

from __future__ import annotations

import math
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(
            "%(value)r is not an IANA timezone name (for example Europe/London or UTC).",
            params={"value": value},
            code="invalid_timezone",
        )


def default_timezone() -> str:
    return settings.REPORT_TIMEZONE


class Profile(models.Model):
    """A user's report preferences; created on first use (``profile_for``)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="report_profile"
    )
    weekly_report = models.BooleanField(
        default=False, help_text="E-mail me the previous week's report every Monday."
    )
    timezone = models.CharField(
        max_length=64,
        default=default_timezone,
        validators=[validate_timezone],
        help_text="IANA name, e.g. Europe/London: report weeks and days start at midnight here.",
    )

    def __str__(self) -> str:
        return f"profile of {self.user}"


def profile_for(user: object) -> Profile:
    profile, _ = Profile.objects.get_or_create(user=user)
    return profile


class Baseline(models.Model):
    """What the engine's backtest said it would do; live figures are compared against it."""

    engine = models.OneToOneField(
        "controlplane.Engine", on_delete=models.CASCADE, related_name="baseline"
    )
    name = models.CharField(max_length=128, help_text="Which backtest, e.g. 'bt 2026-10 v3'.")
    expected_annual_return_pct = models.FloatField(
        null=True,
        blank=True,
        help_text="Blank: derived from the uploaded equity curve, if there is one.",
    )
    sharpe = models.FloatField(null=True, blank=True)
    trades_per_day = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Fills per weekday.",
    )
    win_rate_pct = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0), MaxValueValidator(100)]
    )
    # The backtest's trades summed: what the winners made and what the losers lost (a positive
    # amount); the profit factor is their ratio (golive's "baseline profit factor").
    gross_profit = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Sum of the winning trades' P&L in the backtest (account currency).",
    )
    gross_loss = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Sum of the losing trades' losses, as a positive amount. Profit factor = "
        "gross profit / gross loss.",
    )
    tolerance_pct = models.FloatField(
        default=20.0,
        validators=[MinValueValidator(0)],
        help_text="A relative divergence above this is flagged (and alertable).",
    )
    # [[ISO timestamp, equity], ...], oldest first, as validated from the uploaded CSV.
    equity_curve = models.JSONField(default=list, blank=True, editable=False)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["engine__name"]

    def __str__(self) -> str:
        return f"{self.engine} baseline {self.name}"

    def clean(self) -> None:
        errors = {}
        if (self.gross_profit is None) != (self.gross_loss is None):
            missing = "gross_loss" if self.gross_loss is None else "gross_profit"
            errors[missing] = (
                "Give gross profit and gross loss together (their ratio is the profit factor)."
            )
        elif self.gross_loss is not None and self.gross_loss <= 0:
            errors["gross_loss"] = (
                "A backtest with no loss has no profit factor: check its trades, or leave both "
                "gross figures blank."
            )
        for name in ("gross_profit", "gross_loss"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                errors[name] = "Must be a finite number."
        if errors:
            raise ValidationError(errors)

    @property
    def profit_factor(self) -> float | None:
        """Gross profit over gross loss; None unless both are known and the loss is above 0."""
        if self.gross_profit is None or not self.gross_loss:
            return None
        return self.gross_profit / self.gross_loss


class ReportDelivery(models.Model):
    """One user's report for one ISO week: claimed by a conditional update, so it is sent once."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        SENT = "sent"
        FAILED = "failed"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="report_deliveries"
    )
    week = models.CharField(max_length=8, help_text='ISO week, e.g. "2026-W47".')
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="The last failed attempt's error.")
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-week", "user"]
        verbose_name_plural = "report deliveries"
        constraints = [
            models.UniqueConstraint(fields=["user", "week"], name="report_delivery_once"),
            models.CheckConstraint(
                condition=~Q(status="sent") | Q(sent_at__isnull=False),
                name="report_delivery_sent_has_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.week} to {self.user} ({self.status})"
