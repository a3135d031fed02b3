"""LOG_FORMAT=json: one object per line, with the request id, the user and the engine."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from controlplane import logcontext
from controlplane.config.logs import JsonFormatter


def _record(message: str = "stored %s events", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "controlplane.ingest", logging.WARNING, __file__, 1, message, args or (3,), None
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_record_is_one_json_object_on_one_line_with_its_context():
    record = _record(request_id="r-1", user="alice", engine="momo-1")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["message"] == "stored 3 events"
    assert (fields["level"], fields["logger"]) == ("WARNING", "controlplane.ingest")
    assert (fields["request_id"], fields["user"], fields["engine"]) == ("r-1", "alice", "momo-1")
    assert fields["ts"].endswith("+00:00")


def test_a_traceback_and_hostile_text_stay_inside_the_one_line():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = _record("engine said %r", 'x\n{"level": "forged"}', exc_info=sys.exc_info())
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["level"] == "WARNING" and "forged" in fields["message"]
    assert "ValueError: bad" in fields["exc"]
    # Context not known is left out rather than written as null.
    assert "request_id" not in fields and "engine" not in fields


def test_the_filter_copies_the_context_that_is_set():
    record = _record()
    token = logcontext.engine.set("momo-2")
    try:
        logcontext.ContextFilter().filter(record)
    finally:
        logcontext.engine.reset(token)
    assert (record.engine, record.request_id, record.user) == ("momo-2", None, None)


@pytest.mark.django_db
def test_each_request_has_an_id_in_its_answer_and_in_its_log_lines(client, operator, caplog):
    caplog.handler.addFilter(logcontext.ContextFilter())
    client.force_login(operator)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.get("/no-such-page-here", headers={"X-Request-ID": "proxy-42"})
    assert response.status_code == 404 and response["X-Request-ID"] == "proxy-42"
    logged = [r for r in caplog.records if r.name == "django.request"]
    assert logged and logged[0].request_id == "proxy-42"
    assert logged[0].user == operator.get_username()
    # Gone once the request is over.
    assert logcontext.request_id.get() is None and logcontext.user.get() is None


@pytest.mark.django_db
@pytest.mark.parametrize("given", ["a" * 65, "two words", "x\r\ny", ""])
def test_a_request_id_that_is_not_plainly_an_id_is_replaced(client, given):
    response = client.get("/healthz", headers={"X-Request-ID": given})
    answered = response["X-Request-ID"]
    assert answered != given and len(answered) == 32 and answered.isalnum()


def test_production_logs_json_by_default_and_plain_when_asked():
    script = (
        "import django, logging; django.setup(); "
        "logging.getLogger('controlplane.check').warning('hello %s', 'there')"
    )
    production = {
        **os.environ,
        "CONTROLPLANE_ENV": "production",
        "SECRET_KEY": "k" + "0123456789abcdef" * 4,
        "METRICS_TOKEN": "m" * 32,
        "DATABASE_URL": os.environ.get("DATABASE_URL") or "postgres://cp@db.example.com/cp",
        "REDIS_URL": os.environ.get("REDIS_URL") or "redis://redis.example.com:6379/0",
    }
    production.pop("LOG_FORMAT", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=production, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert (line["message"], line["logger"]) == ("hello there", "controlplane.check")

    plain = subprocess.run(
        [sys.executable, "-c", script],
        env={**production, "LOG_FORMAT": "plain"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.strip().splitlines()[-1].endswith("WARNING controlplane.check: hello there")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_async_request_has_its_id_and_user_without_a_query_on_the_loop(
    async_client, operator
):
    # Under ASGI the middleware runs on the event loop, where looking request.user up the sync
    # way is refused (a 500 on every page).
    await async_client.aforce_login(operator)
    response = await async_client.get("/", headers={"X-Request-ID": "async-7"})
    assert response.status_code == 200 and response["X-Request-ID"] == "async-7"


def test_the_filter_never_looks_a_user_up_itself():
    from django.utils.functional import SimpleLazyObject

    def lookup() -> None:
        raise AssertionError("looked up")

    record = _record(request=type("R", (), {"user": SimpleLazyObject(lookup)})())
    logcontext.ContextFilter().filter(record)
    assert record.user is None
