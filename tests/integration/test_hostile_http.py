"""Hostile input over real HTTP: every limit answers a clear 4xx, nothing hostile is published,
the API matches its own OpenAPI document under fuzzing, logs cannot be forged, secrets stay out.

The limits asserted here are the service's defaults (the spawned service gets no overrides, so
in external mode the tests also hold against a service run with the default limits).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from support.kafka_tools import KafkaTools
from support.services import ServiceHandle, Services, Spawn

from actors.runtime.settings import SETTINGS

#: Exercises no broker behaviour of its own: runs in the Tansu leg only (see .ci/run).
pytestmark = pytest.mark.broker_neutral

DEFAULTS = {setting.variable: setting.default for setting in SETTINGS}
MAX_BODY_BYTES = int(DEFAULTS["MAX_BODY_BYTES"])
MAX_USER_ID_LENGTH = int(DEFAULTS["MAX_USER_ID_LENGTH"])
MAX_PAYLOAD_DEPTH = int(DEFAULTS["MAX_PAYLOAD_DEPTH"])
MAX_PAYLOAD_BYTES = int(DEFAULTS["MAX_PAYLOAD_BYTES"])

JSON_HEADERS = {"Content-Type": "application/json"}

#: Bound on one schemathesis run (it takes a few seconds here).
FUZZ_TIMEOUT = 60

#: Examples per operation in schemathesis' fuzzing phase (its coverage phase adds its own).
FUZZ_EXAMPLES = 30


@attrs.frozen
class Hostile:
    """One hostile request and the answer it must get."""

    case: str
    content: bytes | Iterator[bytes]
    status: int
    error: str
    headers: Mapping[str, str] = JSON_HEADERS
    #: For 400: the fields the ``problems`` list must name, and words of their messages.
    problems: Mapping[str, str] = attrs.field(factory=dict)


def marker() -> str:
    """A unique userId for one test: every hostile body and every control carries it."""
    return f"hostile-{uuid.uuid4().hex}"


def body(user_id: str, **fields: Any) -> bytes:
    return json.dumps({"userId": user_id, "eventType": "LOGIN", **fields}).encode()


def nested(levels: int) -> dict[str, Any]:
    """Objects nested ``levels`` deep (``{}`` is one level)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def check_error(case: Hostile, response: httpx.Response) -> list[str]:
    """What is wrong with ``response`` as the answer to ``case``; empty when nothing is."""
    wrong = []
    if response.status_code != case.status:
        wrong.append(f"status {response.status_code}, expected {case.status}: {response.text}")
    if response.headers.get("content-type", "").split(";")[0] != "application/json":
        wrong.append(f"content-type {response.headers.get('content-type')!r}")
    try:
        answer = response.json()
    except ValueError:
        return [*wrong, f"body is not JSON: {response.text[:200]!r}"]
    if not isinstance(answer, dict):
        return [*wrong, f"body is not an object: {answer!r}"]
    if answer.get("error") != case.error:
        wrong.append(f"error {answer.get('error')!r}, expected {case.error!r}")
    if not isinstance(answer.get("message"), str) or not answer["message"]:
        wrong.append(f"no message: {answer!r}")
    if case.status == 400:
        problems = answer.get("problems")
        if not isinstance(problems, list) or not problems:
            return [*wrong, f"no problems listed: {answer!r}"]
        listed = {problem.get("field"): problem.get("message", "") for problem in problems}
        for field, words in case.problems.items():
            if words not in listed.get(field, ""):
                wrong.append(f"problem {field!r} should say {words!r}; listed {listed!r}")
    return wrong


def send_hostile(app: ServiceHandle, cases: list[Hostile]) -> list[str]:
    """POST every case; returns one line per wrong answer."""
    wrong = []
    for case in cases:
        # A fresh connection each: a connection left unusable by an early answer is what
        # test_connection_survives_an_early_rejection is about, not these status checks.
        with httpx.Client(base_url=app.base_url, timeout=10) as client:
            response = client.post("/events/generate", content=case.content, headers=case.headers)
        wrong.extend(f"{case.case}: {problem}" for problem in check_error(case, response))
    return wrong


