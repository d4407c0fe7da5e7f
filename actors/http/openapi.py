"""The OpenAPI 3 description of the HTTP API, served at ``GET /openapi.json``.

Built from the live limits, so the documented bounds are the enforced ones. A test compares
its paths with the app's routes, and schemathesis fuzzes the running service against it.
"""

from __future__ import annotations

from typing import Any

from actors.domain.events import Limits
from actors.http.queries import IDEMPOTENCY_KEY_MAX, MAX_PAGE_LIMIT

__all__ = ["openapi_document"]

_JSON = "application/json"


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "problems": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}
        }
    return response


def _trace_headers() -> list[dict[str, Any]]:
    return [
        {
            "name": "traceparent",
            "in": "header",
            "required": False,
            "description": "W3C trace context, carried to the Kafka message unchanged; a "
            "malformed value is ignored.",
            "schema": {"type": "string"},
        },
        {
            "name": "X-Request-Id",
            "in": "header",
            "required": False,
            "description": "Carried to the Kafka message and returned; a malformed value (not "
            "1-128 of A-Z a-z 0-9 . _ ~ : @ + = / -) is replaced by a new one.",
            "schema": {"type": "string"},
        },
    ]


def _status_answer(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            _JSON: {
                "schema": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}},
                }
            }
        },
    }


def _filters(limits: Limits) -> list[dict[str, Any]]:
    return [
        {
            "name": "userId",
            "in": "query",
            "required": False,
            "description": "Only this user's events.",
            "schema": {"type": "string", "minLength": 1, "maxLength": limits.max_user_id_length},
        },
        {
            "name": "eventType",
            "in": "query",
            "required": False,
            "description": "Only events of this type.",
            "schema": {"type": "string", "enum": sorted(limits.event_types)},
        },
    ]


def _listing_parameters(limits: Limits) -> list[dict[str, Any]]:
    return [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": f"At most this many events (1 to {MAX_PAGE_LIMIT}); the answer "
            'then carries a Link header (rel="next") while more may follow. Without any of '
            "these parameters the answer is every event held.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT},
        },
        {
            "name": "after",
            "in": "query",
            "required": False,
            "description": "An opaque cursor from a Link header: where the page starts. It "
            "stays valid while events are added and evicted.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{11}$"},
        },
        *_filters(limits),
    ]


