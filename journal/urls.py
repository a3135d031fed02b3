from __future__ import annotations

from django.urls import path

from journal import incident_views, views

app_name = "journal"

urlpatterns = [
    # Incidents and emergency contacts (journal.incident_views).
    path("incidents/", incident_views.incident_list, name="incidents"),
    path("incidents/open/", incident_views.incident_open, name="incident_open"),
    path("incidents/<int:incident_id>/", incident_views.incident_detail, name="incident"),
    path(
        "incidents/<int:incident_id>/steps/<slug:step>/",
        incident_views.incident_step_tick,
        name="incident_step",
    ),
    path(
        "incidents/<int:incident_id>/postmortem/",
        incident_views.incident_postmortem,
        name="incident_postmortem",
    ),
    path(
        "incidents/<int:incident_id>/close/", incident_views.incident_close, name="incident_close"
    ),
    path("contacts/", incident_views.contact_list, name="contacts"),
    path("contacts/add/", incident_views.contact_create, name="contact_add"),
    path("contacts/<int:contact_id>/", incident_views.contact_update, name="contact_update"),
    path("contacts/<int:contact_id>/delete/", incident_views.contact_delete, name="contact_delete"),
    # The trading log, runbooks and reviews (journal.views).
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