def assert_only_controls_published(
    kafka: KafkaTools, app: ServiceHandle, user: str, controls: list[dict[str, Any]]
) -> None:
    """The independent reader finds exactly the controls among records carrying ``user``.

    Hostile bodies share the controls' userId (the key), so anything published from them would
    sit on the same partition before the last control, which is read before this returns.
    """
    last = controls[-1]["eventId"].encode()
    messages = kafka.read(
        app.topic, until=lambda read: any(last in (m.value() or b"") for m in read), timeout=10
    )
    ours = [m for m in messages if user.encode() in (m.key() or b"") + (m.value() or b"")]
    assert [json.loads(m.value() or b"null") for m in ours] == controls


def assert_rejected_and_unpublished(
    app: ServiceHandle, kafka: KafkaTools, user: str, cases: list[Hostile]
) -> None:
    """Controls around the cases are published; every case is answered as it says and none of
    them reaches the topic; the service is still healthy."""
    controls = [app.post_event(user_id=user, payload={"control": 1})]
    wrong = send_hostile(app, cases)
    controls.append(app.post_event(user_id=user, payload={"control": 2}))
    assert wrong == []
    assert_only_controls_published(kafka, app, user, controls)
    health = app.health()
    assert health.status_code == 200, health.text


def chunks(total: int, size: int = 8192, *, prefix: bytes = b"") -> Iterator[bytes]:
    """A body of ``total`` bytes sent as chunks: JSON that would be valid if it were short."""
    yield prefix
    sent = len(prefix)
    while sent < total:
        piece = b" " * min(size, total - sent)
        sent += len(piece)
        yield piece


# --- body limits -----------------------------------------------------------------------------


def test_oversized_bodies_get_413(service: Services, kafka: KafkaTools) -> None:
    """Bodies above MAX_BODY_BYTES get 413, with a Content-Length and sent chunked."""
    app = service()
    user = marker()
    padding = MAX_BODY_BYTES + 1 - len(body(user, payload={"p": ""}))
    just_over = body(user, payload={"p": "x" * padding})
    assert len(just_over) == MAX_BODY_BYTES + 1
    opening = body(user)[:-1] + b', "payload": {"p": "'
    cases = [
        Hostile("one byte over", just_over, 413, "request_entity_too_large"),
        Hostile("1 MB", body(user, payload={"p": "x" * 2**20}), 413, "request_entity_too_large"),
        Hostile(
            "chunked, one chunk over",
            chunks(MAX_BODY_BYTES + 1, prefix=opening),
            413,
            "request_entity_too_large",
        ),
        Hostile(
            "chunked, 4 MB",
            chunks(4 * 2**20, prefix=opening),
            413,
            "request_entity_too_large",
        ),
    ]
    assert_rejected_and_unpublished(app, kafka, user, cases)


