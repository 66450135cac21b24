"""Structured logs for the worker: one ``key=value`` line per event.

Used by every worker module through :func:`log_event`; :func:`configure` is called once by
``streamherd.workers.main``. Values are quoted when they contain spaces. Never pass secret
material here: client configs (they hold SASL passwords) are not logged anywhere.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO


def _fmt(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={event}"] + [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    logger.log(level, " ".join(parts))


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"ts={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={record.name} {record.getMessage()}"
        )
        if record.exc_info:
            line += " exc=" + _fmt(self.formatException(record.exc_info))
        return line


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send streamherd.* logs to stderr as key=value lines (stdout may be the sink)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    logger = logging.getLogger("streamherd")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
