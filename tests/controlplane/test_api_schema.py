"""The API against its own OpenAPI schema: every operation, with generated valid and invalid
data, under every check of the schema-based fuzzer (no server error, only documented status
codes, bodies and headers as the schema says them, invalid data refused, authentication not
ignored, ...).

The schema is read as a script reads it, with a personal API token; the calls go through the
WSGI application to the test database. Commands it issues (kills among them) reach engines that
exist only in this test's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode

from controlplane import services
from controlplane.models import Command

SCHEMA_PATH = "/api/v1/openapi.json"

CONFIG = {
    "generation": {"mode": "all"},
    "checks": {
        # A request the schema calls valid may still break a rule it does not state, which the
        # API answers naming the field: 422 for a rule (a kill's confirmation must be the
        # engine's name, a reduce's target in the free-form params below 100, a resume only of a
        # halted engine), 400 for a NUL byte in any string (PostgreSQL text cannot hold one).
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422"]
        },
    },
}


@pytest.fixture
def wsgi_app(db: None) -> Iterator[WSGIHandler]:
    # The application runs in this thread on the test's connection: it must not close it after
    # each request (the test client does the same).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield WSGIHandler()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def admin_token(admin_user, make_engine) -> str:
    make_engine("alpha", mode="paper", strategy_tags=["momentum"])
    make_engine("beta", mode="live", strategy_tags=["carry"])
    return services.api_token_create(user=admin_user, name="schema")[1]


@pytest.fixture
def api_schema(wsgi_app: WSGIHandler, admin_token: str):
    return schemathesis.openapi.from_wsgi(
        SCHEMA_PATH,
        wsgi_app,
        headers={"Authorization": f"Bearer {admin_token}"},
        config=SchemathesisConfig.from_dict(CONFIG),
    )


def all_checks() -> list:
    load_all_checks()
    return [check for check in CHECKS.get_all() if not isinstance(check, type)]


# Examples per operation and mode: the whole run stays around a minute on a busy machine.
EXAMPLES = 12


def test_the_api_keeps_to_its_schema(api_schema, admin_token: str) -> None:
    headers = {"Authorization": f"Bearer {admin_token}"}
    checks = all_checks()
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                phases=[Phase.explicit, Phase.generate],
            )
            def run(case) -> None:
                case.call_and_validate(headers=headers, checks=checks)

            try:
                run()
            # Every operation is tried; the failures are listed at the end. (The fuzzer's
            # group of failures is a BaseExceptionGroup.)
            except (AssertionError, FailureGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:3000]}")

    assert not failures, "\n\n".join(failures)


def test_the_schema_is_read_with_an_api_token(client, admin_token: str) -> None:
    with_token = client.get(SCHEMA_PATH, headers={"Authorization": f"Bearer {admin_token}"})
    assert with_token.status_code == 200
    assert with_token.json()["info"]["title"] == "Trading Control Plane API"

    bad_token = client.get(SCHEMA_PATH, headers={"Authorization": "Bearer cpu_nothing"})
    assert bad_token.status_code == 401
    # A browser without a session is sent to the login page, as before.
    assert client.get(SCHEMA_PATH).status_code == 302


def test_every_operation_documents_its_errors(client, admin_token: str) -> None:
    schema = client.get(SCHEMA_PATH, headers={"Authorization": f"Bearer {admin_token}"}).json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            assert {"400", "401", "403", "422"} <= documented, (method, path)
            if "{" in path:
                assert "404" in documented, (method, path)
            for code in documented - {"200", "201", "204"}:  # 204: no body, by definition
                content = operation["responses"][code]["content"]["application/json"]
                assert content["schema"] == {"$ref": "#/components/schemas/ErrorOut"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=-1", "limit"),
        ("limit=1000000000000", "limit"),
        ("limit=ten", "limit"),
        ("status=lost", "status"),
        ("limit=5&limit=6", "limit"),
        ("limt=5", "limt"),  # misspelt: refused, not ignored
    ],
)
def test_a_bad_parameter_is_a_422_naming_it(client, admin_token: str, query: str, field: str):
    response = client.get(
        f"/api/v1/commands?{query}", headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"expires_in_s": 10**15}, "expires_in_s"),
        ({"expires_in_s": -5}, "expires_in_s"),
        ({"expires_in_s": 0}, "expires_in_s"),
        ({"expires_in": 60}, "expires_in"),  # misspelt: refused, not ignored
    ],
)
def test_a_bad_field_is_a_422_naming_it_and_nothing_is_issued(
    client, admin_token: str, extra: dict, field: str
):
    body = {"kind": "pause", "selector": "all", "reason": "x", **extra}
    response = client.post(
        "/api/v1/commands",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]
    assert not Command.objects.exists()
