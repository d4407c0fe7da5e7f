"""The OpenAPI 3 description of the HTTP API, served at ``GET /openapi.json``.

Built from the live limits, so the documented bounds are the enforced ones. A test compares
its paths with the app's routes, and schemathesis fuzzes the running service against it.
"""

from __future__ import annotations

from typing import Any

from actors.domain.events import Limits

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


def openapi_document(limits: Limits, *, max_body_bytes: int) -> dict[str, Any]:
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
                    "parameters": _trace_headers(),
                    "requestBody": {
                        "required": True,
                        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/NewEvent"}}},
                    },
                    "responses": {
                        "201": {
                            "description": "The broker confirmed the event",
                            "content": {
                                _JSON: {"schema": {"$ref": "#/components/schemas/UserEvent"}}
                            },
                        },
                        "400": _error(
                            "The body is not UTF-8 JSON, not an object, or not a valid event"
                        ),
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
            "/events/processed": {
                "get": {
                    "summary": "Every consumed event still held, in the order it was stored",
                    "description": "The order holds per user (one user's events share a "
                    "partition); events of different users may be listed out of posting order.",
                    "responses": {
                        "200": {
                            "description": "The stored events",
                            "content": {
                                _JSON: {
                                    "schema": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/UserEvent"},
                                    }
                                }
                            },
                        },
                        "503": _error(
                            "The store did not answer in time, or too many listings are being sent",
                            retry_after=True,
                        ),
                    },
                }
            },
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
                "NewEvent": new_event,
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
