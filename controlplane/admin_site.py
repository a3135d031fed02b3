"""The admin site: open to staff, and to the roles whose work is done there.

Risk managers set risk limits in the admin (docs/risk.md). Being put in the ``risk_manager`` group
is what makes someone a risk manager; the admin must not also wait for an ``is_staff`` flag that
nobody remembers to tick, or the Risk page's "Edit limits in the admin" leads to a login page.
What each person sees and changes there is still decided by their model permissions.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest

# A permission that admits its holder to the admin without is_staff.
ADMIN_ENTRY_PERMISSIONS = ("risk.change_risklimit",)


class ControlPlaneAdminSite(admin.AdminSite):
    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        if not user.is_active:
            return False
        return user.is_staff or any(user.has_perm(p) for p in ADMIN_ENTRY_PERMISSIONS)


class ControlPlaneAdminConfig(AdminConfig):
    default_site = "controlplane.admin_site.ControlPlaneAdminSite"
