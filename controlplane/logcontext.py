"""Who a log line is about: the request (its id), the user, the engine.

The request middleware and the engine gateway set them for the code they run; a filter on the
log handler copies them onto every record, so that the JSON format (controlplane/config/logs.py)
writes them on each line, and a person can follow one request or one engine through the logs of
every process.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.functional import empty

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
user: ContextVar[str | None] = ContextVar("user", default=None)
engine: ContextVar[str | None] = ContextVar("engine", default=None)

# A request id a proxy sent along (X-Request-ID) is kept only when it is plainly an id: it is
# written into every log line of the request, so it must not carry a line break or a megabyte.
_GIVEN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class ContextFilter(logging.Filter):
    """Copies the context onto each record (None where there is none): request_id, user, engine."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Django logs a request's 4xx and 5xx answer after the middleware is done with it, but
        # hands the request along: its id and user are read from it then.
        request = getattr(record, "request", None)
        record.request_id = request_id.get() or getattr(request, "request_id", None)
        record.user = user.get() or _username(request)
        record.engine = engine.get()
        return True


def _username(request: Any) -> str | None:
    """The request's user, if the authentication middleware already looked it up: never a
    lookup here, which would be a database query in whatever context logs (an async one
    refuses it)."""
    lazy = getattr(request, "user", None)
    who = getattr(lazy, "_wrapped", lazy)  # a SimpleLazyObject not evaluated yet holds `empty`
    if who is None or who is empty or not hasattr(who, "is_authenticated"):
        return None
    return who.get_username() if who.is_authenticated else None


def _request_id(request: HttpRequest) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if _GIVEN_ID.fullmatch(given) else uuid.uuid4().hex


class RequestContextMiddleware:
    """Gives each request an id (the proxy's X-Request-ID, else a new one), answered in the same
    header, and puts it and the user in the log context while the request runs. After the
    authentication middleware, which tells the user."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    @staticmethod
    def _enter(request: HttpRequest, name: str | None) -> tuple[str, list[Any]]:
        rid = request.request_id = _request_id(request)  # type: ignore[attr-defined]
        return rid, [request_id.set(rid), user.set(name)]

    @staticmethod
    def _leave(tokens: list[Any]) -> None:
        user.reset(tokens[1])
        request_id.reset(tokens[0])

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if iscoroutinefunction(self):
            return self._acall(request)
        who = request.user  # type: ignore[attr-defined]
        rid, tokens = self._enter(request, who.get_username() if who.is_authenticated else None)
        try:
            response = self.get_response(request)
        finally:
            self._leave(tokens)
        response["X-Request-ID"] = rid
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        # The async way: request.user would query the database from the event loop.
        who = await request.auser()  # type: ignore[attr-defined]
        rid, tokens = self._enter(request, who.get_username() if who.is_authenticated else None)
        try:
            response = await self.get_response(request)
        finally:
            self._leave(tokens)
        response["X-Request-ID"] = rid
        return response
