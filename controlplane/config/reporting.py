"""What Django's debug pages (DEBUG=True, the demo's) may show of settings and variables.

Django hides settings whose *name* looks secret (API, TOKEN, KEY, SECRET, PASS...), but a URL
carries its password in its *value*: DATABASE_URL, REDIS_URL, CELERY_BROKER_URL and the channel
layer's hosts are shown whole. This filter hides the password of every URL, and the value of
every password- or token-like query parameter, wherever a string turns up: settings (nested in
dicts, lists and tuples too), request headers and cookies; the reporter does the same to the
local variables of the traceback, the exception's message and causes, and the request's URL and
query string.
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

# scheme://user:password@host -> scheme://user:********@host (the user may be empty: redis://:pw@)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)[^@\s]+@")
_SECRET_PARAM = re.compile(
    r"(?P<head>(?<![\w\-])[\w\-]*(?:password|passwd|pass|pwd|token|secret|key)=)[^&;#'\"\s]+",
    re.I,
)


def hide_url_passwords(text: str, substitute: str = "********************") -> str:
    """``text`` with the password of each URL in it, and secret query parameters, replaced."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{substitute}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['head']}{substitute}", text)


class UrlPasswordSafeFilter(SafeExceptionReporterFilter):
    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        # Exactly a str: a lazy object passes isinstance(..., str) but is not evaluated here.
        if type(cleansed) is str:
            return hide_url_passwords(cleansed, self.cleansed_substitute)
        return cleansed


class UrlPasswordSafeReporter(ExceptionReporter):
    def get_traceback_data(self) -> dict[str, Any]:
        data = super().get_traceback_data()
        substitute = self.filter.cleansed_substitute
        for key in ("exception_value", "exception_notes", "request_insecure_uri"):
            if isinstance(data.get(key), str):
                data[key] = hide_url_passwords(data[key], substitute)
        if "request_GET_items" in data:
            data["request_GET_items"] = [
                (name, self.filter.cleanse_setting(name, value))
                for name, value in data["request_GET_items"]
            ]
        for frame in data.get("frames", []):
            # Each variable as the page shows it (its repr, escaped): an object's repr may hold
            # a URL too (a request's, with its query string).
            frame["vars"] = [
                (name, hide_url_passwords(shown, substitute)) for name, shown in frame["vars"]
            ]
            if frame.get("exc_cause") is not None:
                frame["exc_cause"] = hide_url_passwords(str(frame["exc_cause"]), substitute)
        return data
