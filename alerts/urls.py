from __future__ import annotations

from django.urls import path

from alerts import views

app_name = "alerts"

urlpatterns = [
    path("", views.alert_list, name="list"),
    path("firing.json", views.firing, name="firing"),
    path("<int:alert_id>/acknowledge/", views.acknowledge, name="acknowledge"),
    path("<int:alert_id>/explain/", views.explain, name="explain"),
    path("silences/", views.silence, name="silence"),
]