def test_chunked_body_is_really_sent_chunked(service: Services) -> None:
    """The chunked cases above reach the service without a Content-Length (a real chunked body)."""
    app = service()
    response = app.http.post(
        "/events/generate", content=chunks(MAX_BODY_BYTES + 1), headers=JSON_HEADERS
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    # A chunked body within the limit is read whole and judged on its content.
    small = app.http.post(
        "/events/generate",
        content=iter([b'{"userId": "chunked-user",', b' "eventType": "LOGIN"}']),
        headers=JSON_HEADERS,
    )
    assert small.request.headers.get("transfer-encoding") == "chunked"
    assert small.status_code == 201, small.text


def test_invalid_bodies_get_400(service: Services, kafka: KafkaTools) -> None:
    """Each validation limit answers 400 listing the problems, and nothing is published."""
    app = service()
    user = marker()
    huge_integer = "1" + "0" * 400
    cases = [
        Hostile(
            "userId too long",
            body(user + "u" * (MAX_USER_ID_LENGTH + 1 - len(user))),
            400,
            "invalid_request",
            problems={"userId": f"at most {MAX_USER_ID_LENGTH} characters"},
        ),
        Hostile(
            "blank userId",
            body(" \t "),
            400,
            "invalid_request",
            problems={"userId": "must not be empty"},
        ),
        Hostile(
            "invisible userId",
            body("\u200b\ufeff\u2060 \u00a0"),
            400,
            "invalid_request",
            problems={"userId": "must not be empty"},
        ),
        Hostile(
            "payload too deep",
            body(user, payload=nested(MAX_PAYLOAD_DEPTH + 1)),
            400,
            "invalid_request",
            problems={"payload": f"deeper than {MAX_PAYLOAD_DEPTH} levels"},
        ),
        Hostile(
            "payload too large",
            body(user, payload={"p": "x" * MAX_PAYLOAD_BYTES}),
            400,
            "invalid_request",
            problems={"payload": f"at most {MAX_PAYLOAD_BYTES} bytes"},
        ),
        Hostile(
            "body nested 10000 levels",
            b'{"userId": "' + user.encode() + b'", "p": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
            400,
            "invalid_request",
            problems={"body": "nested too deeply"},
        ),
        Hostile(
            "not UTF-8",
            body(user).replace(user.encode(), user.encode() + b"\xff\xfe"),
            400,
            "invalid_request",
            problems={"body": "not valid UTF-8"},
        ),
        Hostile(
            "lone surrogate",
            body(user).replace(user.encode(), user.encode() + b"\\ud800"),
            400,
            "invalid_request",
            problems={"body": "not valid JSON"},
        ),
        Hostile(
            "duplicate keys",
            body(user)[:-1] + b', "userId": "someone-else"}',
            400,
            "invalid_request",
            problems={"body": "duplicate key 'userId'"},
        ),
        Hostile(
            "huge integer",
            body(user)[:-1] + f', "payload": {{"n": {huge_integer}}}}}'.encode(),
            400,
            "invalid_request",
            problems={"body": "number out of range"},
        ),
        Hostile(
            "int64 overflow",
            body(user)[:-1] + b', "payload": {"n": 9223372036854775808}}',
            400,
            "invalid_request",
            problems={"body": "number out of range"},
        ),
        Hostile(
            "1e999",
            body(user)[:-1] + b', "payload": {"x": 1e999}}',
            400,
            "invalid_request",
            problems={"body": "number out of range"},
        ),
        Hostile(
            "NaN",
            body(user)[:-1] + b', "payload": {"x": NaN}}',
            400,
            "invalid_request",
            problems={"body": "NaN is not valid JSON"},
        ),
        Hostile(
            "not an object",
            json.dumps([{"userId": user, "eventType": "LOGIN"}]).encode(),
            400,
            "invalid_request",
            problems={"body": "must be a JSON object"},
        ),
        Hostile(
            "every field wrong",
            json.dumps({"userId": 7, "eventType": "PURCHASE", "payload": [user]}).encode(),
            400,
            "invalid_request",
            problems={
                "userId": "must be a string",
                "eventType": "must be one of",
                "payload": "must be a JSON object",
            },
        ),
    ]
    assert_rejected_and_unpublished(app, kafka, user, cases)


def test_wrong_content_types_get_415(service: Services, kafka: KafkaTools) -> None:
    """A valid event body with a non-JSON content type (or none) gets 415 and is not published."""
    app = service()
    user = marker()
    valid = body(user)
    form = f"userId={user}&eventType=LOGIN".encode()
    cases = [
        Hostile("text/plain", valid, 415, "unsupported_media_type", {"Content-Type": "text/plain"}),
        Hostile("no content type", valid, 415, "unsupported_media_type", {}),
        Hostile(
            "form-encoded",
            form,
            415,
            "unsupported_media_type",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        Hostile(
            "multipart",
            b"--b\r\nContent-Disposition: form-data; name=e\r\n\r\n" + valid + b"\r\n--b--\r\n",
            415,
            "unsupported_media_type",
            {"Content-Type": "multipart/form-data; boundary=b"},
        ),
    ]
    assert_rejected_and_unpublished(app, kafka, user, cases)


def read_response(sock: socket.socket) -> tuple[int, bytes] | None:
    """One HTTP/1.1 response with a Content-Length from ``sock``; ``None`` if the server
    closed the connection first. Raises ``TimeoutError`` when nothing comes in time."""
    data = b""
    while b"\r\n\r\n" not in data:
        received = sock.recv(65536)
        if not received:
            return None
        data += received
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers["content-length"])
    while len(rest) < length:
        received = sock.recv(65536)
        if not received:
            return None
        rest += received
    return int(lines[0].split()[1]), rest[:length]


def slow_rejected_request(host: str, port: int, content_type: str, content: bytes) -> str:
    """POST the headers, then the body a moment later (a slow client), read the rejection,
    then ask GET /health on the same connection.

    Returns:
        ``"<first status> then <second status>"``, ``"... then closed"`` when the server closed
        the connection (fine: the client reconnects), or ``"... then hung"``.
    """
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(
            f"POST /events/generate HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(content)}\r\n\r\n".encode()
        )
        first: tuple[int, bytes] | None = None
        time.sleep(0.2)  # not an assertion: the slow client's body follows its headers later
        try:
            sock.sendall(content)
            first = read_response(sock)
            assert first is not None, "closed without an answer"
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            second = read_response(sock)
        except ConnectionError:
            second = None
        except TimeoutError:
            return f"{first[0] if first else 'no answer'} then hung"
        return f"{first[0]} then {'closed' if second is None else second[0]}"


def test_connection_survives_an_early_rejection(service: Services) -> None:
    """After a 415 or 413 to a client that sends its body late, the keep-alive connection
    answers the next request or is closed by the server; it never hangs."""
    app = service()
    host, port = app.base_url.removeprefix("http://").split(":")
    outcomes = {
        "415": slow_rejected_request(host, int(port), "text/plain", body("slow-client")),
        "413": slow_rejected_request(
            host, int(port), "application/json", b" " * (MAX_BODY_BYTES + 1)
        ),
    }
    assert outcomes == {
        "415": outcomes["415"] if outcomes["415"].endswith("closed") else "415 then 200",
        "413": outcomes["413"] if outcomes["413"].endswith("closed") else "413 then 200",
    }
    assert app.health().status_code == 200


def address(app: ServiceHandle) -> tuple[str, int]:
    host, port = app.base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def until_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while received := sock.recv(65536):
        data += received
    return data


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, rest


def test_stalled_body_gets_one_408_at_body_read_timeout(process_control: Spawn) -> None:
    """A body that stops half-way is answered 408 JSON after HTTP_BODY_READ_SECONDS, the
    connection is closed, and the service logs one line for it, no traceback."""
    app = process_control(env={"HTTP_BODY_READ_SECONDS": "1"})
    with socket.create_connection(address(app), timeout=10) as sock:
        sock.sendall(
            b"POST /events/generate HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        status, headers, content = split_response(until_closed(sock))
        took = time.monotonic() - started
    print(f"stalled body answered {status} after {took:.2f} s")
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert json.loads(content)["error"] == "request_timeout"
    assert 0.9 < took < 3
    time.sleep(0.2)  # not an assertion: lets the access line reach the log file
    mentions = [line for line in app.log_text().splitlines() if "/events/generate" in line]
    assert len(mentions) == 1, mentions
    assert "Traceback" not in app.log_text()


def test_websocket_upgrade_gets_json_404(process_control: Spawn) -> None:
    """A WebSocket handshake on any path gets a JSON 404 and a closed connection; nothing is
    logged but its access line."""
    app = process_control()
    handshake = (
        b"GET /events/processed HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(address(app), timeout=10) as sock:
        sock.sendall(handshake)
        status, headers, content = split_response(until_closed(sock))
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(content)["error"] == "not_found"
    assert app.health().status_code == 200
    assert "Traceback" not in app.log_text()
    assert not [line for line in app.log_lines() if line["level"] in {"ERROR", "CRITICAL"}]


def test_content_length_with_chunked_gets_400_and_close(service: Services) -> None:
    """Content-Length beside Transfer-Encoding: chunked (RFC 9112 6.1) is a JSON 400, and the
    connection is closed: a request pipelined behind it is never read."""
    app = service()
    event = body(marker())
    chunked = f"{len(event):x}\r\n".encode() + event + b"\r\n0\r\n\r\n"
    smuggled = (
        b"POST /events/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    )
    with socket.create_connection(address(app), timeout=10) as sock:
        sock.sendall(smuggled + b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        raw = until_closed(sock)
    status, headers, content = split_response(raw)
    assert status == 400
    assert headers["connection"] == "close"
    assert json.loads(content)["problems"][0]["field"] == "headers"
    assert raw.count(b"HTTP/1.1 ") == 1, raw


def test_protocol_errors_get_empty_answers_and_close(service: Services) -> None:
    """What h11 rejects before the app sees it is answered by hypercorn with the status and an
    empty body (README: not JSON), then closed: a bad request line, an oversized header
    block, an unknown transfer coding."""
    app = service()
    requests = {
        400: b"GARBAGE\r\n\r\n",
        431: b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        501: b"POST /events/generate HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n",
    }
    answers = {}
    for expected, raw in requests.items():
        with socket.create_connection(address(app), timeout=10) as sock:
            with contextlib.suppress(ConnectionError):
                sock.sendall(raw)
            status, headers, content = split_response(until_closed(sock))
        answers[expected] = (status, headers.get("content-length"), content)
    assert answers == {status: (status, "0", b"") for status in requests}
    assert app.health().status_code == 200


def test_absolute_form_target_is_served_as_the_local_path(service: Services) -> None:
    """``GET http://evil.example/health`` is answered as ``GET /health`` (README): the host in
    the target is ignored, nothing is fetched from it."""
    app = service()
    with socket.create_connection(address(app), timeout=10) as sock:
        sock.sendall(
            b"GET http://evil.example/health HTTP/1.1\r\nHost: evil.example\r\n"
            b"Connection: close\r\n\r\n"
        )
        status, _headers, content = split_response(until_closed(sock))
    assert status == 200
    assert set(json.loads(content)) == {"status", "actors", "counters", "gauges"}


# --- the OpenAPI document under fuzzing ------------------------------------------------------


def test_openapi_document_is_served(service: Services) -> None:
    """GET /openapi.json is an OpenAPI 3 document describing every route with the live limits."""
    app = service()
    response = app.http.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/",
        "/events/batch",
        "/events/generate",
        "/events/processed",
        "/events/stream",
        "/events/{eventId}",
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
    }
    new_event = document["components"]["schemas"]["NewEvent"]
    assert new_event["properties"]["userId"]["maxLength"] == MAX_USER_ID_LENGTH
    responses = document["paths"]["/events/generate"]["post"]["responses"]
    assert {"201", "400", "413", "415", "503"} <= set(responses)


#: The live stream answers for as long as its client reads: fuzzed apart, on a service whose
#: streams end after STREAM_LIFETIME_MS (test_fuzzed_stream_requests_...).
STREAM = "/events/stream"


def run_schemathesis(
    app: ServiceHandle,
    tmp_path: Path,
    checks: list[str],
    *,
    paths: tuple[str, ...] = ("--exclude-path", STREAM),
    operations: int = 5,
) -> dict[str, Any]:
    """Fuzz the running service against its own /openapi.json; returns the JSON run report.

    ``paths`` selects the operations (schemathesis' --include-path/--exclude-path), of which
    at least ``operations`` must be tested.
    """
    config = tmp_path / "schemathesis.toml"
    # A 5xx is a failure, except the 503 the document promises (overload, broker down). A
    # batch with more events than maxItems is refused with the documented 413, which
    # schemathesis does not count among the rejections of schema-violating data by default.
    config.write_text(
        '[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "503"]\n'
        "[checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", '
        '"422", "428", "429", "5xx"]\n'
    )
    report_path = tmp_path / "schemathesis-report.json"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color"),
        *("run", f"{app.base_url}/openapi.json", "--checks", ",".join(checks), *paths),
        *("--max-examples", str(FUZZ_EXAMPLES), "--phases", "examples,coverage,fuzzing"),
        *("--request-timeout", "5", "--generation-database", "none", "--workers", "1"),
        *("--report", "json", "--report-json-path", str(report_path)),
    ]
    run = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=FUZZ_TIMEOUT, check=False
    )
    print(run.stdout[-3000:])
    assert report_path.exists(), f"schemathesis wrote no report:\n{run.stdout}\n{run.stderr}"
    report: dict[str, Any] = json.loads(report_path.read_text())
    cases = report["test_cases"]["generated"]
    print(f"schemathesis: {cases} test cases, checks {checks}, seed {report['seed']}")
    assert report["operations"]["tested"] == report["operations"]["selected"] >= operations, report
    assert cases >= operations * FUZZ_EXAMPLES // 2, report["test_cases"]
    assert report["errors"] == [], run.stdout[-5000:]
    assert report["failures"] == [], run.stdout[-5000:]
    assert run.returncode == 0, run.stdout[-5000:]
    return report


def test_fuzzed_requests_get_no_server_errors_and_match_the_schema(
    service: Services, tmp_path: Path
) -> None:
    """schemathesis finds no 5xx (but the documented 503) and every response matches the schema."""
    app = service()
    run_schemathesis(
        app,
        tmp_path,
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_headers_conformance",
            "response_schema_conformance",
        ],
    )
    assert app.health().status_code == 200


def test_fuzzed_requests_outside_the_schema_are_rejected(service: Services, tmp_path: Path) -> None:
    """schemathesis' schema-violating requests are all refused with a 4xx."""
    # Its converse, positive_data_acceptance, is left out on purpose: the service rejects
    # schema-valid bodies that OpenAPI 3.0 cannot describe (integers beyond int64 anywhere in
    # the body, payloads past MAX_PAYLOAD_DEPTH or MAX_PAYLOAD_BYTES, blank userIds), which
    # test_invalid_bodies_get_400 pins down exactly.
    app = service()
    run_schemathesis(app, tmp_path, ["negative_data_rejection", "not_a_server_error"])
    assert app.health().status_code == 200


def test_fuzzed_stream_requests_get_no_server_errors_and_match_the_schema(
    process_control: Spawn, tmp_path: Path
) -> None:
    """GET /events/stream under schemathesis (valid and invalid filters and Last-Event-ID),
    on a service whose streams end after 200 ms so that each fuzzed request completes."""
    app = process_control({"STREAM_LIFETIME_MS": "200"})
    app.post_event(user_id="fuzzed-stream")  # so that resumed streams have something to send
    run_schemathesis(
        app,
        tmp_path,
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_headers_conformance",
            "negative_data_rejection",
        ],
        paths=("--include-path", STREAM),
        operations=1,
    )
    assert app.health().json()["gauges"]["stream_subscribers"] <= 1


