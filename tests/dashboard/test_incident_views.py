"""What the pages say during an incident: each state's cause, the fleet kill banner, kill scopes."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client

from controlplane.commands import issuing, resume
from controlplane.ingest.store import ingest_events
from controlplane.models import Engine, ResumeRequest
from dashboard import overview
from engine_sdk import protocol as p

pytestmark = pytest.mark.django_db

MakeEngine = Callable[..., tuple[Engine, str]]


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response: object) -> str:
    return html.unescape(response.content.decode())  # type: ignore[attr-defined]


def row_of(name: str) -> overview.FleetRow:
    (row,) = [r for r in overview.fleet_rows() if r.name == name]
    return row


def test_a_paused_engine_row_says_who_paused_it_when_and_why(
    make_engine: MakeEngine, operator: User
) -> None:
    make_engine("alpha")
    batch = issuing.command_issue(
        kind="pause", selector="engine:alpha", reason="earnings call", actor=operator
    )

    row = row_of("alpha")

    assert (row.cause_kind, row.cause_by, row.cause_reason) == (
        "pause",
        "otto-operator",
        "earnings call",
    )
    assert row.cause_at == batch.created_at.astimezone(UTC).isoformat()
    assert row.cause_batch == str(batch.pk)
    assert row.cause_title.startswith("PAUSED by otto-operator (pause) at ")
    assert row.cause_title.endswith(" UTC: earnings call")


def test_a_kill_by_a_risk_limit_is_the_cause_until_a_later_command_changes_the_state(
    make_engine: MakeEngine, risk_manager: User, second_risk_manager: User
) -> None:
    engine, _ = make_engine("alpha")
    issuing.command_issue(
        kind="kill",
        selector="engine:alpha",
        reason="daily loss 5,200 beyond 5,000",
        actor=None,
        actor_label="limit #3 max_daily_loss",
    )
    # Commands that leave the state as it is (a cancel) do not take the cause over.
    issuing.command_issue(
        kind="cancel_all", selector="engine:alpha", reason="sweep", actor=risk_manager
    )
    assert (row_of("alpha").cause_by, row_of("alpha").cause_reason) == (
        "limit #3 max_daily_loss",
        "daily loss 5,200 beyond 5,000",
    )

    request = resume.resume_request_create(engine=engine, reason="fixed", actor=risk_manager)
    resume.resume_request_approve(
        resume_request=ResumeRequest.objects.get(pk=request.pk), actor=second_risk_manager
    )

    row = row_of("alpha")
    assert row.desired_state == "ACTIVE"
    assert row.cause_kind == "resume" and row.cause_by == "rex-risk"


def test_a_state_changed_without_a_command_shows_no_stale_cause(
    make_engine: MakeEngine, operator: User
) -> None:
    make_engine("alpha")
    issuing.command_issue(kind="pause", selector="engine:alpha", reason="r", actor=operator)
    # As a timed pause running out would leave it: ACTIVE again, not by the pause.
    Engine.objects.filter(name="alpha").update(
        desired_state="ACTIVE", desired_changed_at=datetime.now(UTC)
    )

    row = row_of("alpha")

    assert row.cause_by == "" and row.cause_title == ""


def test_a_timed_pause_that_ran_out_is_no_longer_the_cause(
    make_engine: MakeEngine, operator: User
) -> None:
    make_engine("alpha")
    issuing.command_issue(
        kind="pause",
        selector="engine:alpha",
        reason="r",
        actor=operator,
        params={"duration": 60},
    )
    assert row_of("alpha").cause_by == "otto-operator"
    Engine.objects.filter(name="alpha").update(desired_until=datetime.now(UTC))

    assert row_of("alpha").cause_by == ""


def test_the_engines_own_reason_for_pausing_itself_is_shown_until_it_reports_another_state(
    make_engine: MakeEngine,
) -> None:
    engine, _ = make_engine("alpha")
    at = datetime.now(UTC)
    ingest_events(
        engine_id=engine.pk,
        events=[
            p.StateEvent(
                seq=1, ts=at, trading_state="PAUSED", reason="dead-man: no server for 15 s"
            )
        ],
    )

    row = row_of("alpha")
    assert (row.cause_by, row.cause_reason) == ("engine", "dead-man: no server for 15 s")
    assert row.engine_reason == "dead-man: no server for 15 s"
    assert row.cause_at == at.isoformat()
    assert "The engine reports PAUSED since" in row.cause_title

    # A heartbeat says ACTIVE without a reason: the dead-man's is not the reason for that.
    Engine.objects.filter(pk=engine.pk).update(reported_state="ACTIVE")
    row = row_of("alpha")
    assert row.cause_by == "" and row.engine_reason == ""


def test_the_fleet_row_and_the_engine_page_show_the_cause(
    make_engine: MakeEngine, operator: User, viewer: User
) -> None:
    make_engine("alpha")
    issuing.command_issue(
        kind="pause", selector="engine:alpha", reason="earnings <call>", actor=operator
    )

    fleet = client_for(viewer).get("/").content.decode()
    row = re.search(r'<tr data-engine="alpha".*?</tr>', fleet, re.S).group(0)  # type: ignore[union-attr]
    assert '<span class="cause-by">by otto-operator</span>' in row
    assert '<span class="cause-why">earnings &lt;call&gt;</span>' in row
    assert 'title="PAUSED by otto-operator (pause) at ' in row
    page = client_for(viewer).get("/engines/alpha/").content.decode()
    cause = re.search(r'<span id="state-cause">.*?</span></span>', page, re.S).group(0)  # type: ignore[union-attr]
    assert "by otto-operator" in cause and "earnings &lt;call&gt;" in cause


def test_a_fleet_kill_shows_a_banner_on_every_page_until_every_engine_is_released(
    make_engine: MakeEngine, risk_manager: User, second_risk_manager: User, viewer: User
) -> None:
    for name in ("alpha", "bravo"):
        make_engine(name)
    client = client_for(viewer)
    assert 'id="fleet-kill-banner"' not in client.get("/").content.decode()
    # A kill of one engine is not a fleet kill.
    issuing.command_issue(
        kind="kill", selector="engine:alpha", reason="one", actor=risk_manager, confirmation="alpha"
    )
    assert 'id="fleet-kill-banner"' not in client.get("/").content.decode()

    issuing.command_issue(
        kind="kill",
        selector="all",
        reason="exchange outage",
        actor=risk_manager,
        confirmation="KILL ALL",
    )

    for url in ("/", "/engines/alpha/", "/alerts/", "/audit/"):
        page = text(client.get(url))
        banner = re.search(r'<div class="fleet-kill-banner".*?</div>', page, re.S)
        assert banner, url
        assert 'Fleet kill</strong> by <span class="who">rita-risk</span>' in banner.group(0)
        assert '<span class="why">exchange outage</span>' in banner.group(0)
        assert "2 engines still HALTED by it" in banner.group(0)

    for name in ("alpha", "bravo"):
        request = resume.resume_request_create(
            engine=Engine.objects.get(name=name), reason="venue back", actor=risk_manager
        )
        resume.resume_request_approve(resume_request=request, actor=second_risk_manager)
        page = text(client.get("/"))
        still = name == "alpha"
        assert ('id="fleet-kill-banner"' in page) is still, name
    assert "1 engine still HALTED" not in text(client.get("/alerts/"))


def test_the_kill_scope_counts_the_engines_and_their_gross_exposure(
    make_engine: MakeEngine, viewer: User, outsider: User, risk_manager: User
) -> None:
    alpha, _ = make_engine("alpha", mode="live")
    bravo, _ = make_engine("bravo", mode="paper")
    make_engine("charlie", mode="live")
    now = datetime.now(UTC)
    for engine, quantity, price in ((alpha, 100, "200"), (bravo, -50, "400")):
        symbol, side = ("AAPL", "buy") if quantity > 0 else ("MSFT", "sell")
        ingest_events(
            engine_id=engine.pk,
            events=[
                p.OrderEvent(
                    seq=1,
                    ts=now,
                    client_order_id="o",
                    symbol=symbol,
                    side=side,
                    order_type="market",
                    quantity=Decimal(abs(quantity)),
                    status="filled",
                ),
                p.FillEvent(
                    seq=2,
                    ts=now,
                    fill_id="f",
                    client_order_id="o",
                    symbol=symbol,
                    side=side,
                    quantity=Decimal(abs(quantity)),
                    price=Decimal(price),
                ),
            ],
        )
    issuing.command_issue(
        kind="kill",
        selector="engine:charlie",
        reason="r",
        actor=risk_manager,
        confirmation="charlie",
    )
    client = client_for(viewer)

    every = client.get("/commands/kill-scope/", {"selector": "all"}).json()
    assert every == {
        "selector": "all",
        "engines": 3,
        "halted_already": 1,
        "gross_exposure": 40_000.0,
        "gross_exposure_text": "40,000",
    }
    live = client.get("/commands/kill-scope/", {"selector": "live"}).json()
    assert (live["engines"], live["gross_exposure"]) == (2, 20_000.0)
    one = client.get("/commands/kill-scope/", {"selector": "engine:bravo"}).json()
    assert (one["engines"], one["gross_exposure_text"]) == (1, "20,000")

    bad = client.get("/commands/kill-scope/", {"selector": "everything"})
    assert bad.status_code == 400
    assert "unknown selector 'everything'" in bad.json()["errors"]["selector"][0]
    assert client_for(outsider).get("/commands/kill-scope/?selector=all").status_code == 403
