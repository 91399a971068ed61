"""Logging for the service: one JSON object per line on stderr (access lines carry request id, route,
status, latency and the key's name, never the key). Tracebacks of a failed start are kept out of the log:
the cause is logged as one line by the lifespan."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        if record.name == "pipeline.access":
            line.update(json.loads(message))
        else:
            line["message"] = message
        if record.exc_info and record.name != "uvicorn.error":
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _NoStartupTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Traceback (most recent call last)")


def log_config(level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and the service."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"no_startup_traceback": {"()": _NoStartupTraceback}},
        "handlers": {"stderr": handler, "uvicorn": {**handler, "filters": ["no_startup_traceback"]}},
        "loggers": {
            "uvicorn.error": {"handlers": ["uvicorn"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": level},
    }