def _event_paths(limits: Limits) -> dict[str, Any]:
    """``GET /events/{eventId}``, ``GET /events/stream`` and the live page."""
    bad_request = _error("A parameter is not valid; problems lists each one")
    unavailable = _error("The store did not answer in time", retry_after=True)
    return {
        "/events/{eventId}": {
            "get": {
                "summary": "One processed event, with the partition and offset it was read from",
                "parameters": [
                    {
                        "name": "eventId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid", "pattern": _UUID},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "This instance processed the event",
                        "content": {
                            _JSON: {"schema": {"$ref": "#/components/schemas/EventStatus"}}
                        },
                    },
                    "400": _error("The eventId is not a UUID"),
                    "404": _error("This instance holds no event with this eventId"),
                    "503": unavailable,
                },
            }
        },
        "/events/stream": {
            "get": {
                "summary": "Newly stored events as Server-Sent Events",
                "description": "Each message: `id:` the event's store position, `data:` its "
                "JSON. A comment line every 15 s while idle. A subscriber that falls "
                "behind by the buffer's size is disconnected and resumes with Last-Event-ID.",
                "parameters": [
                    *_filters(limits),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Resume after the event with this id, without a gap.",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": bad_request,
                    "503": _error(
                        "Too many streams are open, or the store did not answer in time",
                        retry_after=True,
                    ),
                },
            }
        },
        "/": {
            "get": {
                "summary": "The live page: send events, see counts, the live tail and health",
                "responses": {
                    "200": {
                        "description": "An HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


#: A canonical (lowercase) UUID.
_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def openapi_document(
    limits: Limits,
    *,
    max_body_bytes: int,
    max_batch_events: int,
    max_batch_bytes: int,
) -> dict[str, Any]:
    event_types = sorted(limits.event_types)
    user_event = {
        "type": "object",
        "required": ["eventId", "userId", "eventType", "timestamp", "payload"],
        "properties": {
            "eventId": {"type": "string", "format": "uuid"},
            "userId": {"type": "string", "minLength": 1},
            "eventType": {"type": "string", "enum": event_types},
            "timestamp": {"type": "string", "format": "date-time"},
            "payload": {"type": "object"},
        },
    }
    new_event = {
        "type": "object",
        "description": "Other fields are accepted and dropped; an eventId or timestamp sent "
        "here is replaced by the service's own.",
        "required": ["userId", "eventType"],
        "properties": {
            "userId": {"type": "string", "minLength": 1, "maxLength": limits.max_user_id_length},
            "eventType": {"type": "string", "enum": event_types},
            "payload": {
                "type": "object",
                "nullable": True,
                "description": f"At most {limits.max_payload_bytes} bytes as JSON and "
                f"{limits.max_payload_depth} levels deep.",
            },
        },
    }
    health = {
        "description": "Each actor's state and the service's counters",
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Health"}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "User activity events", "version": "1.0.0"},
        "paths": {
            "/events/generate": {
                "post": {
                    "summary": "Publish a user-activity event to Kafka",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "Retry safely: a repeat with the same key and body "
                            "after a 201 answers that 201 again (same eventId and timestamp) "
                            "and publishes nothing. Remembered per process, for "
                            "IDEMPOTENCY_TTL_SECONDS, up to IDEMPOTENCY_MAX_KEYS keys.",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": IDEMPOTENCY_KEY_MAX,
                                "pattern": "^[!-~]+$",
                            },
                        },
                        *_trace_headers(),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/NewEvent"}}},
                    },
                    "responses": {
                        "201": {
                            "description": "The broker confirmed the event",
                            "headers": {
                                "Idempotent-Replayed": {
                                    "description": "`true` when this is the answer to an "
                                    "earlier request with the same Idempotency-Key",
                                    "schema": {"type": "string", "enum": ["true"]},
                                }
                            },
                            "content": {
                                _JSON: {"schema": {"$ref": "#/components/schemas/UserEvent"}}
                            },
                        },
                        "400": _error(
                            "The body is not UTF-8 JSON, not an object, or not a valid event, "
                            "or the Idempotency-Key is not valid"
                        ),
                        "409": _error(
                            "A request with this Idempotency-Key is still being handled",
                            retry_after=True,
                        ),
                        "422": _error("This Idempotency-Key was used with another body"),
                        "413": _error(f"The body is larger than {max_body_bytes} bytes"),
                        "415": _error("The Content-Type is not application/json or +json"),
                        "500": _error("The broker refused the event for good"),
                        "503": _error(
                            "The broker is unavailable or the service is overloaded",
                            retry_after=True,
                        ),
                    },
                }
            },
            "/events/batch": _batch_path(max_batch_events, max_batch_bytes),
            "/events/processed": {
                "get": {
                    "summary": "Every consumed event still held, in the order it was stored",
                    "description": "The order holds per user (one user's events share a "
                    "partition); events of different users may be listed out of posting order.",
                    "parameters": _listing_parameters(limits),
                    "responses": {
                        "200": {
                            "description": "The stored events",
                            "headers": {
                                "Link": {
                                    "description": 'With limit: `<URL>; rel="next"` while more '
                                    "events may follow",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": {
                                _JSON: {
                                    "schema": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/UserEvent"},
                                    }
                                }
                            },
                        },
                        "400": _error("A parameter is not valid; problems lists each one"),
                        "503": _error(
                            "The store did not answer in time, or too many listings are being sent",
                            retry_after=True,
                        ),
                    },
                }
            },
            **_event_paths(limits),
            "/health": {
                "get": {
                    "summary": "Actor states; 200 when all run, 503 when something is degraded",
                    "responses": {"200": health, "503": health},
                }
            },
            "/health/live": {
                "get": {
                    "summary": "Liveness: 200 while serving and no actor is being given up on",
                    "responses": {
                        "200": _status_answer("Live"),
                        "503": _status_answer("An actor failed for good; restart the process"),
                    },
                }
            },
            "/health/ready": {
                "get": {
                    "summary": "Readiness: 200 when every actor runs and the consumer holds "
                    "its assignment",
                    "responses": {
                        "200": _status_answer("Ready"),
                        "503": _status_answer("Starting, degraded or stopping"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics in the text exposition format",
                    "responses": {
                        "200": {
                            "description": "Every metric (README lists them)",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3 document",
                            "content": {_JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "UserEvent": user_event,
                "EventStatus": {
                    "type": "object",
                    "required": ["event", "partition", "offset"],
                    "properties": {
                        "event": {"$ref": "#/components/schemas/UserEvent"},
                        "partition": {"type": "integer", "nullable": True},
                        "offset": {"type": "integer", "nullable": True},
                    },
                },
                "NewEvent": new_event,
                "BatchResult": _batch_result_schema(),
                "Error": _error_schema(),
                "Health": {
                    "type": "object",
                    "required": ["status", "actors", "counters", "gauges"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "degraded"]},
                        "actors": {"type": "object"},
                        "counters": {"type": "object"},
                        "gauges": {"type": "object"},
                    },
                },
            }
        },
    }


def _batch_path(max_events: int, max_bytes: int) -> dict[str, Any]:
    events = {"type": "array", "items": {"$ref": "#/components/schemas/UserEvent"}}
    return {
        "post": {
            "summary": "Publish many user-activity events, each validated on its own",
            "description": "Each event follows the rules of POST /events/generate. 201 when "
            "every event was published; otherwise 207 with one result per event, in order. An "
            "item may carry `idempotencyKey` (1 to 255 visible ASCII characters), with the "
            "rules of the Idempotency-Key header per item: an item whose key answered 201 for "
            "the same item is answered with that event again and not published; 409 while its "
            "first request is in flight; 422 when the key came with another item.",
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["events"],
                            "properties": {
                                "events": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": max_events,
                                    # Any item is taken: each is validated on its own
                                    # (as a NewEvent) and an invalid one is answered 400 in
                                    # its result of a 207, not by refusing the batch.
                                    "items": {
                                        "description": "An event as for POST /events/generate "
                                        "(NewEvent), optionally with `idempotencyKey`, a "
                                        f"string of 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII "
                                        "characters"
                                    },
                                }
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "The broker confirmed every event (or, for a keyed item, "
                    "had confirmed it for an earlier request)",
                    "headers": {
                        "Idempotent-Replayed": {
                            "description": "`true` when every item was answered from an "
                            "earlier request with the same idempotencyKey",
                            "schema": {"type": "string", "enum": ["true"]},
                        }
                    },
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["events"],
                                "properties": {"events": events},
                            }
                        }
                    },
                },
                "207": {
                    "description": "Some events were not published: one result per event, in "
                    "request order; Retry-After when any result is 503 or 409",
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds to wait (when any result is 503 or 409)",
                            "schema": {"type": "string"},
                        }
                    },
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["results"],
                                "properties": {
                                    "results": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/BatchResult"},
                                    }
                                },
                            }
                        }
                    },
                },
                "400": _error('The body is not strict JSON, not {"events": [...]}, or empty'),
                "413": _error(
                    f"The body is larger than {max_bytes} bytes or holds more than "
                    f"{max_events} events"
                ),
                "415": _error("The Content-Type is not application/json or +json"),
            },
        }
    }


def _batch_result_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["index", "status"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "status": {"type": "integer", "enum": [201, 400, 409, 422, 500, 503]},
            "event": {"$ref": "#/components/schemas/UserEvent"},
            "replayed": {
                "type": "boolean",
                "enum": [True],
                "description": "present on a 201 answered from an earlier request with the "
                "same idempotencyKey",
            },
            "message": {"type": "string"},
            "problems": _error_schema()["properties"]["problems"],
        },
    }
