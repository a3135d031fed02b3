from __future__ import annotations

from django.urls import path, re_path

from dashboard import report_views

app_name = "reports"

urlpatterns = [
    path("", report_views.latest, name="latest"),
    path("settings/", report_views.report_settings, name="settings"),
    re_path(r"^(?P<week>\d{4}-W\d{2})/$", report_views.week, name="week"),
    re_path(r"^(?P<week>\d{4}-W\d{2})\.csv$", report_views.week_csv, name="week_csv"),
    # Anything else that looks like a week gets a 404 that says how to write one.
    re_path(r"^(?P<week>[^/]+?)(?:/|\.csv)$", report_views.bad_week, name="bad_week"),
]
