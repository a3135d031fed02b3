"""The JSON log format: one object per line, for a log pipeline to parse (LOG_FORMAT=json, the
default in production). The plain format stays for people reading a terminal (demo, tests)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """ts (UTC, ISO 8601 with milliseconds), level, logger, message, the log context
    (request_id, user, engine: controlplane.logcontext) when known, and exc (the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("request_id", "user", "engine"):
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument of any type still gives one line, never an error.
        return json.dumps(line, ensure_ascii=False, default=str)
