from __future__ import annotations

from django.urls import path, re_path

from dashboard.reports import views

app_name = "reports"

urlpatterns = [
    path("", views.latest, name="latest"),
    path("settings/", views.report_settings, name="settings"),
    re_path(r"^(?P<week>\d{4}-W\d{2})/$", views.week, name="week"),
    re_path(r"^(?P<week>\d{4}-W\d{2})\.csv$", views.week_csv, name="week_csv"),
    # Anything else that looks like a week gets a 404 that says how to write one.
    re_path(r"^(?P<week>[^/]+?)(?:/|\.csv)$", views.bad_week, name="bad_week"),
]
