"""``python -m actors``: read the settings, then run the supervisor until it is told to stop.

Exit status: 0 after a graceful shutdown, 1 when the service failed or its shutdown deadline
passed, 2 for invalid configuration (one line on stderr naming the variable).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import attrs
import trio

from actors.local_broker import LocalBrokerError, start_local_broker
from actors.logs import configure_logging, log_fields
from actors.settings import SettingsError, load_settings
from actors.supervisor import supervise

log = logging.getLogger("actors")


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m actors",
        description="User-activity event service. Settings come from environment variables.",
    )
    parser.add_argument(
        "--local-broker",
        action="store_true",
        help="start a local Tansu broker (memory storage) and use it instead of "
        "KAFKA_BOOTSTRAP_SERVERS; it is stopped when the service stops",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        settings = load_settings(os.environ)
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    broker = None
    if arguments.local_broker:
        try:
            broker = start_local_broker(settings.local_broker_port)
        except LocalBrokerError as error:
            print(f"local broker: {error}", file=sys.stderr)
            return 1
        settings = attrs.evolve(settings, bootstrap_servers=broker.bootstrap_servers)
        log_fields(
            log, logging.INFO, "local broker started", bootstrapServers=broker.bootstrap_servers
        )
    try:
        return trio.run(supervise, settings)
    except Exception:
        log.critical("service crashed", exc_info=True)
        return 1
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
