"""What a new user meets first: the local broker's address, and reading the topic from the host
exactly as the README shows.

``--local-broker`` starts Tansu, so its test is about Tansu on every leg; the broker that starts
late is of the suite's kind (``TEST_BROKER``).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.brokers import selected_kind, start_broker
from support.services import REPO_ROOT, Spawn
from support.waiting import wait_until

from actors.devtools.local_broker import free_port

README = REPO_ROOT / "README.md"


def readme_read_topic_snippet() -> str:
    """The Python program of the README's read-topic example (the heredoc's body)."""
    text = README.read_text()
    marker = text.index("<!-- read-topic:")
    found = re.search(r"<<'EOF'\n(.*?)\nEOF\n", text[marker:], re.DOTALL)
    assert found, "the README's read-topic example has no <<'EOF' heredoc"
    return found.group(1)


@pytest.mark.broker_neutral
def test_local_broker_is_named_in_one_plain_line_and_readable_from_the_host(
    process_control: Spawn,
) -> None:
    """--local-broker with LOCAL_BROKER_PORT prints 'local Kafka broker at 127.0.0.1:PORT (in
    memory)', and the README's snippet run on the host lists a POSTed event from that broker."""
    port = free_port()
    app = process_control({"LOCAL_BROKER_PORT": str(port)}, args=("--local-broker",))
    line = f"local Kafka broker at 127.0.0.1:{port} (in memory)"
    assert line in app.log_text().splitlines()
    created = app.post_event(user_id="first-contact")

    def read_topic() -> str | None:
        result = subprocess.run(
            [sys.executable, "-", f"127.0.0.1:{port}", app.topic],
            input=readme_read_topic_snippet(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout if created["eventId"] in result.stdout else None

    output = wait_until(read_topic, 20, what="the README's snippet to print the event")
    assert re.search(r"^\d+ \d+ b'first-contact' \{.*\}$", output, re.MULTILINE), output


def test_http_is_up_at_once_without_a_broker_and_all_works_once_one_answers(
    process_control: Spawn, tmp_path: Path
) -> None:
    """With nothing on the broker's port, HTTP answers within a second: /health 503 naming the
    broker, POST 503 with Retry-After, the listing 200 and empty. When a broker starts on that
    port, the service becomes healthy and publishes without being restarted."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    started = time.monotonic()
    app = process_control(bootstrap_servers=address, wait_healthy=False)

    def answering() -> httpx.Response | None:
        with contextlib.suppress(httpx.TransportError):
            return app.http.get("/health", timeout=0.5)
        return None

    health = wait_until(answering, 10, what="any answer on HTTP", interval=0.02)
    up_after = time.monotonic() - started
    print(f"HTTP answered {up_after:.2f} s after spawn, with no broker")
    assert up_after < 1.5  # the process' own interpreter start-up included
    assert health.status_code == 503
    waiting = f"waiting for the broker at {address}"
    assert health.json()["actors"]["publisher"]["detail"] == waiting
    post = app.http.post("/events/generate", json={"userId": "u1", "eventType": "LOGIN"})
    assert post.status_code == 503
    assert int(post.headers["Retry-After"]) >= 1
    assert post.json()["message"] == waiting
    assert app.processed() == []

    broker = start_broker(selected_kind(), log_dir=tmp_path, port=port)
    try:
        app.wait_healthy()
        created = app.post_event(user_id="late-broker")
        app.wait_processed({created["eventId"]})
        assert app.terminate() == 0
    finally:
        broker.stop()


@pytest.mark.broker_neutral
def test_taken_http_port_fails_at_once_with_one_line_and_status_2(process_control: Spawn) -> None:
    """With HTTP_PORT already in use the process exits 2 within seconds, its whole output one
    line naming the variable."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        app = process_control({"HTTP_PORT": str(port)}, wait_healthy=False)
        exit_code = app.process.wait(10)
        took = time.monotonic() - started
    print(f"taken port: exit {exit_code} after {took:.2f} s")
    assert exit_code == 2
    assert app.log_text() == f"configuration error: HTTP_PORT={port}: address already in use\n"
    assert took < 3
