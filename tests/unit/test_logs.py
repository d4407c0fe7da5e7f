"""Structured logs: one JSON object per line, whatever the logged strings hold."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from actors.runtime.logs import JsonLineFormatter, log_fields

HOSTILE = 'mallory\n{"level": "INFO", "msg": "forged"}\r\x1b[31mred\x1b[0m\u2028\x00'


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the service's formatter into a string buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger("tests.unit.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def test_hostile_user_id_stays_on_one_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """A userId with newline and escape characters gives exactly one valid JSON line."""
    logger, stream = captured
    log_fields(logger, logging.INFO, "event.consumed", userId=HOSTILE, eventId="e1")
    output = stream.getvalue()
    assert output.endswith("\n")
    [line] = output.splitlines()
    assert output == line + "\n"
    assert "\x1b" not in line
    assert line.isascii()
    record = json.loads(line)
    assert record["userId"] == HOSTILE
    assert (record["msg"], record["eventId"], record["level"]) == ("event.consumed", "e1", "INFO")
    assert record["logger"] == "tests.unit.logs"


def test_hostile_message_stays_on_one_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """A message and a non-string field with control characters also stay one JSON line."""
    logger, stream = captured
    log_fields(logger, logging.WARNING, HOSTILE, detail={"who": HOSTILE}, count=3)
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["msg"] == HOSTILE
    assert record["detail"] == {"who": HOSTILE}
    assert record["count"] == 3


def test_exception_traceback_is_inside_the_json_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    """A logged exception's multi-line traceback is one JSON string on the one line."""
    logger, stream = captured
    try:
        int(HOSTILE)
    except ValueError:
        logger.exception("failed")
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["error"].startswith("Traceback")
    assert (
        record["error"]
        .rstrip()
        .endswith(f"ValueError: invalid literal for int() with base 10: {HOSTILE!r}")
    )
