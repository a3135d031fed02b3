"""manage.py archive_trades: orders and fills older than N days to gzip'd CSV files, a file a
day; deleted only when asked, and never when the archive fails."""

from __future__ import annotations

import csv
import gzip
from datetime import UTC, datetime
from io import StringIO

import msgspec
import pytest
from django.core.management import CommandError, call_command

from controlplane.ingest.store import ingest_events
from controlplane.models import Fill, Order
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def trades(engine_and_token):
    """Old trades (factories' T0, weeks before today): a filled order with its fill, a cancelled
    one and one still working; and a filled order and its fill of today."""
    engine = engine_and_token[0]
    now = datetime.now(UTC).replace(microsecond=0)
    ingest_events(
        engine_id=engine.pk,
        events=[
            f.order(1, "old-filled", status="filled", filled="10"),
            f.fill(2, "old-fill", "old-filled"),
            f.order(3, "old-cancelled", status="canceled"),
            f.order(4, "old-working"),
            msgspec.structs.replace(f.order(5, "new", status="filled", filled="10"), ts=now),
            msgspec.structs.replace(f.fill(6, "new-fill", "new"), ts=now),
        ],
    )
    return engine


def _archive(tmp_path, *args: str) -> str:
    out = StringIO()
    call_command("archive_trades", "--dir", str(tmp_path), *args, stdout=out)
    return out.getvalue()


def _archived(tmp_path, table: str) -> list[str]:
    rows = []
    for path in sorted((tmp_path / table).glob("*.csv.gz")):
        with gzip.open(path, "rt", newline="") as text:
            rows += list(csv.DictReader(text))
    return rows


def test_old_orders_and_fills_are_archived_a_file_a_day_and_kept(trades, tmp_path):
    out = _archive(tmp_path, "--older-than", "7")

    assert "Nothing deleted." in out
    day = f.T0.date()
    assert [p.name for p in (tmp_path / "controlplane_fill").iterdir()] == [f"{day}.csv.gz"]
    assert [r["fill_id"] for r in _archived(tmp_path, "controlplane_fill")] == ["old-fill"]
    assert sorted(r["client_order_id"] for r in _archived(tmp_path, "controlplane_order")) == [
        "old-cancelled",
        "old-filled",
        "old-working",
    ]
    assert Order.objects.count() == 4
    assert Fill.objects.count() == 2


def test_delete_removes_the_archived_fills_and_finished_orders_only(trades, tmp_path):
    _archive(tmp_path, "--older-than", "7", "--delete")

    assert list(Fill.objects.values_list("fill_id", flat=True)) == ["new-fill"]
    assert sorted(Order.objects.values_list("client_order_id", flat=True)) == [
        "new",
        "old-working",
    ]
    assert [r["fill_id"] for r in _archived(tmp_path, "controlplane_fill")] == ["old-fill"]


@pytest.mark.parametrize("days", ["0", "-3", "seven", "1.5"])
def test_a_bad_age_is_refused_by_name_and_nothing_is_written(trades, tmp_path, days):
    with pytest.raises(CommandError, match="--older-than"):
        _archive(tmp_path, "--older-than", days, "--delete")
    assert not any(tmp_path.iterdir())
    assert (Order.objects.count(), Fill.objects.count()) == (4, 2)


def test_an_archive_that_cannot_be_written_deletes_nothing(trades, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(CommandError, match="nothing was deleted"):
        call_command("archive_trades", "--dir", str(blocked), "--older-than", "7", "--delete")
    assert (Order.objects.count(), Fill.objects.count()) == (4, 2)
