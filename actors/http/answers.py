"""JSON answers: one compact style for every body the app sends, errors included.

Synopsis::

    json_response({"ok": True}, 200)
    error_response(404, "not_found", "no such event", headers={"Retry-After": "1"})
"""

from __future__ import annotations

import json
from typing import Any

from quart import Response

from actors.domain.events import InvalidRequest

__all__ = ["COMPACT", "error_response", "invalid_request", "json_response"]

#: ``json.dumps`` separators without spaces.
COMPACT = (",", ":")


def json_response(
    body: bytes | dict[str, Any] | list[Any], status: int, headers: dict[str, str] | None = None
) -> Response:
    # Compact, like the event bodies (events.py): one JSON style in every answer.
    data = body if isinstance(body, bytes) else json.dumps(body, separators=COMPACT).encode()
    return Response(data, status=status, mimetype="application/json", headers=headers)


def error_response(
    status: int, error: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    return json_response({"error": error, "message": message, **extra}, status, headers)


def invalid_request(invalid: InvalidRequest, message: str) -> Response:
    """``400`` listing each problem of the request."""
    problems = [{"field": p.field, "message": p.message} for p in invalid.problems]
    return error_response(400, "invalid_request", message, problems=problems)
