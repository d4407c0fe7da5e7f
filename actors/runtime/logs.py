"""Structured logs: one JSON object per line on stdout.

JSON escaping is what makes the logs safe: a ``userId`` holding a newline or a control
character is written as ``\\n`` or ``\\u001b`` inside a string, so it can never forge a line.
Payload contents are never logged at INFO.

Synopsis::

    configure_logging("INFO")
    log = logging.getLogger("actors.consumer")
    log_fields(log, logging.INFO, "event.consumed", eventId="...", userId="u1")
    # {"ts": "...", "level": "INFO", "logger": "actors.consumer", "msg": "event.consumed",
    #  "eventId": "...", "userId": "u1"}
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from actors.domain.events import utc_timestamp_at

__all__ = ["configure_logging", "log_fields"]

_FIELDS_ATTRIBUTE = "structured_fields"


class JsonLineFormatter(logging.Formatter):
    """Render a record as one JSON object; structured fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": utc_timestamp_at(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS_ATTRIBUTE, {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return _LINE_ENCODER.encode(line)


#: One encoder for every line: ``json.dumps`` with options builds a new one per call.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=True, default=str)


def configure_logging(level: str) -> None:
    """Send every log record, ours and the libraries', as JSON lines to stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The lines show none of these; looking them up is a good part of each record's cost.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def log_fields(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with ``fields`` as separate JSON keys (never interpolated into text).

    # NOTE: the record is made here rather than by ``logger.log``, which first walks the stack
    # to find the caller's file and line: a good part of the cost of a line, on the consumer's
    # one line per event, and the JSON lines never show them.
    """
    if logger.isEnabledFor(level):
        record = logger.makeRecord(
            logger.name, level, "", 0, message, (), None, extra={_FIELDS_ATTRIBUTE: fields}
        )
        logger.handle(record)