# --- logs and secrets ------------------------------------------------------------------------


def test_hostile_user_id_cannot_forge_log_lines(process_control: Spawn) -> None:
    """A userId with newlines, escapes and fake JSON stays inside one log line; the payload is
    never logged at INFO."""
    app = process_control()
    forged = '"} {"level": "CRITICAL", "msg": "forged'
    evil = f"evil-{uuid.uuid4().hex}\n{forged}\r\n\x1b[31mred\x1b[0m\r{forged}"
    secret = f"sk-live-{uuid.uuid4().hex}"
    created = app.post_event(user_id=evil, payload={"apiKey": secret, "note": [secret]})
    assert created["userId"] == evil
    app.wait_processed({created["eventId"]})
    app.wait_for_logs(
        lambda line: line["msg"] == "event consumed" and line["eventId"] == created["eventId"]
    )

    text = app.log_text()
    lines = text.split("\n")
    assert lines[-1] == ""  # every line is terminated
    records = []
    for number, line in enumerate(lines[:-1], 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), f"line {number}: {line!r}"
        records.append(record)
    carrying = [record for record in records if record.get("userId") == evil]
    assert [record["msg"] for record in carrying] == ["event consumed"]
    assert carrying[0]["eventId"] == created["eventId"]
    assert not any(record["level"] == "CRITICAL" for record in records)
    assert "\x1b" not in text
    assert "\r" not in text
    assert secret not in text


