"""Structured logs: one JSON object per line on stdout.

JSON escaping is what makes the logs safe: a ``userId`` holding a newline or a control
character is written as ``\\n`` or ``\\u001b`` inside a string, so it can never forge a line.
Payload contents are never logged at INFO.

Synopsis::

    configure_logging("INFO")
    log = logging.getLogger("actors.consumer")
    log_fields(log, logging.INFO, "event.consumed", eventId="...", userId="u1")
    # {"ts":"...","level":"INFO","logger":"actors.consumer","msg":"event.consumed",
    #  "eventId":"...","userId":"u1"}
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import orjson

from actors.domain.events import utc_timestamp_at

__all__ = ["JsonLinesHandler", "configure_logging", "log_fields", "log_rows"]

_FIELDS_ATTRIBUTE = "structured_fields"

#: Set on every record of a :func:`log_rows` group but its last: more lines follow at once.
_MORE_FOLLOW_ATTRIBUTE = "more_lines_follow"


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
        return _encode_line(line)


def _encode_line(line: Mapping[str, Any]) -> str:
    """The line as the standard encoder writes it: compact, ``ensure_ascii``, ``default=str``.

    # NOTE: orjson writes a consumer's line in a sixth of the time (0.6 against 3.8 µs),
    # which counts on its line per event. It cannot escape non-ASCII text and refuses some
    # values (an integer past 64 bits, a key that is not a string): those lines are written by
    # the standard encoder. Datetimes and dataclasses it hands to ``default`` as the standard
    # encoder does; an enum it writes as its value, where ``str`` would give ``Class.MEMBER``,
    # and NaN as ``null`` (the standard encoder writes ``NaN``, which is not JSON).
    """
    try:
        fast = orjson.dumps(line, default=str, option=_PASS_TO_DEFAULT)
    except orjson.JSONEncodeError:
        return _LINE_ENCODER.encode(line)
    return fast.decode("ascii") if fast.isascii() else _LINE_ENCODER.encode(line)


#: One encoder for every line: ``json.dumps`` with options builds a new one per call.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=True, default=str, separators=(",", ":"))

_PASS_TO_DEFAULT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class JsonLinesHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes and flushes each record at once, except inside a
    :func:`log_rows` group, which it writes in one piece after its last line.

    # NOTE: each write to stdout is a system call (``PYTHONUNBUFFERED=1``, as in the container,
    # writes through; otherwise the flush does it); one per line was a tenth of the service's
    # CPU under batch load, where the consumer logs a line for every event. A group is emitted
    # whole before its caller goes on (the consumer stores its offsets only after that), so
    # holding its lines back until its last delays none of them past the work they report.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._held: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds self.lock around emit: the held lines are never shared.
        try:
            self._held.append(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001  # logging's contract: a handler never raises
            self.handleError(record)  # the group's other lines are still written
        if getattr(record, _MORE_FOLLOW_ATTRIBUTE, False):
            return
        lines, self._held = "".join(self._held), []
        try:
            self.stream.write(lines)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001
            self.handleError(record)


def configure_logging(level: str) -> None:
    """Send every log record, ours and the libraries', as JSON lines to stdout."""
    handler = JsonLinesHandler(sys.stdout)
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


def log_rows(
    logger: logging.Logger, level: int, message: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """One line per row, as :func:`log_fields` would write each: ``message`` with the row's
    fields. A :class:`JsonLinesHandler` flushes once, after the last line."""
    if not logger.isEnabledFor(level):
        return
    last = len(rows) - 1
    for index, fields in enumerate(rows):
        extra = {_FIELDS_ATTRIBUTE: fields, _MORE_FOLLOW_ATTRIBUTE: index < last}
        record = logger.makeRecord(logger.name, level, "", 0, message, (), None, extra=extra)
        logger.handle(record)
