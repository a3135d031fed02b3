from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path

from alerts import prometheus
from controlplane import api
from controlplane.config import health
from controlplane.gateway import http
from dashboard import live_views
from golive import api as golive_api
from journal import api as journal_api
from journal import incident_api

# The promotions (golive) sit a layer above the core that holds the API: mounted here.
api.api.add_router("/", golive_api.router)
# The operations journal (incidents, contacts, trading log, runbooks, reviews) sits above going
# live: mounted here too.
api.api.add_router("/", incident_api.router)
api.api.add_router("/", journal_api.router)

# A request refused before any view (a body over the size limit) is named on the API too.
handler400 = api.bad_request

admin.site.site_header = "Trading Control Plane"
admin.site.site_title = "Control Plane admin"


@login_not_required
def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    # Browsers ask for /favicon.ico on pages that name no icon (the admin's).
    return HttpResponsePermanentRedirect(static("favicon.svg"))


urlpatterns = [
    path("favicon.ico", favicon, name="favicon"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/engine/events", http.post_frame, name="engine-events"),
    path("api/v1/engine/commands", http.get_commands, name="engine-commands"),
    path("api/v1/protocol.schema.json", http.protocol_schema_json, name="protocol-schema"),
    path("api/v1/", api.urls()),
    path("live/fleet.json", live_views.fleet_snapshot, name="live-fleet"),
    path("live/readiness.json", live_views.fleet_readiness, name="live-readiness"),
    path("live/engines/<slug:name>.json", live_views.engine_snapshot, name="live-engine"),
    path("risk/", include("risk.urls")),
    path("alerts/", include("alerts.urls")),
    path("reports/", include("dashboard.reports.urls")),
    # The journal: incidents/, contacts/, log/, runbooks/, reviews/.
    path("", include("journal.urls")),
    path("metrics", prometheus.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include("dashboard.urls")),
]
