"""Logging in and out in a real headless Chromium against the app served by uvicorn."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD
from tests.servers import UvicornServer

pytestmark = pytest.mark.e2e


def _log_in(page: Page, server: UvicornServer, username: str, password: str) -> None:
    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_an_anonymous_visit_to_the_root_lands_on_the_login_page(
    page: Page, uvicorn_server: UvicornServer
) -> None:
    page.goto(f"{uvicorn_server.url}/")

    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page.get_by_label("Username")).to_be_focused()
    expect(page.get_by_role("link", name="Fleet")).to_have_count(0)


def test_a_wrong_password_shows_the_error_and_stays_on_the_login_page(
    page: Page, uvicorn_server: UvicornServer, operator: User
) -> None:
    _log_in(page, uvicorn_server, operator.username, "not the password")

    expect(page.get_by_role("alert")).to_have_text(
        "Your username and password did not match. Please try again."
    )
    expect(page).to_have_url(re.compile(r"/login/$"))
    expect(page.get_by_label("Username")).to_have_value(operator.username)
    expect(page.get_by_label("Password")).to_have_value("")


def test_the_right_password_lands_on_the_fleet_page_with_the_engines_of_the_database(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    make_engine: Callable[..., object],
) -> None:
    make_engine("alpha", mode="paper", strategy_tags=["momentum"])
    make_engine("bravo", mode="live", strategy_tags=["mean-reversion", "fx"])

    page.goto(f"{uvicorn_server.url}/")
    page.get_by_label("Username").fill(operator.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()

    expect(page).to_have_url(f"{uvicorn_server.url}/")
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    expect(page.locator(".topbar .user")).to_contain_text(operator.username)
    rows = page.locator("#fleet-table tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator('tr[data-engine="alpha"]')).to_contain_text("Paper")
    # A live engine is in full production: the row says its stage, its mode in the badge's title.
    bravo_stage = page.locator('tr[data-engine="bravo"] .stage-badge')
    expect(bravo_stage).to_have_text("Full")
    expect(bravo_stage).to_have_attribute("title", "Stage: Full production (mode Live)")
    # An operator is not staff: no link to the admin.
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)


def test_logging_out_ends_the_session(
    page: Page, uvicorn_server: UvicornServer, operator: User
) -> None:
    _log_in(page, uvicorn_server, operator.username, PASSWORD)
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()

    page.get_by_role("button", name="Log out").click()

    expect(page).to_have_url(re.compile(r"/login/$"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.goto(f"{uvicorn_server.url}/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))


def test_the_login_and_fleet_pages_load_without_a_failed_request(
    page: Page, uvicorn_server: UvicornServer, operator: User
) -> None:
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: failed.append(f"{r.failure} {r.url}"))

    _log_in(page, uvicorn_server, operator.username, PASSWORD)
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    page.wait_for_load_state("networkidle")

    assert failed == []
    icon = page.evaluate("document.querySelector('link[rel=icon]').href")
    assert page.request.get(icon).ok


def test_five_wrong_passwords_show_the_lockout_message_and_the_right_one_then_fails_too(
    page: Page, uvicorn_server: UvicornServer, operator: User, viewer: User
) -> None:
    for _ in range(4):
        _log_in(page, uvicorn_server, operator.username, "not the password")
        expect(page.get_by_role("alert")).to_have_text(
            "Your username and password did not match. Please try again."
        )
    # The fifth locks; a forged X-Forwarded-For (no proxy is trusted) changes nothing.
    page.set_extra_http_headers({"X-Forwarded-For": "203.0.113.50"})
    _log_in(page, uvicorn_server, operator.username, "not the password")

    lockout = (
        "Too many failed logins for otto-operator from this address: logging in as "
        "otto-operator from here is locked for 15 minutes, even with the right password."
    )
    expect(page.get_by_role("heading", name="Login locked")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text(lockout)
    page.get_by_role("link", name="Back to the login page").click()
    _log_in(page, uvicorn_server, operator.username, PASSWORD)
    expect(page.get_by_role("alert")).to_have_text(lockout)

    # Someone else at the same address is not locked out.
    _log_in(page, uvicorn_server, viewer.username, PASSWORD)
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
