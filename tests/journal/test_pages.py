"""Each journal page answers its readers, and a writer's form only those who may write."""

from __future__ import annotations

import pytest
from django.test import Client

from journal.models import ReviewSchedule

pytestmark = pytest.mark.django_db

PAGES = [
    "/log/search/?q=x",
    "/runbooks/",
    "/runbooks/unexpected-loss/",
    "/reviews/",
    "/reviews/?period=weekly",
    "/reviews/daily/2026-11-02/",
    "/reviews/monthly/2026-10-01/",
]


def test_every_page_answers_a_viewer_and_none_an_outsider(viewer, outsider):
    ReviewSchedule.objects.update(starts_on="2026-11-02")
    reader, stranger = Client(), Client()
    reader.force_login(viewer)
    stranger.force_login(outsider)

    for path in PAGES:
        assert reader.get(path).status_code == 200, path
        assert stranger.get(path).status_code == 403, path
    assert reader.get("/log/").status_code == 302


def test_the_writers_forms_show_to_those_with_the_right(viewer, risk_manager):
    reader, writer = Client(), Client()
    reader.force_login(viewer)
    writer.force_login(risk_manager)

    assert 'id="edit-runbook"' not in reader.get("/runbooks/strategy-bug/").content.decode()
    assert 'id="edit-runbook"' in writer.get("/runbooks/strategy-bug/").content.decode()
    assert writer.get("/runbooks/strategy-bug/edit/").status_code == 200
    assert writer.get("/runbooks/new/").status_code == 200
    assert reader.get("/runbooks/new/").status_code == 403
    page = writer.get("/reviews/quarterly/2026-07-01/").content.decode()
    assert "Sign off" in page


def test_an_unknown_period_or_a_day_that_starts_none_is_not_found(viewer):
    client = Client()
    client.force_login(viewer)

    assert client.get("/reviews/yearly/2026-01-01/").status_code == 404
    assert client.get("/reviews/weekly/2026-11-03/").status_code == 404  # a Tuesday
    assert client.get("/reviews/daily/not-a-day/").status_code == 404
    assert client.get("/runbooks/nothing-here/").status_code == 404
