"""The engine protocol over plain HTTP, for engines that cannot hold a WebSocket.

POST /api/v1/engine/events takes one engine frame as the JSON body and answers a JSON array of
server frames; GET /api/v1/engine/commands answers the pending command frames. Authentication
is the engine's bearer token, as on the socket. GET /api/v1/protocol.schema.json answers the
protocol's JSON Schema to anyone.
"""

from __future__ import annotations

import json
import math
import threading
from functools import cache

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from controlplane import events, logcontext
from controlplane.commands import delivery
from controlplane.gateway import batches, decoding, session
from controlplane.gateway.ratelimit import TokenBucket
from controlplane.input_guard import frames_checked_by_the_view
from controlplane.models import Engine
from engine_sdk import protocol as p
from engine_sdk.schema import protocol_schema

JSON = "application/json"
# The status of a refused hello (docs/protocol.md, section 14); any other refusal is 400.
HELLO_REFUSAL_STATUS = {"unauthorized": 401, "stage_forbids_live": 403}


def _frames(frames: list[p.ServerFrame], status: int = 200) -> HttpResponse:
    body = b"[" + b",".join(p.encode(f) for f in frames) + b"]"
    return HttpResponse(body, content_type=JSON, status=status)


def _authenticate(request: HttpRequest) -> Engine | HttpResponse:
    engine = session.engine_by_token(decoding.bearer_token(request.headers))
    if engine is None:
        response = _frames(
            [p.Error(code="unauthorized", message="missing or invalid engine bearer token")], 401
        )
        response["WWW-Authenticate"] = 'Bearer realm="engine"'
        return response
    return engine


# Each engine's requests to this process, whatever their endpoint (no socket to hang them on).
_rates: dict[int, TokenBucket] = {}
_rates_lock = threading.Lock()


def _rate_limited(engine: Engine) -> HttpResponse | None:
    """429 for a request over the engine's rate (ENGINE_MAX_FRAMES_PER_S): not processed."""
    rate, burst = settings.ENGINE_MAX_FRAMES_PER_S, settings.ENGINE_FRAME_BURST
    with _rates_lock:
        bucket = _rates.get(engine.pk)
        if bucket is None or (bucket.rate, bucket.burst) != (rate, burst):
            bucket = _rates[engine.pk] = TokenBucket(rate, burst)
        if bucket.take():
            return None
        wait = bucket.wait_s()
    message = (
        f"more than {rate:g} requests a second (bursts of {burst}): this one was not processed; "
        "send it again after Retry-After seconds"
    )
    response = _frames([p.Error(code="rate_limited", message=message)], 429)
    response["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


@frames_checked_by_the_view
@csrf_exempt  # bearer-token API: no cookies, so no cross-site request forgery
@login_not_required
@require_POST
def post_frame(request: HttpRequest) -> HttpResponse:
    engine = _authenticate(request)
    if isinstance(engine, HttpResponse):
        return engine
    if refused := _rate_limited(engine):
        return refused
    # The request's log lines name the engine, as a socket connection's do.
    named = logcontext.engine.set(engine.name)
    try:
        return _post_frame(request, engine)
    finally:
        logcontext.engine.reset(named)


def _post_frame(request: HttpRequest, engine: Engine) -> HttpResponse:
    try:
        body = request.body
    except RequestDataTooBig:  # DATA_UPLOAD_MAX_MEMORY_SIZE, above the protocol's own limit
        message = f"the body is over the limit of {p.MAX_FRAME_BYTES} bytes: send smaller batches"
        return _frames([p.Error(code="frame_too_large", message=message)], 400)
    decoded = decoding.decode_frame(body)
    if decoded.events is not None:
        frames, result = batches.events(engine.pk, decoded)
        if result is not None and result.stored:
            events.announce(events.engines_changed, engine_ids=[engine.pk])
        status = 503 if result is None else 200
        return _frames(frames, status)
    frame = decoded.frame
    if frame is None:
        return _frames(decoded.errors, 400)
    if isinstance(frame, p.Hello):
        frames = session.hello(engine, frame, connection_id=None)
        if isinstance(frames[0], p.Welcome):
            return _frames(frames)
        code = frames[0].code if isinstance(frames[0], p.Error) else ""
        return _frames(frames, HELLO_REFUSAL_STATUS.get(code, 400))
    if isinstance(frame, p.Events):  # decoded.events is set for every events frame
        return _frames([])
    commands = session.record(engine.pk, frame)
    # Over HTTP the answer to a heartbeat is the server's liveness signal (the dead-man's),
    # followed by any command not delivered yet.
    if isinstance(frame, p.Heartbeat):
        return _frames([p.ServerHeartbeat(ts=p.utc_now()), *commands])
    return _frames([])


@login_not_required
@require_GET
def get_commands(request: HttpRequest) -> HttpResponse:
    engine = _authenticate(request)
    if isinstance(engine, HttpResponse):
        return engine
    if refused := _rate_limited(engine):
        return refused
    return _frames(delivery.pending_commands(engine.pk))


@cache
def _schema_body() -> bytes:
    return json.dumps(protocol_schema(), indent=2, sort_keys=True).encode() + b"\n"


@login_not_required  # the protocol is public: engine developers read it before they have a token
@require_GET
def protocol_schema_json(request: HttpRequest) -> HttpResponse:
    """GET /api/v1/protocol.schema.json: the JSON Schema of every frame, drawn from the running
    code (the same document as docs/protocol.schema.json, which the suite checks)."""
    response = HttpResponse(_schema_body(), content_type=JSON)
    response["Cache-Control"] = "public, max-age=300"
    return response
