"""Every URL of the URL conf, for every role, with hostile path values, query parameters and
fields: no answer is a server error.

The paths come from ``get_resolver()`` (the admin's and the API's included), so a new URL is
walked by itself; each pattern must be filled at least once with a value that resolves to it,
and a pattern none of the samples fit fails the test until one is added. The database holds
rows stamped in year 1 (stored before the protocol bounded times), which every page that
computes ages, charts or reports must still render.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.exceptions import Resolver404
from django.urls.resolvers import RegexPattern, RoutePattern

from alerts.models import Alert, AlertRule
from controlplane.commands import issuing
from controlplane.models import (
    AccountSnapshot,
    EngineLog,
    Fill,
    Instrument,
    MetricSample,
    Order,
)

pytestmark = pytest.mark.django_db

YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)
NUL = "x\x00y"
HUGE = 10**12
LONG = "z" * 2001  # past the longest text field (a reason's 2000 characters)

# Values for each path converter: an existing object, a missing one, out-of-range numbers, long
# strings, NUL bytes (percent-encoded, as a client would send them). ``EXISTING_*`` are filled in
# once the fixtures have made the objects.
EXISTING_ENGINE = "alpha"
CONVERTER_VALUES: dict[str, list[str]] = {
    "int": ["1", "0", "2147483648", "9" * 30],
    "slug": [EXISTING_ENGINE, "missing-engine", "s" * 300],
    "str": [EXISTING_ENGINE, "missing", "s" * 300, "a%00b"],
    "uuid": [str(uuid.UUID(int=0)), "ffffffff-ffff-ffff-ffff-ffffffffffff"],
    "path": ["1", "9" * 30, "a%00b"],
}
# Samples tried against each regular-expression group; those the group matches are used.
REGEX_SAMPLES = [
    "2026-W47",
    "9999-W52",
    "0001-W01",
    "0000-W00",
    "2026-W99",
    "auth",
    "controlplane",
    "1",
    "s" * 300,
    "a%00b",
]

# Query parameters and form fields the views read, with hostile values. Four variants, because
# a field holds one value at a time: NUL bytes everywhere; too small (negative, year 1); too big
# (huge numbers, year 9999, long strings); text where a number or a date belongs.
FIELDS = [
    "limit",
    "page",
    "p",
    "o",
    "q",
    "e",
    "mode",
    "tag",
    "status",
    "engine",
    "actor",
    "action",
    "outcome",
    "target",
    "date_from",
    "date_to",
    "kind",
    "selector",
    "reason",
    "confirm",
    "expires_in_s",
    "duration_min",
    "target_pct",
    "symbols",
    "flatten",
    "cancel_open",
    "minutes",
    "rule",
    "next",
    "return_here",
    "timezone",
    "weekly_report",
    "name",
    "username",
    "password",
    "_selected_action",
    "index",
    "post",
    "select_across",
]
NUMERIC = {
    "limit",
    "page",
    "p",
    "e",
    "expires_in_s",
    "duration_min",
    "target_pct",
    "minutes",
    "rule",
    "engine",
    "index",
}
DATES = {"date_from", "date_to"}


def _date_hierarchy_fields() -> dict[str, str]:
    """The admin's date drill-down parameters, taken from the registered model admins."""
    fields = {}
    for model_admin in admin.site._registry.values():
        if model_admin.date_hierarchy:
            fields[model_admin.date_hierarchy] = model_admin.date_hierarchy
    return fields


def hostile_variants() -> dict[str, dict[str, str]]:
    nul = {name: NUL for name in FIELDS}
    small = {
        name: "-1" if name in NUMERIC else "0001-01-01" if name in DATES else "" for name in FIELDS
    }
    big = {
        name: str(HUGE) if name in NUMERIC else "9999-12-31" if name in DATES else LONG[:300]
        for name in FIELDS
    }
    big["reason"] = big["q"] = LONG
    text = {name: "2026-02-30" if name in DATES else "not-a-number" for name in FIELDS}
    for field in _date_hierarchy_fields():
        nul |= {f"{field}__year": NUL, f"{field}__month": NUL, f"{field}__day": NUL}
        small |= {f"{field}__year": "1", f"{field}__month": "1", f"{field}__day": "1"}
        big |= {f"{field}__year": "9999", f"{field}__month": "12", f"{field}__day": "31"}
        text |= {f"{field}__year": "MMXXVI", f"{field}__month": "13", f"{field}__day": "0"}
    return {"nul": nul, "small": small, "big": big, "text": text}


