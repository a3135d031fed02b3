"""The admin's date drill-down, bounded to the calendar.

Django builds the drill-down's upper bound as the next day, month or year; at 9999-12-31 there is
none, and the overflow escapes the admin's handling of bad parameters as a server error. Here it
is a bad parameter like any other: the change list answers with its "?e=1" redirect.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.http import HttpRequest


class BoundedChangeList(ChangeList):
    def get_filters(self, request: HttpRequest) -> Any:
        try:
            return super().get_filters(request)
        except (OverflowError, ValueError) as exc:
            raise IncorrectLookupParameters(exc) from exc


class BoundedDateHierarchy:
    """Mix into every ModelAdmin with a ``date_hierarchy``."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return BoundedChangeList