def test_sasl_password_never_appears_in_output(process_control: Spawn) -> None:
    """With SASL settings the broker cannot satisfy, the password appears nowhere in the output."""
    secret = f"sasl-pw-{uuid.uuid4().hex}"
    app = process_control(
        env={
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": secret,
            "SHUTDOWN_TIMEOUT_MS": "3000",
        },
        wait_healthy=False,
    )
    # Let it try a few times: each attempt is a chance to log its configuration.
    app.wait_for_logs(
        lambda line: line["msg"] in {"broker not reachable; retrying", "kafka client error"},
        count=2,
        timeout=20,
    )
    exit_code = app.terminate(timeout=10)
    output = app.log_text()
    seen = sorted({line["msg"] for line in app.log_lines()})
    print(f"SASL service exited {exit_code}; its log messages: {seen}")
    assert secret not in output
    assert secret.encode().hex() not in output


def test_invalid_sasl_config_exits_2_naming_the_variable(process_control: Spawn) -> None:
    """SASL_SSL without a mechanism exits 2 with one line naming KAFKA_SASL_MECHANISM."""
    secret = f"sasl-pw-{uuid.uuid4().hex}"
    app = process_control(
        env={"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": secret},
        wait_healthy=False,
    )
    try:
        exit_code = app.process.wait(15)
    except subprocess.TimeoutExpired:
        app.kill()
        raise AssertionError(
            f"still running with an invalid configuration:\n{app.log_tail()}"
        ) from None
    output = app.log_text().splitlines()
    assert exit_code == 2, output
    assert len(output) == 1, output
    assert "KAFKA_SASL_MECHANISM" in output[0]
    assert secret not in output[0]
