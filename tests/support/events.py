"""Events as another producer would write them, for tests that put records on the topic.

Synopsis::

    event = make_event(unique_user(), "LOGIN", page="/home")
    kafka.produce(topic, [(event["userId"].encode(), encode(event))])
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

__all__ = ["encode", "make_event", "unique_user"]


def make_event(user_id: str, event_type: str = "LOGIN", **payload: Any) -> dict[str, Any]:
    """A valid event as another producer would write it."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "eventId": str(uuid.uuid4()),
        "userId": user_id,
        "eventType": event_type,
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "payload": payload,
    }


def encode(event: dict[str, Any]) -> bytes:
    """Compact JSON, as the service writes it."""
    return json.dumps(event, separators=(",", ":")).encode()


def unique_user() -> str:
    """A user id no other test uses."""
    return f"user-{uuid.uuid4().hex[:8]}"