def json_body(fields: dict[str, str]) -> str:
    """The same hostile values as JSON, numbers as numbers, for the API."""
    body: dict[str, object] = {}
    for name, value in fields.items():
        if name in NUMERIC and value.lstrip("-").isdigit():
            body[name] = int(value)
        else:
            body[name] = value
    body["params"] = {"duration": fields["minutes"], "target_pct": fields["target_pct"]}
    return json.dumps(body)


# --- the walk ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str
    pattern: URLPattern
    paths: tuple[str, ...]


def _leaves(
    resolver: URLResolver, chain: tuple[object, ...] = ()
) -> Iterator[tuple[tuple[object, ...], URLPattern]]:
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from _leaves(entry, (*chain, entry.pattern))
        else:
            yield (*chain, entry.pattern), entry


_CONVERTER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<parameter>[^>]+)>")


def _route_fillings(route: str, values: dict[str, list[str]]) -> list[str]:
    parts = _CONVERTER.split(route)
    # re.split with two groups: literal, converter, parameter, literal, ...
    choices: list[list[str]] = []
    for index, part in enumerate(parts):
        if index % 3 == 0:
            choices.append([part])
        elif index % 3 == 1:
            choices.append(values[part or "str"])
    return ["".join(combo) for combo in itertools.product(*choices)]


def _group_end(regex: str, start: int) -> int:
    depth = 0
    for index in range(start, len(regex)):
        if regex[index] == "\\":
            continue
        if regex[index] == "(" and (index == 0 or regex[index - 1] != "\\"):
            depth += 1
        elif regex[index] == ")" and regex[index - 1] != "\\":
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(regex)


def _regex_fillings(regex: str) -> list[str]:
    choices: list[list[str]] = []
    position = 0
    for match in re.finditer(r"\(\?P<\w+>", regex):
        if match.start() < position:
            continue
        end = _group_end(regex, match.start())
        inner = regex[match.end() : end]
        samples = [s for s in REGEX_SAMPLES if re.fullmatch(inner, s.replace("%00", "\x00"))]
        literals = [alt for alt in inner.split("|") if re.escape(alt) == alt]
        choices.append([regex[position : match.start()]])
        choices.append(samples or literals[:1])
        position = end + 1
    choices.append([regex[position:]])
    fillings = []
    for combo in itertools.product(*choices):
        text = "".join(combo)
        text = re.sub(r"\(\?:/\|\\\.csv\)", "/", text)  # the reports' "/ or .csv" ending
        text = text.replace("^", "").replace("$", "").replace("\\Z", "").replace("\\", "")
        fillings.append(text)
    return fillings


def _fillings(piece: object, values: dict[str, list[str]]) -> list[str]:
    if isinstance(piece, RoutePattern):
        return _route_fillings(str(piece), values)
    assert isinstance(piece, RegexPattern), piece
    return _regex_fillings(piece._regex)


def routes(values: dict[str, list[str]]) -> list[Route]:
    found = []
    for chain, pattern in _leaves(get_resolver()):
        combos = itertools.product(*(_fillings(piece, values) for piece in chain))
        paths = tuple(dict.fromkeys("/" + "".join(combo) for combo in combos))
        name = "".join(str(piece) for piece in chain)
        found.append(Route(name=name, pattern=pattern, paths=paths))
    return found


def _resolves_to(path: str, pattern: URLPattern) -> bool:
    try:
        match = resolve(path.replace("%00", "\x00"))
    except Resolver404:
        return False
    return match.func == pattern.callback


# --- the data every page renders ----------------------------------------------------------------


