"""The floor: a quart-trio app that does no work of ours, served exactly as the service is.

``POST /events/generate`` parses the JSON body, adds a UUID and answers ``201`` with it; ``GET
/health`` answers ``200``. No Kafka, no validation, no logging. It runs behind the service's own
accept loop and hypercorn configuration (:func:`actors.http.server.serve_http` with the
service's default HTTP settings), so whatever the service costs beyond it is ours.

    .venv/bin/python bench/null_app.py --port 8001
"""

from __future__ import annotations

import argparse
import json
import uuid

import trio
from quart import Response, request
from quart_trio import QuartTrio

from actors.http.server import ServerOptions, serve_http
from actors.runtime.settings import load_settings


def create_null_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.post("/events/generate")
    async def generate_event() -> Response:
        body = json.loads(await request.get_data())
        body["eventId"] = str(uuid.uuid4())
        return Response(json.dumps(body), status=201, mimetype="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', mimetype="application/json")

    return app


async def serve(port: int) -> None:
    defaults = load_settings({})
    options = ServerOptions(
        host="127.0.0.1",
        port=port,
        keep_alive_timeout=defaults.http.keep_alive_seconds,
        max_connections=defaults.http.max_connections,
        graceful_timeout=1.0,
    )
    await serve_http(create_null_app(), options, trio.sleep_forever)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    trio.run(serve, parser.parse_args().port)


if __name__ == "__main__":
    main()
