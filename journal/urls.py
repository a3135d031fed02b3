from __future__ import annotations

from django.urls import path

from journal import views

app_name = "journal"

urlpatterns = [
    path("log/", views.log_today, name="log"),
    path("log/search/", views.log_search, name="log_search"),
    path("log/export.csv", views.log_export, name="log_export"),
    path("log/<str:day>/", views.log_day, name="log_day"),
    path("runbooks/", views.runbook_list, name="runbooks"),
    path("runbooks/new/", views.runbook_edit, name="runbook_new"),
    path("runbooks/<slug:slug>/", views.runbook_detail, name="runbook"),
    path("runbooks/<slug:slug>/edit/", views.runbook_edit, name="runbook_edit"),
    path("runbooks/<slug:slug>/links/", views.runbook_links, name="runbook_links"),
    path("reviews/", views.review_list, name="reviews"),
    path("reviews/<str:period>/<str:start>/", views.review_detail, name="review"),
]