@pytest.fixture
def year_one_engine(make_engine, risk_manager):
    """An engine whose stored rows are stamped in year 1, with a batch, a resume request and an
    alert about it."""
    engine, _ = make_engine(EXISTING_ENGINE, mode="paper", strategy_tags=["momentum"])
    instrument = Instrument.objects.create(symbol="OLD")
    order = Order.objects.create(
        engine=engine,
        client_order_id="o-1",
        instrument=instrument,
        side="buy",
        order_type="limit",
        quantity=Decimal(1),
        limit_price=Decimal(1),
        status="filled",
        filled_quantity=Decimal(1),
        created_at=YEAR_ONE,
        updated_at=YEAR_ONE,
        last_seq=1,
    )
    Fill.objects.create(
        engine=engine,
        fill_id="f-1",
        order=order,
        instrument=instrument,
        side="buy",
        quantity=Decimal(1),
        price=Decimal(1),
        ts=YEAR_ONE,
        seq=2,
    )
    AccountSnapshot.objects.create(
        engine=engine, ts=YEAR_ONE, equity=Decimal(100), cash=Decimal(100), seq=3
    )
    MetricSample.objects.create(engine=engine, ts=YEAR_ONE, name="latency_ms", value=1.0, seq=4)
    EngineLog.objects.create(engine=engine, ts=YEAR_ONE, level="error", message="old", seq=5)
    engine.last_seen_at = YEAR_ONE
    engine.save(update_fields=["last_seen_at"])
    batch = issuing.command_issue(
        kind="kill",
        selector=f"engine:{engine.name}",
        reason="drill",
        actor=risk_manager,
        confirmation=engine.name,
    )
    rule = AlertRule.objects.create(name="old rule", metric="latency_ms", threshold=1)
    Alert.objects.create(
        rule=rule,
        engine=engine,
        state=Alert.State.FIRING,
        severity="critical",
        started_at=YEAR_ONE,
        summary="old",
    )
    return engine, batch


def _reads_input(path: str, response) -> bool:
    """Whether the variants of the parameters and fields are sent after this plain GET: to a
    page that answered it, or that takes only other methods (405), or to the API, which parses
    its parameters before it checks rights (403). Not where the role is sent to the login page,
    refused a page, or where the path names nothing or only redirects: that is decided before
    any view reads a parameter, whatever the method."""
    status = response.status_code
    return status < 300 or status == 405 or (status == 403 and path.startswith("/api/"))


ROLES = ["anonymous", "viewer", "operator", "risk_manager", "admin_user"]


def _client(role: str, request: pytest.FixtureRequest) -> Client:
    client = Client(raise_request_exception=False)
    if role != "anonymous":
        client.force_login(request.getfixturevalue(role))
    return client


@pytest.mark.parametrize("role", ROLES)
def test_no_url_answers_a_server_error_to_hostile_input(role, request, year_one_engine):
    _, batch = year_one_engine
    values = {**CONVERTER_VALUES, "uuid": [str(batch.pk), *CONVERTER_VALUES["uuid"]]}
    client = _client(role, request)
    variants = hostile_variants()
    failures: list[str] = []
    unreached: list[str] = []

    def send(method: str, path: str, *args: object, variant: str = "", **kwargs: object):
        # A savepoint each, so a request whose query fails cannot poison the ones after it.
        with transaction.atomic():
            response = getattr(client, method.lower())(path, *args, **kwargs)
        check(f"{method}[{variant}]" if variant else method, path, response)
        return response

    def check(method: str, path: str, response) -> None:
        if response.status_code >= 500:
            failures.append(f"{method} {path[:120]} -> {response.status_code}")
        if path.rstrip("/").endswith("logout") and role != "anonymous":
            # Logging out ends the session; the rest of the walk is still this role's.
            client.force_login(request.getfixturevalue(role))

    reached: set[str] = set()
    for route in routes(values):
        if any(_resolves_to(path, route.pattern) for path in route.paths):
            reached.add(route.name)
        elif route.name not in reached:  # not one shadowed by an earlier pattern of its route
            unreached.append(route.name)
        for index, path in enumerate(route.paths):
            response = send("GET", path)
            if index or not _reads_input(path, response):
                continue
            # The query and the fields' variants on the first filling (an existing object).
            api = path.startswith("/api/")
            for variant, fields in variants.items():
                url = f"{path}?{urlencode(fields)}"
                send("GET", url)
                if api:
                    send(
                        "POST",
                        path,
                        json_body(fields),
                        content_type="application/json",
                        variant=variant,
                    )
                else:
                    send("POST", path, fields, variant=variant)

    assert not unreached, f"no sample fills these patterns: {unreached}"
    assert not failures, "\n".join(failures)
