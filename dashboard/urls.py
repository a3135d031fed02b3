from __future__ import annotations

from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.fleet, name="fleet"),
    path("commands/", views.command_issue, name="command_issue"),
    path("commands/kill-scope/", views.kill_scope, name="kill_scope"),
    path("commands/batches/<uuid:batch_id>/", views.batch, name="batch"),
    path("commands/resume-requests/", views.resume_requests, name="resume_requests"),
    path(
        "commands/resume-requests/<int:request_id>/approve/",
        views.resume_request_approve,
        name="resume_request_approve",
    ),
    path(
        "commands/resume-requests/<int:request_id>/reject/",
        views.resume_request_reject,
        name="resume_request_reject",
    ),
    path("engines/<slug:name>/", views.engine, name="engine"),
    path("engines/<slug:name>/commands/", views.engine_commands, name="engine_commands"),
    path("engines/<slug:name>/go-live/", views.engine_golive, name="engine_golive"),
    path(
        "engines/<slug:name>/go-live/kill-drill/",
        views.kill_drill_start,
        name="kill_drill_start",
    ),
    path(
        "engines/<slug:name>/go-live/promotion/",
        views.promotion_request,
        name="promotion_request",
    ),
    path(
        "engines/<slug:name>/go-live/divergence/<int:day_id>/note/",
        views.divergence_note,
        name="divergence_note",
    ),
    path(
        "engines/<slug:name>/go-live/target-capital/",
        views.target_capital,
        name="target_capital",
    ),
    path(
        "go-live/promotions/<int:request_id>/<str:decision>/",
        views.promotion_decide,
        name="promotion_decide",
    ),
    path(
        "engines/<slug:name>/resume-requests/",
        views.resume_request_create,
        name="resume_request_create",
    ),
    path("audit/", views.audit, name="audit"),
]
