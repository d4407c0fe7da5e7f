"""Every setting of the service, read once from the environment at start-up.

The table :data:`SETTINGS` is the single source of truth: it names each environment variable,
its default, how it is parsed and what it means. ``.env.example`` and the app's environment in
``docker-compose.yml`` are checked against it by the test suite, so a variable cannot be added
in one place and forgotten in another.

Synopsis::

    settings = load_settings(os.environ)   # raises SettingsError naming the variable
    settings.http_port                     # 3000
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from actors.domain.events import EVENT_TYPES

__all__ = ["SECRET_VARIABLES", "SETTINGS", "Setting", "Settings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """A variable holds a value the service cannot run with.

    The message starts with the variable's name so that the one line printed at start-up is
    enough to fix the configuration.
    """

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


Parser = Callable[[str], Any]


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _integer(minimum: int, maximum: int) -> Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be an integer, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, got {value}")
        return value

    return parse


def _optional(parse: Parser) -> Parser:
    """``parse``, except that an empty value is ``None`` (the setting is derived from others)."""

    def parse_optional(raw: str) -> Any:
        return parse(raw) if raw.strip() else None

    return parse_optional


def _choice(*allowed: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().upper()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _event_types(raw: str) -> frozenset[str]:
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if not names:
        raise ValueError("must list at least one event type")
    unknown = sorted(set(names) - EVENT_TYPES)
    if unknown:
        raise ValueError(
            f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(sorted(EVENT_TYPES))}"
        )
    return frozenset(names)


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in logging.getLevelNamesMapping():
        raise ValueError(f"must be a logging level such as INFO or DEBUG, got {raw!r}")
    return value


@attrs.frozen
class Setting:
    """One environment variable: its name, default, parser and a one-line description."""

    variable: str
    field: str
    default: str
    parse: Parser
    doc: str


_MS = _integer(1, 3_600_000)

SETTINGS: tuple[Setting, ...] = (
    # Kafka connection and topic.
    Setting(
        "KAFKA_BOOTSTRAP_SERVERS",
        "bootstrap_servers",
        "localhost:9092",
        _text,
        "Comma-separated host:port list of Kafka brokers.",
    ),
    Setting(
        "KAFKA_TOPIC",
        "topic",
        "user-activity-events",
        _text,
        "Topic the events are published to and consumed from.",
    ),
    Setting(
        "KAFKA_CONSUMER_GROUP",
        "consumer_group",
        "user-activity-consumer-group",
        _text,
        "Consumer group id; committed offsets belong to it.",
    ),
    Setting(
        "KAFKA_CLIENT_ID",
        "client_id",
        "user-activity-service",
        _text,
        "client.id reported to the broker by the producer and the consumer.",
    ),
    Setting(
        "KAFKA_TOPIC_PARTITIONS",
        "topic_partitions",
        "3",
        _integer(1, 10_000),
        "Partitions of the topic when the service creates it at start-up.",
    ),
    Setting(
        "KAFKA_TOPIC_REPLICATION_FACTOR",
        "topic_replication_factor",
        "1",
        _integer(1, 100),
        "Replication factor of the topic when the service creates it.",
    ),
    Setting(
        "KAFKA_DLQ_TOPIC",
        "dlq_topic",
        "",
        _optional_text,
        "Dead-letter topic for malformed messages; empty means log and skip them.",
    ),
    # Consumer group tuning.
    Setting(
        "KAFKA_SESSION_TIMEOUT_MS",
        "session_timeout_ms",
        "45000",
        _integer(1000, 3_600_000),
        "Consumer session.timeout.ms: how long the group waits for a silent member.",
    ),
    Setting(
        "KAFKA_HEARTBEAT_INTERVAL_MS",
        "heartbeat_interval_ms",
        "",
        _optional(_MS),
        "Consumer heartbeat.interval.ms, at most a third of the session timeout; empty: "
        "a third of it, up to 3000.",
    ),
    Setting(
        "KAFKA_FETCH_WAIT_MAX_MS",
        "fetch_wait_max_ms",
        "500",
        _integer(0, 300_000),
        "Consumer fetch.wait.max.ms; end-to-end latency at light load follows it.",
    ),
    Setting(
        "CONSUMER_BATCH_SIZE",
        "consumer_batch_size",
        "500",
        _integer(1, 100_000),
        "Most messages taken from Kafka in one consume() call.",
    ),
    # Producer.
    Setting(
        "KAFKA_DELIVERY_TIMEOUT_MS",
        "delivery_timeout_ms",
        "30000",
        _MS,
        "Producer message.timeout.ms: how long librdkafka keeps trying one message.",
    ),
    Setting(
        "KAFKA_PRODUCER_QUEUE_MESSAGES",
        "producer_queue_messages",
        "10000",
        _integer(1, 10_000_000),
        "Messages librdkafka may hold unsent before produce() reports a full queue.",
    ),
    Setting(
        "PUBLISH_QUEUE_SIZE",
        "publish_queue_size",
        "1000",
        _integer(1, 1_000_000),
        "Publish requests waiting for the publisher; beyond it POST answers 503.",
    ),
    Setting(
        "PUBLISH_TIMEOUT_MS",
        "publish_timeout_ms",
        "5000",
        _MS,
        "How long POST /events/generate waits for the broker's confirmation before 503.",
    ),
    Setting(
        "PUBLISH_RETRY_BACKOFF_MS",
        "publish_retry_backoff_ms",
        "100",
        _MS,
        "First delay before re-publishing after a retriable failure; doubles each try.",
    ),
    Setting(
        "PUBLISH_RETRY_BACKOFF_MAX_MS",
        "publish_retry_backoff_max_ms",
        "2000",
        _MS,
        "Upper bound of the publish retry delay.",
    ),
    Setting(
        "PRODUCER_REPLACE_AFTER_MS",
        "producer_replace_after_ms",
        "30000",
        _MS,
        "Replace a Kafka producer whose every delivery failed for this long (fenced: at once).",
    ),
    # Kafka security.
    Setting(
        "KAFKA_SECURITY_PROTOCOL",
        "security_protocol",
        "PLAINTEXT",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    ),
    Setting(
        "KAFKA_SASL_MECHANISM",
        "sasl_mechanism",
        "",
        _optional_text,
        "sasl.mechanism, e.g. PLAIN or SCRAM-SHA-512; empty when SASL is not used.",
    ),
    Setting(
        "KAFKA_SASL_USERNAME", "sasl_username", "", _optional_text, "SASL user name; never logged."
    ),
    Setting(
        "KAFKA_SASL_PASSWORD", "sasl_password", "", _optional_text, "SASL password; never logged."
    ),
    Setting(
        "KAFKA_SSL_CA_LOCATION",
        "ssl_ca_location",
        "",
        _optional_text,
        "Path of the CA certificate file that signs the brokers' certificates.",
    ),
    # HTTP.
    Setting("HTTP_HOST", "http_host", "0.0.0.0", _text, "Address the HTTP server binds to."),
    Setting(
        "HTTP_PORT",
        "http_port",
        "3000",
        _integer(0, 65535),
        "Port the HTTP server listens on; 0 picks a free one.",
    ),
    Setting(
        "HTTP_KEEP_ALIVE_SECONDS",
        "http_keep_alive_seconds",
        "5",
        _integer(1, 3600),
        "Seconds an idle keep-alive connection stays open before the server closes it.",
    ),
    Setting(
        "HTTP_MAX_CONNECTIONS",
        "http_max_connections",
        "768",
        _integer(1, 1_000_000),
        "Most open HTTP connections; more get 503. Keep it 128 or more below ulimit -n.",
    ),
    Setting(
        "HTTP_BODY_READ_SECONDS",
        "http_body_read_seconds",
        "30",
        _integer(1, 3600),
        "Seconds a request body may take to arrive before the request gets 408.",
    ),
    Setting(
        "MAX_BODY_BYTES",
        "max_body_bytes",
        "65536",
        _integer(1, 100 * 1024 * 1024),
        "Largest accepted request body; larger ones get 413.",
    ),
    Setting(
        "MAX_USER_ID_LENGTH",
        "max_user_id_length",
        "256",
        _integer(1, 65536),
        "Longest accepted userId, in characters.",
    ),
    Setting(
        "MAX_PAYLOAD_DEPTH",
        "max_payload_depth",
        "16",
        _integer(1, 1000),
        "Deepest nesting of objects and arrays accepted inside payload.",
    ),
    Setting(
        "MAX_PAYLOAD_BYTES",
        "max_payload_bytes",
        "32768",
        _integer(2, 100 * 1024 * 1024),
        "Largest accepted payload, measured as compact JSON.",
    ),
    Setting(
        "EVENT_TYPES",
        "event_types",
        ",".join(sorted(EVENT_TYPES)),
        _event_types,
        "Comma-separated eventType values the service accepts (a subset of the known ones).",
    ),
    Setting(
        "HTTP_MAX_LISTINGS",
        "http_max_listings",
        "4",
        _integer(1, 1000),
        "Full GET /events/processed listings sent at once; beyond it the request gets 503.",
    ),
    # Store.
    Setting(
        "STORE_MAX_EVENTS",
        "store_max_events",
        "100000",
        _integer(1, 100_000_000),
        "Most processed events kept in memory; beyond it the oldest are forgotten.",
    ),
    Setting(
        "STORE_MAX_BYTES",
        "store_max_bytes",
        str(64 * 1024 * 1024),
        _integer(1024 * 1024, 1024**4),
        "Most bytes the stored events may take (JSON plus 230 B each); then the oldest go.",
    ),
    # Idempotency keys and live streams.
    Setting(
        "IDEMPOTENCY_MAX_KEYS",
        "idempotency_max_keys",
        "100000",
        _integer(1, 10_000_000),
        "Most Idempotency-Key values remembered; beyond it the oldest answered ones go.",
    ),
    Setting(
        "IDEMPOTENCY_TTL_SECONDS",
        "idempotency_ttl_seconds",
        str(24 * 3600),
        _integer(1, 30 * 24 * 3600),
        "Seconds an answered Idempotency-Key is remembered; a later repeat is a new request.",
    ),
    Setting(
        "MAX_STREAM_SUBSCRIBERS",
        "max_stream_subscribers",
        "64",
        _integer(1, 10_000),
        "Open GET /events/stream subscriptions at most; beyond it the request gets 503.",
    ),
    Setting(
        "STREAM_BUFFER_EVENTS",
        "stream_buffer_events",
        "1000",
        _integer(1, 1_000_000),
        "Events buffered per stream subscriber; one that falls this far behind is disconnected.",
    ),
    Setting(
        "STREAM_LIFETIME_MS",
        "stream_lifetime_ms",
        "3600000",
        _integer(100, 86_400_000),
        "A stream is closed after this long; clients resume it with Last-Event-ID.",
    ),
    # Lifecycle.
    Setting(
        "SHUTDOWN_TIMEOUT_MS",
        "shutdown_timeout_ms",
        "10000",
        _MS,
        "Deadline for the whole graceful shutdown after SIGTERM or SIGINT.",
    ),
    Setting(
        "RESTART_BACKOFF_MS",
        "restart_backoff_ms",
        "500",
        _MS,
        "First delay before the supervisor restarts a failed actor; doubles each time.",
    ),
    Setting(
        "RESTART_MAX_FAILURES",
        "restart_max_failures",
        "5",
        _integer(1, 1000),
        "Failures of one actor within RESTART_WINDOW_MS that end the service.",
    ),
    Setting(
        "RESTART_WINDOW_MS",
        "restart_window_ms",
        "60000",
        _MS,
        "Window in which actor failures are counted.",
    ),
    Setting(
        "LOG_LEVEL",
        "log_level",
        "INFO",
        _log_level,
        "Logging level: DEBUG, INFO, WARNING or ERROR.",
    ),
    Setting(
        "LOCAL_BROKER_PORT",
        "local_broker_port",
        "0",
        _integer(0, 65535),
        "Port of the broker started by --local-broker; 0 picks a free one.",
    ),
)

#: Variables whose values must never appear in logs or error messages.
SECRET_VARIABLES = frozenset({"KAFKA_SASL_PASSWORD"})


@attrs.frozen(kw_only=True)
class Settings:
    """The parsed configuration. Build it with :func:`load_settings`; durations are in ms."""

    bootstrap_servers: str
    topic: str
    consumer_group: str
    client_id: str
    topic_partitions: int
    topic_replication_factor: int
    dlq_topic: str | None
    session_timeout_ms: int
    heartbeat_interval_ms: int
    fetch_wait_max_ms: int
    consumer_batch_size: int
    delivery_timeout_ms: int
    producer_queue_messages: int
    publish_queue_size: int
    publish_timeout_ms: int
    publish_retry_backoff_ms: int
    publish_retry_backoff_max_ms: int
    producer_replace_after_ms: int
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: str | None = attrs.field(repr=False)
    ssl_ca_location: str | None
    http_host: str
    http_port: int
    http_keep_alive_seconds: int
    http_max_connections: int
    http_body_read_seconds: int
    max_body_bytes: int
    max_user_id_length: int
    max_payload_depth: int
    max_payload_bytes: int
    event_types: frozenset[str]
    http_max_listings: int
    store_max_events: int
    store_max_bytes: int
    idempotency_max_keys: int
    idempotency_ttl_seconds: int
    max_stream_subscribers: int
    stream_buffer_events: int
    stream_lifetime_ms: int
    shutdown_timeout_ms: int
    restart_backoff_ms: int
    restart_max_failures: int
    restart_window_ms: int
    log_level: str
    local_broker_port: int


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse every variable of :data:`SETTINGS` from ``environ``, falling back to defaults.

    Raises:
        SettingsError: for the first variable that does not parse or the first pair of
            variables that contradict each other. Secret values are never quoted.
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.variable, setting.default)
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as error:
            problem = "is not valid" if setting.variable in SECRET_VARIABLES else str(error)
            raise SettingsError(setting.variable, problem) from None
    if values["heartbeat_interval_ms"] is None:
        values["heartbeat_interval_ms"] = default_heartbeat_ms(values["session_timeout_ms"])
    settings = Settings(**values)
    _check_consistency(settings)
    return settings


#: librdkafka's own heartbeat.interval.ms default.
_LIBRDKAFKA_HEARTBEAT_MS = 3000


def default_heartbeat_ms(session_timeout_ms: int) -> int:
    """The heartbeat for a session timeout when none is set: librdkafka's 3 s, or less so that
    it stays within the third of the session timeout that brokers expect (2000 for 6000)."""
    return min(_LIBRDKAFKA_HEARTBEAT_MS, session_timeout_ms // 3)


def _check_consistency(settings: Settings) -> None:
    if settings.heartbeat_interval_ms * 3 > settings.session_timeout_ms:
        raise SettingsError(
            "KAFKA_HEARTBEAT_INTERVAL_MS",
            f"must be at most a third of KAFKA_SESSION_TIMEOUT_MS ({settings.session_timeout_ms})",
        )
    if settings.publish_retry_backoff_ms > settings.publish_retry_backoff_max_ms:
        raise SettingsError(
            "PUBLISH_RETRY_BACKOFF_MS", "must not exceed PUBLISH_RETRY_BACKOFF_MAX_MS"
        )
    if settings.dlq_topic is not None and settings.dlq_topic == settings.topic:
        raise SettingsError("KAFKA_DLQ_TOPIC", "must differ from KAFKA_TOPIC")
    uses_sasl = settings.security_protocol.startswith("SASL_")
    if uses_sasl and settings.sasl_mechanism is None:
        raise SettingsError(
            "KAFKA_SASL_MECHANISM", f"is required with {settings.security_protocol}"
        )
