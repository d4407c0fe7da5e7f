"""``python -m actors``: read the settings, then run the supervisor until it is told to stop.

Exit status: 0 after a graceful shutdown, 1 when the service failed or its shutdown deadline
passed, 2 for invalid configuration (one line on stderr naming the variable).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

import attrs
import trio

from actors.devtools.local_broker import LocalBrokerError, start_local_broker
from actors.kafka.ports import KafkaPorts
from actors.runtime.logs import configure_logging, log_fields
from actors.runtime.settings import SETTINGS, KafkaSettings, SettingsError, load_settings
from actors.supervisor import supervise

log = logging.getLogger("actors")


DISTRIBUTION = "user-activity-actors"


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


def settings_help() -> str:
    """Every environment variable with its default and meaning, from the settings table."""
    lines = [
        "Every setting is an environment variable (see .env.example); an invalid value stops",
        "the service with one line naming it, exit status 2. Variable=default:",
        "",
    ]
    for setting in SETTINGS:
        lines.append(f"  {setting.variable}={setting.default}")
        lines += textwrap.wrap(
            setting.doc, width=76, initial_indent="      ", subsequent_indent="      "
        )
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m actors",
        description=(
            "User-activity event service: POST /events/generate publishes to Kafka, a\n"
            "consumer stores what it reads, GET /events/processed lists it."
        ),
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--local-broker",
        action="store_true",
        help="start a local Tansu broker (memory storage) and use it instead of "
        "KAFKA_BOOTSTRAP_SERVERS; it is stopped when the service stops. LOCAL_BROKER_PORT "
        "fixes its port",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None,
    *,
    kafka_ports: Callable[[KafkaSettings], KafkaPorts] | None = None,
) -> int:
    """Run the service as ``python -m actors`` does; returns the exit status.

    ``kafka_ports`` replaces the confluent-kafka adapters (built from the final Kafka settings,
    after ``--local-broker``): the seam through which a test wraps the real clients to inject
    faults.
    """
    arguments = parse_arguments(argv)
    try:
        settings = load_settings(os.environ)
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log.level)
    broker = None
    if arguments.local_broker:
        try:
            broker = start_local_broker(settings.local_broker.port, die_with_parent=True)
        except LocalBrokerError as error:
            print(f"local broker: {error}", file=sys.stderr)
            return 1
        settings = attrs.evolve(
            settings, kafka=attrs.evolve(settings.kafka, bootstrap_servers=broker.bootstrap_servers)
        )
        # One plain line for the person at the terminal; the logs on stdout stay JSON.
        print(f"local Kafka broker at {broker.bootstrap_servers} (in memory)", file=sys.stderr)
        log_fields(
            log, logging.INFO, "local broker started", bootstrapServers=broker.bootstrap_servers
        )
    try:
        ports = kafka_ports(settings.kafka) if kafka_ports is not None else None
        return trio.run(supervise, settings, ports)
    except Exception:
        log.critical("service crashed", exc_info=True)
        return 1
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
