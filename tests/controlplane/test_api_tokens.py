from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from controlplane.models import ApiToken, AuditEvent, hash_token

pytestmark = pytest.mark.django_db


def create(*args: str) -> str:
    out = StringIO()
    call_command("create_api_token", *args, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def test_a_token_is_printed_once_stored_hashed_and_acts_as_its_user(viewer):
    token = create("vera-viewer", "--name", "grafana")

    stored = ApiToken.objects.get(user=viewer)
    assert token.startswith("cpu_") and stored.token_hash == hash_token(token)
    assert token not in str(ApiToken.objects.values().get())
    assert AuditEvent.objects.filter(action="api_token_create").exists()
    response = Client(headers={"Authorization": f"Bearer {token}"}).get("/api/v1/engines")
    assert response.status_code == 200
    stored.refresh_from_db()
    assert stored.last_used_at is not None


def test_an_expired_token_or_an_inactive_user_is_refused(viewer):
    token = create("vera-viewer", "--days", "1")
    client = Client(headers={"Authorization": f"Bearer {token}"})
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/v1/engines").status_code == 401

    ApiToken.objects.update(expires_at=None)
    viewer.is_active = False
    viewer.save()
    assert client.get("/api/v1/engines").status_code == 401


def test_bad_input_is_refused_with_a_clear_message_and_nothing_changes(viewer):
    create("vera-viewer", "--name", "ci")
    with pytest.raises(CommandError, match="No active user 'nobody'"):
        create("nobody")
    with pytest.raises(CommandError, match="--days must be at least 1"):
        create("vera-viewer", "--days", "0")
    with pytest.raises(CommandError, match="already exists"):
        create("vera-viewer", "--name", "ci")
    assert ApiToken.objects.count() == 1
