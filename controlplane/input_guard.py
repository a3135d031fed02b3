"""Refuses NUL bytes at the edge, before any view or query sees them.

PostgreSQL text cannot hold a NUL byte: one that reaches a query (a filter on an engine's name,
an audit row's reason, a session lookup) fails it, and the request would end in a server error.
No field, parameter or path of this application means anything with one, so a request
carrying one is answered here: 400 naming the field, or 404 for a path (it names nothing).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError

NUL = "\x00"
# A NUL can reach a JSON body only escaped (a raw control byte is not JSON at all): the body is
# parsed only when this occurs in it, so the engines' hot path pays a substring scan.
_ESCAPED_NUL = b"\\u0000"


def _json_nul_fields(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, str):
        if NUL in value:
            yield where
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            if NUL in key:
                yield name
            else:
                yield from _json_nul_fields(item, name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _json_nul_fields(item, f"{where}[{index}]")


def nul_fields(request: HttpRequest, *, json_body: bool = True) -> list[str]:
    """The names of the query parameters, form fields and JSON fields holding a NUL."""
    found: list[str] = []
    found += [key for key, values in request.GET.lists() if NUL in key + "".join(values)]
    if request.method == "POST" and request.content_type != "application/json":
        if request.content_type == "multipart/form-data":
            if int(request.META.get("CONTENT_LENGTH") or 0) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
                # An upload (the admin's): its form's fields refuse NUL bytes themselves.
                return [field or "body" for field in found]
            # Read first, so the raw body stays readable for a view that parses it (the API).
            request.body  # noqa: B018
        # A malformed multipart body is the view's to answer, as it would be without this.
        with contextlib.suppress(MultiPartParserError):
            found += [key for key, values in request.POST.lists() if NUL in key + "".join(values)]
    elif json_body and request.content_type == "application/json" and _ESCAPED_NUL in request.body:
        with contextlib.suppress(ValueError):  # not JSON: the view says so
            found += list(_json_nul_fields(json.loads(request.body), ""))
    return [field or "body" for field in found]


def frames_checked_by_the_view(view: Any) -> Any:
    """Marks a view whose JSON body is the engine protocol: its decoder answers a bad field with
    an error frame naming the event, which the engine understands, and keeps the rest."""
    view.nul_guard_json = False
    return view


class RejectNulBytesMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        if NUL in request.path:
            return JsonResponse(
                {"detail": "The path contains a NUL byte: it names nothing."}, status=404
            )
        fields = nul_fields(request, json_body=getattr(view, "nul_guard_json", True))
        if fields:
            message = "contains a NUL byte"
            errors = {field: message for field in fields}
            detail = "; ".join(f"{field}: {message}" for field in errors)
            return JsonResponse({"detail": detail, "errors": errors}, status=400)
        return None
