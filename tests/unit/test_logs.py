"""Structured logs: one JSON object per line, whatever the logged strings hold."""

from __future__ import annotations

import datetime
import io
import json
import logging
import pathlib
from collections.abc import Iterator

import pytest
from support.services import polling_access_line

from actors.runtime.logs import JsonLineFormatter, JsonLinesHandler, log_fields, log_rows

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


@pytest.mark.parametrize("hostile", [HOSTILE, HOSTILE.replace("\u2028", "")], ids=["any", "ascii"])
def test_hostile_user_id_stays_on_one_line(
    captured: tuple[logging.Logger, io.StringIO], hostile: str
) -> None:
    """A userId with newline and escape characters gives exactly one valid JSON line (an
    ASCII-only line and one with other text are written by different encoders)."""
    logger, stream = captured
    log_fields(logger, logging.INFO, "event.consumed", userId=hostile, eventId="e1")
    output = stream.getvalue()
    assert output.endswith("\n")
    [line] = output.splitlines()
    assert output == line + "\n"
    assert "\x1b" not in line
    assert line.isascii()
    record = json.loads(line)
    assert record["userId"] == hostile
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


def test_values_of_every_kind_are_written_as_the_standard_encoder_would(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    """Numbers past 64 bits, non-ASCII text, datetimes and other objects: one ASCII JSON line,
    each value as ``json.dumps(ensure_ascii=True, default=str)`` writes it."""
    logger, stream = captured
    when = datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.UTC)
    fields: dict[str, object] = {
        "big": 2**70,
        "text": "Zoë ✓",
        "when": when,
        "path": pathlib.PurePosixPath("/tmp/x"),
        "nested": {"n": [1, 2.5, None, True]},
    }
    for name, value in fields.items():
        log_fields(logger, logging.INFO, "kinds", **{name: value})
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(fields)
    for line, (name, value) in zip(lines, fields.items(), strict=True):
        assert line.isascii()
        written = line.split(',"msg":"kinds",', 1)[1]
        assert written == json.dumps({name: value}, default=str, separators=(",", ":"))[1:]


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


class CountingStream(io.StringIO):
    """A text stream that counts its writes and flushes: on an unbuffered stdout each write is
    a system call, on a buffered one each flush is."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0
        self.lines_at_flush: list[int] = []

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        self.lines_at_flush.append(self.getvalue().count("\n"))
        super().flush()


@pytest.fixture
def counted() -> Iterator[tuple[logging.Logger, CountingStream]]:
    """A logger writing through the service's handler and formatter, counting flushes."""
    stream = CountingStream()
    handler = JsonLinesHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger("tests.unit.logs.counted")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def test_each_single_line_is_flushed_at_once(
    counted: tuple[logging.Logger, CountingStream],
) -> None:
    logger, stream = counted
    log_fields(logger, logging.INFO, "one", n=1)
    log_fields(logger, logging.WARNING, "two", n=2)
    assert stream.lines_at_flush == [1, 2]
    assert stream.writes == 2


def test_a_group_of_rows_is_one_line_each_and_one_flush_after_the_last(
    counted: tuple[logging.Logger, CountingStream],
) -> None:
    """log_rows writes what log_fields would, line for line, and flushes once, at the end."""
    logger, stream = counted
    rows = [{"eventId": f"e{n}", "userId": HOSTILE, "offset": n} for n in range(5)]
    log_rows(logger, logging.INFO, "event consumed", rows)
    assert stream.lines_at_flush == [5]
    assert stream.writes == 1
    grouped = [json.loads(line) for line in stream.getvalue().splitlines()]

    stream.seek(0)
    stream.truncate()
    for row in rows:
        log_fields(logger, logging.INFO, "event consumed", **row)
    single = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert stream.flushes == 1 + 5
    assert [_without_time(line) for line in grouped] == [_without_time(line) for line in single]
    assert [line["offset"] for line in grouped] == [0, 1, 2, 3, 4]


def test_a_line_logged_after_a_group_is_flushed_on_its_own(
    counted: tuple[logging.Logger, CountingStream],
) -> None:
    logger, stream = counted
    log_rows(logger, logging.INFO, "group", [{"n": 1}, {"n": 2}])
    log_fields(logger, logging.INFO, "alone")
    log_rows(logger, logging.INFO, "empty group", [])
    assert stream.lines_at_flush == [2, 3]
    assert stream.writes == 2


def test_a_group_below_the_level_writes_nothing(
    counted: tuple[logging.Logger, CountingStream],
) -> None:
    logger, stream = counted
    log_rows(logger, logging.DEBUG, "hidden", [{"n": 1}, {"n": 2}])
    assert (stream.getvalue(), stream.flushes) == ("", 0)


def _without_time(line: dict[str, object]) -> dict[str, object]:
    return {name: value for name, value in line.items() if name != "ts"}


def test_a_row_that_fails_to_format_loses_no_other_line(
    counted: tuple[logging.Logger, CountingStream], capsys: pytest.CaptureFixture[str]
) -> None:
    """A row that cannot be formatted is reported (logging's handleError); the group's other
    lines are still written together, and the next line on its own."""

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    logger, stream = counted
    log_rows(logger, logging.INFO, "group", [{"n": 1}, {"n": Unprintable()}, {"n": 3}])
    log_fields(logger, logging.INFO, "after")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["msg"], line.get("n")) for line in lines] == [
        ("group", 1),
        ("group", 3),
        ("after", None),
    ]
    assert stream.writes == 2
    assert "RuntimeError: no text" in capsys.readouterr().err


def test_failure_output_leaves_out_the_access_lines_of_gets() -> None:
    """A failing integration test shows the service's log tail without the access lines of
    the GETs it polled with (as the service writes them), and keeps every other line."""
    formatter = JsonLineFormatter()

    def access_line(method: str) -> str:
        record = logging.LogRecord("actors.http.access", logging.INFO, "", 0, "http", (), None)
        record.structured_fields = {"method": method, "path": "/health", "status": 503}
        return formatter.format(record)

    assert polling_access_line(access_line("GET"))
    assert not polling_access_line(access_line("POST"))
    assert not polling_access_line('{"logger":"actors.kafka.librdkafka","msg":"REQTMOUT GET"}')
    assert not polling_access_line('Traceback "actors.http.access" method GET')
