"""What a new user meets first: the local broker's address, and reading the topic from the host
exactly as the README shows."""

from __future__ import annotations

import re
import subprocess
import sys

from actors.local_broker import free_port

from .conftest import REPO_ROOT, Spawn, wait_until

README = REPO_ROOT / "README.md"


def readme_read_topic_snippet() -> str:
    """The Python program of the README's read-topic example (the heredoc's body)."""
    text = README.read_text()
    marker = text.index("<!-- read-topic:")
    found = re.search(r"<<'EOF'\n(.*?)\nEOF\n", text[marker:], re.DOTALL)
    assert found, "the README's read-topic example has no <<'EOF' heredoc"
    return found.group(1)


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
