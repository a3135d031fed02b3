"""Deactivating an engine in the admin: its token is refused from then on (closing its open
sockets at once is tested with real sockets in tests/gateway/test_isolation.py)."""

from __future__ import annotations

import pytest

from controlplane.gateway.session import engine_by_token
from controlplane.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_the_admin_action_deactivates_only_the_selected_engines_and_audits_it(
    client, admin_user, make_engine, django_capture_on_commit_callbacks
):
    alpha, alpha_token = make_engine("alpha")
    beta, beta_token = make_engine("beta")
    client.force_login(admin_user)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            "/admin/controlplane/engine/",
            {"action": "deactivate", "_selected_action": [alpha.pk]},
        )

    assert response.status_code == 302
    assert len(callbacks) == 1  # the message that closes alpha's sockets, sent after commit
    assert engine_by_token(alpha_token) is None
    assert engine_by_token(beta_token) == beta
    audit = AuditEvent.objects.get(action="engine_deactivate")
    assert (audit.actor, audit.target_id) == (admin_user.username, str(alpha.pk))
