"""The command pages: dialogs' forms, the batch and history pages, four-eyes resumes, the audit."""

from __future__ import annotations

import html
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from controlplane import services
from controlplane.audit import audit_record
from controlplane.commands import errors, issuing, resume
from controlplane.gateway import session
from controlplane.models import AuditEvent, Command, CommandBatch, Engine, ResumeRequest
from engine_sdk import protocol as p

pytestmark = pytest.mark.django_db

ISSUE = reverse("dashboard:command_issue")
RESUME_REQUESTS = reverse("dashboard:resume_requests")
AUDIT = reverse("dashboard:audit")


@pytest.fixture
def fleet(make_engine: Callable[..., tuple[Engine, str]]) -> dict[str, Engine]:
    engines = [
        make_engine("alpha", mode="live", strategy_tags=["momentum"])[0],
        make_engine("beta", mode="live", strategy_tags=["meanrev"])[0],
        make_engine("gamma", mode="paper", strategy_tags=["momentum"])[0],
    ]
    return {e.name: e for e in engines}


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response: object) -> str:
    return html.unescape(response.content.decode())  # type: ignore[attr-defined]


def api_post(user: User, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    """The same command through the API, with a personal token: the page and it must agree."""
    _, token = services.api_token_create(user=user, name=f"script-{uuid.uuid4().hex[:8]}")
    client = Client(headers={"Authorization": f"Bearer {token}"})
    response = client.post("/api/v1/commands", body, content_type="application/json")
    return response.status_code, response.json()


def kill_all(client: Client, **overrides: str) -> object:
    data = {
        "kind": "kill",
        "selector": "all",
        "reason": "desk says stop",
        "flatten": "on",
        "confirm": "KILL ALL",
        "next": "/",
    }
    return client.post(ISSUE, data | overrides, follow=True)


def halt(engine: Engine, actor: User) -> None:
    issuing.command_issue(
        kind="kill",
        selector=f"engine:{engine.name}",
        reason="runaway",
        actor=actor,
        confirmation=engine.name,
    )


# --- kill -----------------------------------------------------------------------------------------


def test_an_operator_cannot_kill_through_the_form(fleet: dict[str, Engine], operator: User) -> None:
    response = kill_all(client_for(operator))

    assert response.status_code == 200  # type: ignore[attr-defined]
    assert "otto-operator may not kill: that needs the issue_kill permission" in text(response)
    assert not Command.objects.exists()
    assert not CommandBatch.objects.exists()
    assert set(Engine.objects.values_list("desired_state", flat=True)) == {"ACTIVE"}
    assert AuditEvent.objects.filter(action="command_kill", outcome="refused").count() == 1


def test_a_viewer_who_may_issue_nothing_is_refused_outright(
    fleet: dict[str, Engine], viewer: User
) -> None:
    response = kill_all(client_for(viewer))

    assert response.status_code == 403  # type: ignore[attr-defined]
    assert not Command.objects.exists()
    assert not CommandBatch.objects.exists()
    assert set(Engine.objects.values_list("desired_state", flat=True)) == {"ACTIVE"}
    assert AuditEvent.objects.filter(action="command_kill", outcome="refused").count() == 1


def test_a_kill_confirmation_that_does_not_match_issues_nothing(
    fleet: dict[str, Engine], risk_manager: User
) -> None:
    response = kill_all(client_for(risk_manager), confirm="kill all")

    assert "Kill not issued: type KILL ALL exactly to confirm a kill of all." in text(response)
    assert not Command.objects.exists()
    assert set(Engine.objects.values_list("desired_state", flat=True)) == {"ACTIVE"}


@pytest.mark.parametrize(
    ("selector", "typed"), [("all", "kill all"), ("engine:alpha", "KILL ALL"), ("live", "")]
)
def test_the_page_and_the_api_refuse_a_wrong_confirmation_with_the_same_words(
    fleet: dict[str, Engine], risk_manager: User, selector: str, typed: str
) -> None:
    expected = issuing.kill_confirmation(selector)
    words = f"type {expected} exactly to confirm a kill of {selector}"

    page = kill_all(client_for(risk_manager), selector=selector, confirm=typed)
    status, body = api_post(
        risk_manager, {"kind": "kill", "selector": selector, "reason": "r", "confirm": typed}
    )

    assert f"Kill not issued: {words}." in text(page)
    assert (status, body["errors"]) == (422, {"confirm": words})
    assert not Command.objects.exists()
    # Mistyped is not refused: nothing of it reaches the audit log, from either.
    assert not AuditEvent.objects.filter(action="command_kill").exists()


def test_a_kill_of_one_engine_is_confirmed_by_its_name_not_by_kill_all(
    fleet: dict[str, Engine], risk_manager: User
) -> None:
    client = client_for(risk_manager)

    refused = kill_all(client, selector="engine:alpha")
    assert "type alpha exactly to confirm a kill of engine:alpha" in text(refused)
    assert not Command.objects.exists()

    kill_all(client, selector="engine:alpha", confirm="alpha")
    assert Command.objects.get().engine.name == "alpha"


def test_a_kill_of_all_makes_one_batch_and_lands_on_its_page(
    fleet: dict[str, Engine], risk_manager: User
) -> None:
    response = kill_all(client_for(risk_manager))

    batch = CommandBatch.objects.get()
    assert response.redirect_chain == [(f"/commands/batches/{batch.pk}/", 302)]  # type: ignore[attr-defined]
    assert batch.commands.count() == 3
    assert {c.params["flatten"] for c in batch.commands.all()} == {True}
    assert set(Engine.objects.values_list("desired_state", flat=True)) == {"HALTED"}
    page = text(response)
    assert "0 of 3 engines halted" in page
    assert "kill issued to all." in page


def test_an_unticked_flatten_box_kills_without_flattening(
    fleet: dict[str, Engine], risk_manager: User
) -> None:
    data = {"kind": "kill", "selector": "engine:beta", "reason": "r", "confirm": "beta"}
    client_for(risk_manager).post(ISSUE, data)

    assert Command.objects.get().params == {"flatten": False}


def test_the_kill_button_is_disabled_for_those_who_may_not_kill(
    fleet: dict[str, Engine], operator: User, risk_manager: User
) -> None:
    operator_page = text(client_for(operator).get("/"))
    assert 'class="kill-all" disabled title="Only risk managers may kill"' in operator_page
    assert 'id="kill-all-dialog"' not in operator_page

    risk_page = text(client_for(risk_manager).get("/"))
    assert 'class="kill-all" data-open-dialog="kill-all-dialog"' in risk_page
    assert 'id="kill-all-dialog"' in risk_page
    assert 'data-expect="KILL ALL"' in risk_page


# --- other commands -------------------------------------------------------------------------------


def test_the_pause_form_creates_a_batch_with_the_duration_in_seconds(
    fleet: dict[str, Engine], operator: User
) -> None:
    data = {
        "kind": "pause",
        "selector": "engine:alpha",
        "duration_min": "15",
        "cancel_open": "on",
        "reason": "earnings call",
    }
    response = client_for(operator).post(ISSUE, data, follow=True)

    batch = CommandBatch.objects.get()
    assert (batch.kind, batch.selector, batch.issued_by_label) == (
        "pause",
        "engine:alpha",
        "otto-operator",
    )
    assert batch.commands.get().params == {"duration": 900, "cancel_open": True}
    assert response.redirect_chain == [(f"/commands/batches/{batch.pk}/", 302)]  # type: ignore[attr-defined]
    assert "0 of 1 engine paused" in text(response)
    alpha = Engine.objects.get(name="alpha")
    assert alpha.desired_state == "PAUSED"
    assert alpha.desired_until is not None


def test_a_pause_of_a_tag_from_the_selection_bar_reaches_each_tagged_engine(
    fleet: dict[str, Engine], operator: User
) -> None:
    data = {"kind": "pause", "selector": "tag:momentum", "reason": "regime change"}
    client_for(operator).post(ISSUE, data)

    batch = CommandBatch.objects.get()
    assert {c.engine.name for c in batch.commands.all()} == {"alpha", "gamma"}
    assert batch.commands.first().params == {"cancel_open": False}  # type: ignore[union-attr]


def test_reduce_and_cancel_take_their_symbols_from_a_comma_separated_field(
    fleet: dict[str, Engine], operator: User
) -> None:
    client = client_for(operator)
    reduce = {"kind": "reduce", "selector": "engine:beta", "target_pct": "25", "reason": "r"}
    client.post(ISSUE, reduce | {"symbols": "MSFT, AAPL"})
    client.post(ISSUE, {"kind": "cancel_all", "selector": "live", "reason": "r"})

    reduced = Command.objects.get(kind="reduce")
    assert reduced.params == {"target_pct": 25.0, "symbols": ["AAPL", "MSFT"]}
    assert {c.params.get("symbols") for c in Command.objects.filter(kind="cancel_all")} == {None}


def test_an_invalid_command_shows_the_message_of_each_field(
    fleet: dict[str, Engine], operator: User
) -> None:
    data = {"kind": "reduce", "selector": "engine:alpha", "target_pct": "150", "reason": "r"}
    response = client_for(operator).post(ISSUE, data | {"next": "/?mode=live"}, follow=True)

    assert response.redirect_chain == [("/?mode=live", 302)]  # type: ignore[attr-defined]
    assert "target_pct: target_pct must be at least 0 and below 100" in text(response)
    assert not Command.objects.exists()

    no_reason = client_for(operator).post(
        ISSUE, data | {"target_pct": "10", "reason": " "}, follow=True
    )
    assert "reason: say why: a command without a reason is refused" in text(no_reason)
    unknown = client_for(operator).post(
        ISSUE, data | {"target_pct": "10", "selector": "engine:nope"}, follow=True
    )
    assert "selector: no active engine matches 'engine:nope'" in text(unknown)
    assert not Command.objects.exists()


def test_an_operator_may_flatten_given_symbols_but_not_everything(
    fleet: dict[str, Engine], operator: User
) -> None:
    client = client_for(operator)
    refused = client.post(
        ISSUE, {"kind": "flatten", "selector": "engine:alpha", "reason": "r"}, follow=True
    )
    assert "otto-operator may not flatten every position" in text(refused)
    assert not Command.objects.exists()

    client.post(
        ISSUE, {"kind": "flatten", "selector": "engine:alpha", "reason": "r", "symbols": "AAPL"}
    )
    assert Command.objects.get().params == {"symbols": ["AAPL"]}


def test_a_reduce_to_zero_of_everything_needs_the_flatten_right_on_the_page_and_the_api(
    fleet: dict[str, Engine], operator: User
) -> None:
    reduce = {"kind": "reduce", "selector": "engine:alpha", "target_pct": "0", "reason": "r"}
    refused = client_for(operator).post(ISSUE, reduce, follow=True)
    status, body = api_post(
        operator,
        {"kind": "reduce", "selector": "engine:alpha", "reason": "r", "params": {"target_pct": 0}},
    )

    message = "otto-operator may not flatten every position (a reduce to 0 %)"
    assert message in text(refused)
    assert status == 403 and message in body["detail"]
    assert not Command.objects.exists()


def test_an_operator_cannot_resume_a_risk_managers_flatten_on_the_page_or_the_api(
    fleet: dict[str, Engine], operator: User, risk_manager: User
) -> None:
    issuing.command_issue(kind="flatten", selector="engine:alpha", reason="x", actor=risk_manager)
    resume = {"kind": "resume", "selector": "engine:alpha", "reason": "all good"}

    page = client_for(operator).post(ISSUE, resume, follow=True)
    status, body = api_post(operator, resume)

    message = (
        "alpha is REDUCING, set by a flatten of every position of rita-risk: resuming it needs "
        "the issue_kill permission"
    )
    assert message in text(page)
    assert status == 403 and message in body["detail"]
    assert not Command.objects.filter(kind="resume").exists()
    assert Engine.objects.get(name="alpha").desired_state == "REDUCING"


def test_a_resume_of_a_halted_engine_is_refused_with_the_services_message(
    fleet: dict[str, Engine], operator: User, risk_manager: User
) -> None:
    halt(fleet["alpha"], risk_manager)
    data = {"kind": "resume", "selector": "engine:alpha", "reason": "all good"}

    response = client_for(operator).post(ISSUE, data, follow=True)

    assert (
        "alpha is HALTED by a kill: a resume needs a resume request approved by a second person"
        in text(response)
    )
    assert not Command.objects.filter(kind="resume").exists()


def test_a_redirect_back_never_leaves_the_site(fleet: dict[str, Engine], operator: User) -> None:
    response = kill_all(client_for(operator), next="https://evil.example/")

    assert response.redirect_chain == [("/", 302)]  # type: ignore[attr-defined]


def test_the_command_form_answers_only_posts(operator: User) -> None:
    assert client_for(operator).get(ISSUE).status_code == 405


# --- fleet page -----------------------------------------------------------------------------------


def test_the_fleet_shows_each_role_the_buttons_it_may_use(
    fleet: dict[str, Engine], viewer: User, operator: User, risk_manager: User
) -> None:
    halt(fleet["beta"], risk_manager)

    viewer_page = text(client_for(viewer).get("/"))
    assert "data-open-dialog" not in viewer_page
    assert "<th>Actions</th>" not in viewer_page

    operator_page = text(client_for(operator).get("/"))
    assert 'data-open-dialog="pause-dialog" data-selector="engine:alpha"' in operator_page
    assert 'data-action="/engines/beta/resume-requests/">Request resume' in operator_page
    assert 'data-selector="engine:beta" data-label="beta"' in operator_page  # reduce etc. stay
    assert 'data-open-dialog="kill-dialog"' not in operator_page
    assert (
        'id="flatten-symbols" name="symbols" placeholder="AAPL, MSFT" autocomplete="off" required'
        in operator_page
    )
    assert '<option value="tag:momentum">' in operator_page

    risk_page = text(client_for(risk_manager).get("/"))
    assert 'data-open-dialog="kill-dialog" data-selector="engine:gamma"' in risk_page


def test_the_fleet_page_query_count_does_not_grow_with_the_engines(
    make_engine: Callable[..., tuple[Engine, str]],
    risk_manager: User,
    django_assert_num_queries: Callable[..., object],
) -> None:
    client = client_for(risk_manager)
    for n in range(2):
        make_engine(f"few-{n}", strategy_tags=["a"])
    # session, user, the user's permissions and group permissions, then the fleet's reads
    # (dashboard.overview.fleet_rows and the tag menu): the same number for 2 or 12 engines
    with CaptureQueriesContext(connection) as few:
        assert client.get("/").status_code == 200
    for n in range(10):
        make_engine(f"many-{n}", mode="live", strategy_tags=["b", "c"])
    with django_assert_num_queries(len(few)):  # type: ignore[operator]
        assert client.get("/").status_code == 200


# --- batch and engine pages -----------------------------------------------------------------------


def test_the_batch_page_shows_progress_timings_and_the_shortfall_in_red(
    fleet: dict[str, Engine], risk_manager: User, viewer: User
) -> None:
    batch = issuing.command_issue(
        kind="kill", selector="live", reason="r", actor=risk_manager, confirmation="KILL ALL"
    )
    alpha, beta = (batch.commands.get(engine__name=n) for n in ("alpha", "beta"))
    session.record(fleet["alpha"].pk, p.CommandAck(command_id=alpha.pk))
    session.record(
        fleet["alpha"].pk,
        p.CommandResult(command_id=alpha.pk, status="succeeded", trading_state="HALTED"),
    )
    session.record(
        fleet["beta"].pk,
        p.CommandResult(
            command_id=beta.pk,
            status="partial",
            data={"working": ["o-1", "o-2"]},
            trading_state="HALTED",
        ),
    )
    url = reverse("dashboard:batch", kwargs={"batch_id": batch.pk})

    page = text(client_for(viewer).get(url))

    assert "2 of 2 engines halted" in page
    assert "beta: kill incomplete: 2 orders still working" in page  # the batch's red panel
    assert '<strong class="shortfall">kill incomplete: 2 orders still working</strong>' in page
    assert f'data-url="/api/v1/commands/batches/{batch.pk}"' in page
    assert 'data-finished="true"' in page
    assert page.count(" ms</td>") == 6  # delivered, acknowledged and completed of both
    assert "js/batch.js" in page


def test_an_unknown_batch_is_404_and_a_user_without_view_command_is_403(
    fleet: dict[str, Engine], operator: User, outsider: User, risk_manager: User
) -> None:
    assert client_for(operator).get(f"/commands/batches/{uuid.uuid4()}/").status_code == 404
    batch = issuing.command_issue(
        kind="kill", selector="all", reason="r", actor=risk_manager, confirmation="KILL ALL"
    )
    assert client_for(outsider).get(f"/commands/batches/{batch.pk}/").status_code == 403


def test_the_batch_page_query_count_does_not_grow_with_the_engines(
    make_engine: Callable[..., tuple[Engine, str]],
    risk_manager: User,
    django_assert_max_num_queries: Callable[..., object],
) -> None:
    for n in range(12):
        make_engine(f"e-{n}")
    batch = issuing.command_issue(kind="pause", selector="all", reason="r", actor=risk_manager)
    client = client_for(risk_manager)

    # session, user, permissions, group permissions, the batch, its commands, the fleet kill
    # banner
    with django_assert_max_num_queries(7):  # type: ignore[operator]
        assert client.get(f"/commands/batches/{batch.pk}/").status_code == 200


def test_the_engine_commands_page_lists_its_commands_newest_first_with_shortfalls(
    fleet: dict[str, Engine], operator: User, risk_manager: User
) -> None:
    issuing.command_issue(kind="pause", selector="engine:gamma", reason="first", actor=operator)
    batch = issuing.command_issue(
        kind="kill",
        selector="engine:gamma",
        reason="second",
        actor=risk_manager,
        confirmation="gamma",
    )
    kill = batch.commands.get()
    session.record(
        fleet["gamma"].pk,
        p.CommandResult(
            command_id=kill.pk, status="failed", data={"left": {"AAPL": "10"}}, detail="broker down"
        ),
    )
    issuing.command_issue(kind="pause", selector="engine:alpha", reason="other", actor=operator)

    page = text(client_for(operator).get("/engines/gamma/commands/"))

    assert page.index("second") < page.index("first")
    assert "other" not in page
    assert "kill incomplete: 1 position still open" in page
    assert "cancel_open=False" in page
    assert f'href="/commands/batches/{batch.pk}/"' in page
    assert client_for(operator).get("/engines/nope/commands/").status_code == 404


# --- four-eyes resume -----------------------------------------------------------------------------


def test_a_resume_after_a_kill_needs_a_second_person_through_the_pages(
    fleet: dict[str, Engine], risk_manager: User, second_risk_manager: User
) -> None:
    halt(fleet["alpha"], risk_manager)
    asker = client_for(risk_manager)

    response = asker.post(
        "/engines/alpha/resume-requests/", {"reason": "root cause fixed"}, follow=True
    )

    assert response.redirect_chain == [(RESUME_REQUESTS, 302)]  # type: ignore[attr-defined]
    resume_request = ResumeRequest.objects.get()
    assert resume_request.requested_by == risk_manager
    page = text(response)
    assert "Resume of alpha asked for: a second person must approve." in page
    assert "awaiting a second person" in page
    assert f"/commands/resume-requests/{resume_request.pk}/approve/" not in page

    approve_url = f"/commands/resume-requests/{resume_request.pk}/approve/"
    own = asker.post(approve_url, {"reason": "me"}, follow=True)
    assert (
        "rita-risk asked for this resume and cannot also approve it: a second person must"
        in text(own)
    )
    resume_request.refresh_from_db()
    assert resume_request.status == "open"
    assert Engine.objects.get(name="alpha").desired_state == "HALTED"

    approver = client_for(second_risk_manager)
    assert approve_url in text(approver.get(RESUME_REQUESTS))
    approved = approver.post(approve_url, {"reason": "checked the fix"}, follow=True)

    resume_request.refresh_from_db()
    assert resume_request.status == "approved"
    assert resume_request.decided_by == second_risk_manager
    command = resume_request.command
    assert command is not None and command.kind == "resume"
    assert approved.redirect_chain == [(f"/commands/batches/{command.batch_id}/", 302)]  # type: ignore[attr-defined]
    assert "Resume of alpha approved and issued." in text(approved)
    assert Engine.objects.get(name="alpha").desired_state == "ACTIVE"


def test_the_risk_manager_who_killed_cannot_approve_the_release_on_the_page(
    fleet: dict[str, Engine], operator: User, risk_manager: User
) -> None:
    halt(fleet["alpha"], risk_manager)
    resume_request = resume.resume_request_create(
        engine=fleet["alpha"], reason="fixed", actor=operator
    )

    approve_url = f"/commands/resume-requests/{resume_request.pk}/approve/"
    client = client_for(risk_manager)
    listing = text(client.get(RESUME_REQUESTS))
    assert "you issued the kill: another risk manager approves" in listing
    assert approve_url not in listing
    response = client.post(approve_url, {"reason": "mine"}, follow=True)

    assert (
        "rita-risk issued the kill that halted alpha and cannot also approve its release: "
        "another risk manager must" in text(response)
    )
    resume_request.refresh_from_db()
    assert resume_request.status == "open"
    assert Engine.objects.get(name="alpha").desired_state == "HALTED"


def test_an_operator_may_ask_for_a_resume_but_not_approve_one(
    fleet: dict[str, Engine], operator: User, risk_manager: User
) -> None:
    halt(fleet["beta"], risk_manager)
    resume_request = resume.resume_request_create(
        engine=fleet["beta"], reason="fixed", actor=risk_manager
    )
    client = client_for(operator)

    page = text(client.get(RESUME_REQUESTS))
    assert "awaiting a risk manager" in page
    assert "/approve/" not in page

    response = client.post(f"/commands/resume-requests/{resume_request.pk}/approve/", follow=True)
    assert "otto-operator may not approve a resume after a kill: only risk managers may" in text(
        response
    )
    resume_request.refresh_from_db()
    assert resume_request.status == "open"


def test_a_second_risk_manager_may_reject_and_the_requester_may_withdraw(
    fleet: dict[str, Engine], operator: User, risk_manager: User, second_risk_manager: User
) -> None:
    halt(fleet["alpha"], risk_manager)
    halt(fleet["beta"], risk_manager)
    first = resume.resume_request_create(engine=fleet["alpha"], reason="a", actor=operator)
    second = resume.resume_request_create(engine=fleet["beta"], reason="b", actor=operator)

    rejected = client_for(second_risk_manager).post(
        f"/commands/resume-requests/{first.pk}/reject/", {"reason": "not yet"}, follow=True
    )
    assert "Resume request for alpha rejected." in text(rejected)
    client_for(operator).post(f"/commands/resume-requests/{second.pk}/reject/", {"reason": "oops"})

    assert ResumeRequest.objects.get(pk=first.pk).status == "rejected"
    assert ResumeRequest.objects.get(pk=second.pk).status == "withdrawn"
    again = client_for(second_risk_manager).post(
        f"/commands/resume-requests/{first.pk}/approve/", follow=True
    )
    assert "resume_request: this request was already decided" in text(again)


def test_a_resume_request_for_an_engine_that_is_not_halted_shows_why(
    fleet: dict[str, Engine], operator: User
) -> None:
    response = client_for(operator).post(
        "/engines/gamma/resume-requests/", {"reason": "x", "next": "/"}, follow=True
    )

    assert "engine: gamma is not HALTED (ACTIVE); resume it directly" in text(response)
    assert not ResumeRequest.objects.exists()


# --- audit ----------------------------------------------------------------------------------------


@pytest.fixture
def audit_trail(fleet: dict[str, Engine], operator: User, risk_manager: User, viewer: User) -> None:
    issuing.command_issue(kind="pause", selector="live", reason="news", actor=operator)
    with pytest.raises(errors.CommandRefused):
        issuing.command_issue(
            kind="kill", selector="all", reason="panic", actor=viewer, confirmation="KILL ALL"
        )
    halt(fleet["gamma"], risk_manager)


def test_only_users_with_view_auditevent_see_the_audit_page(
    audit_trail: None, viewer: User, outsider: User
) -> None:
    assert client_for(outsider).get(AUDIT).status_code == 403
    page = text(client_for(viewer).get(AUDIT))
    assert 'href="/audit/"' in page  # the header links it
    assert "vera-viewer may not kill: that needs the issue_kill permission" in page
    assert '<option value="command_pause">' in page


def test_the_audit_page_filters_by_actor_action_outcome_target_and_dates(
    audit_trail: None, viewer: User
) -> None:
    client = client_for(viewer)

    def rows(**query: str) -> list[str]:
        response = client.get(AUDIT, query)
        assert response.status_code == 200
        events = response.context["page"].object_list
        return [f"{e.actor} {e.action} {e.outcome}" for e in events]

    assert rows(actor="otto-operator") == ["otto-operator command_pause ok"]
    assert rows(action="command_kill") == [
        "rita-risk command_kill ok",
        "vera-viewer command_kill refused",
    ]
    assert rows(outcome="refused") == ["vera-viewer command_kill refused"]
    assert rows(target="engine:gamma", action="command_kill") == ["rita-risk command_kill ok"]
    today = timezone.localdate()
    assert len(rows(date_from=str(today), date_to=str(today))) == AuditEvent.objects.count()
    assert rows(date_from=str(today + timedelta(days=1))) == []
    assert rows(date_to=str(today - timedelta(days=1))) == []


def test_a_bad_audit_filter_says_so_and_lists_nothing(audit_trail: None, viewer: User) -> None:
    response = client_for(viewer).get(AUDIT, {"outcome": "maybe", "date_from": "yesterday"})

    assert response.context["page"] is None
    page = text(response)
    assert "outcome: Select a valid choice. maybe is not one of the available choices." in page
    assert "date_from: Enter a valid date." in page


def test_the_audit_page_shows_fifty_events_a_page_newest_first_in_few_queries(
    viewer: User, django_assert_num_queries: Callable[..., object]
) -> None:
    for n in range(120):
        audit_record(action="probe", actor_label=f"probe-{n:03}", outcome="ok")
    client = client_for(viewer)

    # session, user, permissions, group permissions, distinct actions, count, the page, the fleet
    # kill banner
    with django_assert_num_queries(8):  # type: ignore[operator]
        first = client.get(AUDIT, {"action": "probe"})
    events = first.context["page"].object_list
    assert [e.actor for e in events][:2] == ["probe-119", "probe-118"]
    assert len(events) == 50
    assert "page 1 of 3 · 120 events" in text(first)
    assert 'href="?action=probe&amp;page=2"' in first.content.decode()

    last = client.get(AUDIT, {"action": "probe", "page": "3"})
    assert [e.actor for e in last.context["page"].object_list][-1] == "probe-000"
    assert len(last.context["page"].object_list) == 20
