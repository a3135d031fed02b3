"""Reviews: which are owed and when they are due (midnight in the desk's time zone), the checks
the data answers (a hand-worked P&L z-score, positions, orders, errors), the sign-off's rules and
rights, the API, and overdue reviews on the fleet overview."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client, override_settings

from controlplane.models import AccountSnapshot, AuditEvent, EngineLog, Instrument, Order, Position
from journal import reviews
from journal.models import Review, ReviewSchedule
from tests.controlplane.test_api import token_client

pytestmark = pytest.mark.django_db

MONDAY = date(2026, 11, 2)
THURSDAY_NOON = datetime(2026, 11, 5, 12, tzinfo=UTC)


@pytest.fixture
def schedule_from_monday():
    ReviewSchedule.objects.update(starts_on=MONDAY)


def post(client: Client, path: str, body: dict) -> tuple[int, dict]:
    response = client.post(path, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


def test_a_daily_review_is_due_at_the_midnight_after_the_next_day(schedule_from_monday):
    owed = {(o.period, o.start): o for o in reviews.owed(THURSDAY_NOON)}

    # Monday to Wednesday are over; the week, month and quarter are not.
    assert sorted(owed) == [("daily", MONDAY + timedelta(days=d)) for d in range(3)]
    assert owed["daily", MONDAY].due_at == datetime(2026, 11, 4, tzinfo=UTC)
    late = reviews.overdue(THURSDAY_NOON)
    assert [o.start for o in late] == [MONDAY, MONDAY + timedelta(days=1)]


@override_settings(OPERATOR_TIME_ZONE="America/New_York")
def test_due_times_are_midnight_in_the_desks_time_zone(schedule_from_monday):
    [monday] = [o for o in reviews.owed(THURSDAY_NOON) if o.start == MONDAY]

    assert monday.due_at == datetime(2026, 11, 4, 5, tzinfo=UTC)  # 00:00 EST


def test_weekends_owe_no_daily_review_and_weeks_months_quarters_are_owed_once_over():
    ReviewSchedule.objects.update(starts_on=date(2026, 9, 28))
    owed = reviews.owed(datetime(2026, 10, 6, 12, tzinfo=UTC))
    kinds = {(o.period, o.start) for o in owed}

    assert ("daily", date(2026, 10, 3)) not in kinds  # a Saturday
    assert ("weekly", date(2026, 9, 28)) in kinds
    assert ("monthly", date(2026, 9, 1)) in kinds
    assert ("quarterly", date(2026, 7, 1)) in kinds
    assert reviews.period_end("quarterly", date(2026, 10, 1)) == date(2026, 12, 31)
    assert reviews.period_end("monthly", date(2026, 12, 1)) == date(2026, 12, 31)


def _equity(engine, day: date, equity: int, seq: int) -> None:
    AccountSnapshot.objects.create(
        engine=engine,
        ts=datetime(day.year, day.month, day.day, 20, tzinfo=UTC),
        equity=equity,
        cash=equity,
        seq=seq,
    )


def test_the_pnl_check_is_a_zscore_against_the_30_days_before(make_engine):
    engine, _ = make_engine("alpha", mode="paper")
    day = date(2026, 11, 10)
    # 32 and 31 days before: 9000 then 1000, a P&L of -8000 outside the 30 days (it would swamp
    # the mean if counted); the 31st day's close is where the 30 days start from.
    _equity(engine, day - timedelta(days=32), 9000, 100)
    _equity(engine, day - timedelta(days=31), 1000, 101)
    # Then P&L 0, 10, -10, 20, -10, 0 and, on the day, 50. By hand: mean 10 / 6 = 1.6667;
    # squared deviations 2.7778 + 69.4444 + 136.1111 + 336.1111 + 136.1111 + 2.7778 = 683.3333;
    # sample variance / 5 = 136.6667; stdev 11.6905; z = (50 - 1.6667) / 11.6905 = 4.1344.
    closes = [1000, 1010, 1000, 1020, 1010, 1010, 1060]
    for offset, equity in enumerate(closes):
        _equity(engine, day - timedelta(days=len(closes) - 1 - offset), equity, offset + 1)

    pnl, z, days = reviews.pnl_zscore(day)
    status, detail = reviews.check_pnl(day, day)

    assert (pnl, days) == (50.0, 6)
    assert z == pytest.approx(4.1344, abs=1e-4)
    assert status == "fail"
    assert "z = +4.13 against 6 days" in detail
    # A day of +2 is well within: z = (2 - 1.6667) / 11.6905 = 0.03.
    AccountSnapshot.objects.filter(engine=engine, seq=7).update(equity=1012)
    assert reviews.check_pnl(day, day)[0] == "pass"


def test_the_pnl_check_is_unknown_without_enough_history(make_engine):
    engine, _ = make_engine("alpha", mode="paper")
    day = date(2026, 11, 10)
    _equity(engine, day - timedelta(days=1), 1000, 1)
    _equity(engine, day, 1010, 2)

    status, detail = reviews.check_pnl(day, day)

    assert status == "unknown" and "at least 5" in detail


def test_positions_orders_and_errors_are_answered_by_the_data(make_engine):
    engine, _ = make_engine("alpha", mode="paper")
    instrument = Instrument.objects.create(symbol="XYZ")
    Position.objects.create(
        engine=engine, instrument=instrument, quantity=10, reported_quantity=-10
    )
    when = datetime(2026, 11, 4, 15, tzinfo=UTC)
    for i, status in enumerate(["filled", "filled", "rejected"]):
        Order.objects.create(
            engine=engine,
            client_order_id=f"o{i}",
            instrument=instrument,
            side="buy",
            order_type="market",
            quantity=1,
            status=status,
            created_at=when,
            updated_at=when,
            last_seq=i,
        )
    EngineLog.objects.create(engine=engine, ts=when, level="critical", message="boom")
    day = date(2026, 11, 4)

    assert reviews.check_positions(day, day) == (
        "fail",
        "1 of 1 differ: alpha XYZ: ledger 10, engine -10",
    )
    assert reviews.check_orders(day, day) == (
        "fail",
        "3 orders: 2 filled, 1 rejected, 0 still working",
    )
    assert reviews.check_errors(day, day) == ("fail", "1 error log lines from the engines")
    assert reviews.check_errors(day + timedelta(days=1), day + timedelta(days=1))[0] == "pass"
    Position.objects.update(reported_quantity=Decimal(10))
    assert reviews.check_positions(day, day)[0] == "pass"


def test_a_sign_off_needs_every_manual_item_ticked_and_a_note_for_a_failing_check(operator):
    now = THURSDAY_NOON
    with pytest.raises(ValidationError) as caught:
        reviews.review_sign_off(period="daily", start=MONDAY, actor=operator, manual={}, now=now)
    assert "Trading log of the day written" in caught.value.message_dict["manual"][0]

    EngineLog.objects.create(
        engine=_engine("beta"),
        ts=datetime(2026, 11, 2, 9, tzinfo=UTC),
        level="error",
        message="x",
    )
    with pytest.raises(ValidationError) as caught:
        reviews.review_sign_off(
            period="daily", start=MONDAY, actor=operator, manual={"log": True}, now=now
        )
    assert "No errors" in caught.value.message_dict["note"][0]
    assert not Review.objects.exists()

    review = reviews.review_sign_off(
        period="daily",
        start=MONDAY,
        actor=operator,
        manual={"log": True},
        note="restarted beta",
        now=now,
    )

    assert review.signed_off_by_label == "otto-operator"
    assert {r["key"]: r["status"] for r in review.results}["errors"] == "fail"
    audit = AuditEvent.objects.get(action="journal.review_sign_off")
    assert (audit.reason, audit.data["failing"], audit.data["late"]) == (
        "restarted beta",
        ["No errors in the engines' logs"],
        True,
    )


def _engine(name: str):
    from controlplane.models import Engine

    return Engine.objects.create(name=name, token_hash=name)


def test_a_period_not_over_or_signed_already_is_refused(operator):
    with pytest.raises(reviews.ReviewRefused, match="not over"):
        reviews.review_sign_off(
            period="daily",
            start=date(2026, 11, 5),
            actor=operator,
            manual={"log": True},
            now=THURSDAY_NOON,
        )
    reviews.review_sign_off(
        period="daily", start=MONDAY, actor=operator, manual={"log": True}, now=THURSDAY_NOON
    )
    with pytest.raises(reviews.ReviewRefused, match="already"):
        reviews.review_sign_off(
            period="daily", start=MONDAY, actor=operator, manual={"log": True}, now=THURSDAY_NOON
        )


def test_an_operator_signs_daily_reviews_but_not_monthly_ones_and_a_viewer_none(operator, viewer):
    manual = {"strategies": True, "regime": True}
    with pytest.raises(PermissionDenied):
        reviews.review_sign_off(
            period="monthly", start=date(2026, 10, 1), actor=operator, manual=manual
        )
    with pytest.raises(PermissionDenied):
        reviews.review_sign_off(period="daily", start=MONDAY, actor=viewer, manual={"log": True})

    client = Client()
    client.force_login(viewer)
    assert client.post(f"/reviews/daily/{MONDAY}/", {"done": "log"}).status_code == 403
    assert not Review.objects.exists()
    status, _ = post(
        token_client(viewer), f"/api/v1/reviews/daily/{MONDAY}/sign-off", {"manual": {"log": True}}
    )
    assert status == 403


def test_the_api_lists_overdue_reviews_and_signs_one_off(schedule_from_monday, operator):
    client = token_client(operator)
    overdue = client.get("/api/v1/reviews?status=overdue&period=daily").json()
    assert MONDAY.isoformat() in [r["start"] for r in overdue]

    detail = client.get(f"/api/v1/reviews/daily/{MONDAY}").json()
    assert {c["key"]: c["computed"] for c in detail["checks"]}["pnl"] is True

    status, body = post(
        client, f"/api/v1/reviews/daily/{MONDAY}/sign-off", {"manual": {"log": True}}
    )
    assert status == 200, body
    assert body["signed_off_by"] == "otto-operator" and body["overdue"] is False
    status, body = post(
        client, f"/api/v1/reviews/daily/{MONDAY}/sign-off", {"manual": {"log": True}}
    )
    assert status == 409
    status, body = post(
        client, f"/api/v1/reviews/daily/{MONDAY}/sign-off", {"manual": {"log": "yes"}}
    )
    assert status == 422
    assert client.get("/api/v1/reviews/daily/2026-11-07").status_code == 404  # a Saturday


def test_the_overview_shows_reviews_not_signed_off_on_time(schedule_from_monday, viewer):
    client = Client()
    client.force_login(viewer)

    page = client.get("/").content.decode()

    assert 'id="overview-reviews-overdue"' in page
    assert f'href="/reviews/daily/{MONDAY}/"' in page


def test_the_openapi_schema_holds_the_journals_operations(viewer):
    paths = token_client(viewer).get("/api/v1/openapi.json").json()["paths"]

    for path in (
        "/api/v1/log",
        "/api/v1/log/{day}",
        "/api/v1/log/{day}/history",
        "/api/v1/runbooks",
        "/api/v1/runbooks/{slug}",
        "/api/v1/runbooks/{slug}/links",
        "/api/v1/reviews",
        "/api/v1/reviews/{period}/{start}",
        "/api/v1/reviews/{period}/{start}/sign-off",
    ):
        assert path in paths, path
    assert set(paths["/api/v1/log/{day}"]) == {"get", "put"}
