"""The engine protocol over plain HTTP, for engines that cannot hold a WebSocket.

POST /api/v1/engine/events takes one engine frame as the JSON body and answers a JSON array of
server frames; GET /api/v1/engine/commands answers the pending command frames. Authentication
is the engine's bearer token, as on the socket.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from controlplane import gateway
from controlplane.input_guard import frames_checked_by_the_view
from controlplane.models import Engine
from dashboard.live import publisher
from engine_sdk import protocol as p

JSON = "application/json"


def _frames(frames: list[p.ServerFrame], status: int = 200) -> HttpResponse:
    body = b"[" + b",".join(p.encode(f) for f in frames) + b"]"
    return HttpResponse(body, content_type=JSON, status=status)


def _authenticate(request: HttpRequest) -> Engine | HttpResponse:
    engine = gateway.engine_by_token(gateway.bearer_token(request.headers))
    if engine is None:
        response = _frames(
            [p.Error(code="unauthorized", message="missing or invalid engine bearer token")], 401
        )
        response["WWW-Authenticate"] = 'Bearer realm="engine"'
        return response
    return engine


@frames_checked_by_the_view
@csrf_exempt  # bearer-token API: no cookies, so no cross-site request forgery
@login_not_required
@require_POST
def post_frame(request: HttpRequest) -> HttpResponse:
    engine = _authenticate(request)
    if isinstance(engine, HttpResponse):
        return engine
    decoded = gateway.decode_frame(request.body)
    if decoded.events is not None:
        frames, result = gateway.events(engine.pk, decoded)
        if result is not None and result.stored:
            publisher.mark_soon(engine.pk)
        status = 503 if result is None else 200
        return _frames(frames, status)
    frame = decoded.frame
    if frame is None:
        return _frames(decoded.errors, 400)
    if isinstance(frame, p.Hello):
        frames = gateway.hello(engine, frame, connection_id=None)
        return _frames(frames, 200 if isinstance(frames[0], p.Welcome) else 400)
    if isinstance(frame, p.Events):  # decoded.events is set for every events frame
        return _frames([])
    commands = gateway.record(engine.pk, frame)
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
    return _frames(gateway.pending_commands(engine.pk))
