"""Every setting of the service, each declared once, read once from the environment at start-up.

A setting is one field of a group (:class:`KafkaSettings`, :class:`HttpSettings`, ...) declared
with :func:`setting`: its environment variable, default, parser and description sit beside its
name and type. :class:`Settings` composes the groups, and :data:`SETTINGS`, the flat list that
``--help`` prints and the tests check ``.env.example`` and ``docker-compose.yml`` against, is
read from those declarations in their order, so a variable cannot be added in one place and
forgotten in another. What other floors need from the settings (:class:`Limits`, backoffs, the
restart policy, durations in seconds) is derived here too, next to the values it comes from.

Synopsis::

    settings = load_settings(os.environ)   # raises SettingsError naming the variable
    settings.http.port                     # 3000
    settings.limits.limits()               # the Limits every event is checked against
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from actors.domain.events import EVENT_TYPES, Limits
from actors.runtime.backoff import Backoff
from actors.runtime.supervision import RestartPolicy

__all__ = [
    "SECRET_VARIABLES",
    "SETTINGS",
    "HttpSettings",
    "IdempotencySettings",
    "KafkaSettings",
    "LimitSettings",
    "LocalBrokerSettings",
    "LogSettings",
    "PublishSettings",
    "Setting",
    "Settings",
    "SettingsError",
    "StoreSettings",
    "StreamSettings",
    "SupervisionSettings",
    "declared_settings",
    "load_settings",
    "setting",
]


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


_MS = _integer(1, 3_600_000)

#: Where :func:`setting` keeps a field's declaration in its attrs metadata.
_DECLARATION = "actors.setting"


@attrs.frozen(kw_only=True)
class _Declaration:
    variable: str
    default: str
    parse: Parser
    doc: str
    secret: bool


def setting(variable: str, default: str, parse: Parser, doc: str, *, secret: bool = False) -> Any:
    """Declare one field of a settings group as the environment variable ``variable``.

    ``default`` is the text the variable has when it is not set (what ``.env.example`` shows),
    ``parse`` turns that text into the field's value or raises ``ValueError`` saying why, and
    ``doc`` is the one line that ``--help`` and ``.env.example`` print. A ``secret`` value is
    left out of ``repr`` and never quoted in an error.

    Raises:
        TypeError: the declaration lacks a variable name, a parser or a description, so a field
            cannot be half-declared.
    """
    if not variable.isidentifier() or variable != variable.upper():
        raise TypeError(f"setting {variable!r}: the variable must be an upper-case identifier")
    if not callable(parse):
        raise TypeError(f"setting {variable}: parse must be callable")
    if not doc.strip():
        raise TypeError(f"setting {variable}: doc must describe it")
    declaration = _Declaration(
        variable=variable, default=default, parse=parse, doc=doc, secret=secret
    )
    return attrs.field(repr=not secret, metadata={_DECLARATION: declaration})


@attrs.frozen(kw_only=True)
class KafkaSettings:
    """Where the brokers are, the topics, and how the clients talk to them (librdkafka)."""

    # Connection and topic.
    bootstrap_servers: str = setting(
        "KAFKA_BOOTSTRAP_SERVERS",
        "localhost:9092",
        _text,
        "Comma-separated host:port list of Kafka brokers.",
    )
    topic: str = setting(
        "KAFKA_TOPIC",
        "user-activity-events",
        _text,
        "Topic the events are published to and consumed from.",
    )
    consumer_group: str = setting(
        "KAFKA_CONSUMER_GROUP",
        "user-activity-consumer-group",
        _text,
        "Consumer group id; committed offsets belong to it.",
    )
    client_id: str = setting(
        "KAFKA_CLIENT_ID",
        "user-activity-service",
        _text,
        "client.id reported to the broker by the producer and the consumer.",
    )
    topic_partitions: int = setting(
        "KAFKA_TOPIC_PARTITIONS",
        "3",
        _integer(1, 10_000),
        "Partitions of the topic when the service creates it at start-up.",
    )
    topic_replication_factor: int = setting(
        "KAFKA_TOPIC_REPLICATION_FACTOR",
        "1",
        _integer(1, 100),
        "Replication factor of the topic when the service creates it.",
    )
    dlq_topic: str | None = setting(
        "KAFKA_DLQ_TOPIC",
        "",
        _optional_text,
        "Dead-letter topic for malformed messages; empty means log and skip them.",
    )
    # Consumer group tuning.
    session_timeout_ms: int = setting(
        "KAFKA_SESSION_TIMEOUT_MS",
        "45000",
        _integer(1000, 3_600_000),
        "Consumer session.timeout.ms: how long the group waits for a silent member.",
    )
    #: Parsed as ``None`` when empty; :func:`load_settings` then derives it from the session.
    heartbeat_interval_ms: int = setting(
        "KAFKA_HEARTBEAT_INTERVAL_MS",
        "",
        _optional(_MS),
        "Consumer heartbeat.interval.ms, at most a third of the session timeout; empty: "
        "a third of it, up to 3000.",
    )
    fetch_wait_max_ms: int = setting(
        "KAFKA_FETCH_WAIT_MAX_MS",
        "100",
        _integer(0, 300_000),
        "Consumer fetch.wait.max.ms; end-to-end latency at light load follows it.",
    )
    max_poll_interval_ms: int = setting(
        "KAFKA_MAX_POLL_INTERVAL_MS",
        "300000",
        _integer(1, 86_400_000),
        "Consumer max.poll.interval.ms, at least the session timeout; the consumer polls far more "
        "often, also while paused.",
    )
    consumer_batch_size: int = setting(
        "CONSUMER_BATCH_SIZE",
        "500",
        _integer(1, 100_000),
        "Most messages taken from Kafka in one consume() call.",
    )
    # Producer.
    delivery_timeout_ms: int = setting(
        "KAFKA_DELIVERY_TIMEOUT_MS",
        "30000",
        _MS,
        "Producer message.timeout.ms: how long librdkafka keeps trying one message.",
    )
    linger_ms: int = setting(
        "KAFKA_LINGER_MS",
        "1",
        _integer(0, 900_000),
        "Producer linger.ms: how long librdkafka waits to fill a batch before sending it.",
    )
    producer_queue_messages: int = setting(
        "KAFKA_PRODUCER_QUEUE_MESSAGES",
        "10000",
        _integer(1, 10_000_000),
        "Messages librdkafka may hold unsent before produce() reports a full queue.",
    )
    # Security.
    security_protocol: str = setting(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    )
    sasl_mechanism: str | None = setting(
        "KAFKA_SASL_MECHANISM",
        "",
        _optional_text,
        "sasl.mechanism, e.g. PLAIN or SCRAM-SHA-512; empty when SASL is not used.",
    )
    sasl_username: str | None = setting(
        "KAFKA_SASL_USERNAME", "", _optional_text, "SASL user name; never logged."
    )
    sasl_password: str | None = setting(
        "KAFKA_SASL_PASSWORD", "", _optional_text, "SASL password; never logged.", secret=True
    )
    ssl_ca_location: str | None = setting(
        "KAFKA_SSL_CA_LOCATION",
        "",
        _optional_text,
        "Path of the CA certificate file that signs the brokers' certificates.",
    )

    def topics(self) -> list[str]:
        """The topics the service writes and reads: its own, then the dead-letter one if set."""
        return [self.topic, *filter(None, [self.dlq_topic])]


@attrs.frozen(kw_only=True)
class PublishSettings:
    """How publish requests wait, retry and give up, and when a producer is replaced."""

    queue_size: int = setting(
        "PUBLISH_QUEUE_SIZE",
        "1000",
        _integer(1, 1_000_000),
        "Publish requests waiting for the publisher; beyond it POST answers 503.",
    )
    timeout_ms: int = setting(
        "PUBLISH_TIMEOUT_MS",
        "5000",
        _MS,
        "How long POST /events/generate waits for the broker's confirmation before 503.",
    )
    retry_backoff_ms: int = setting(
        "PUBLISH_RETRY_BACKOFF_MS",
        "100",
        _MS,
        "First delay before re-publishing after a retriable failure; doubles each try.",
    )
    retry_backoff_max_ms: int = setting(
        "PUBLISH_RETRY_BACKOFF_MAX_MS",
        "2000",
        _MS,
        "Upper bound of the publish retry delay.",
    )
    replace_producer_after_ms: int = setting(
        "PRODUCER_REPLACE_AFTER_MS",
        "30000",
        _MS,
        "Replace a Kafka producer whose every delivery failed for this long (fenced: at once).",
    )

    @property
    def timeout(self) -> float:
        """:attr:`timeout_ms` in seconds."""
        return self.timeout_ms / 1000

    @property
    def replace_producer_after(self) -> float:
        """:attr:`replace_producer_after_ms` in seconds."""
        return self.replace_producer_after_ms / 1000

    def retry_backoff(self) -> Backoff:
        """Delays between retries of a publish, a dead-letter write or the topic check."""
        return Backoff(
            initial=self.retry_backoff_ms / 1000, maximum=self.retry_backoff_max_ms / 1000
        )


@attrs.frozen(kw_only=True)
class HttpSettings:
    """Where the HTTP server listens and how it treats connections and requests."""

    host: str = setting("HTTP_HOST", "0.0.0.0", _text, "Address the HTTP server binds to.")
    port: int = setting(
        "HTTP_PORT",
        "3000",
        _integer(0, 65535),
        "Port the HTTP server listens on; 0 picks a free one.",
    )
    keep_alive_seconds: int = setting(
        "HTTP_KEEP_ALIVE_SECONDS",
        "5",
        _integer(1, 3600),
        "Seconds an idle keep-alive connection stays open before the server closes it.",
    )
    max_connections: int = setting(
        "HTTP_MAX_CONNECTIONS",
        "768",
        _integer(1, 1_000_000),
        "Most open HTTP connections; more get 503. Keep it 128 or more below ulimit -n.",
    )
    body_read_seconds: int = setting(
        "HTTP_BODY_READ_SECONDS",
        "30",
        _integer(1, 3600),
        "Seconds a request body may take to arrive before the request gets 408.",
    )
    send_seconds: int = setting(
        "HTTP_SEND_SECONDS",
        "30",
        _integer(1, 3600),
        "Seconds one write to a client may wait for it to read; then its connection is closed.",
    )
    max_listings: int = setting(
        "HTTP_MAX_LISTINGS",
        "4",
        _integer(1, 1000),
        "Full GET /events/processed listings sent at once; beyond it the request gets 503.",
    )


@attrs.frozen(kw_only=True)
class LimitSettings:
    """Bounds on what a request and an event may hold, whichever door they come through."""

    max_body_bytes: int = setting(
        "MAX_BODY_BYTES",
        "65536",
        _integer(1, 100 * 1024 * 1024),
        "Largest accepted request body; larger ones get 413.",
    )
    max_batch_events: int = setting(
        "MAX_BATCH_EVENTS",
        "1000",
        _integer(1, 1_000_000),
        "Most events in one POST /events/batch; more get 413.",
    )
    max_batch_bytes: int = setting(
        "MAX_BATCH_BYTES",
        str(1024 * 1024),
        _integer(1, 100 * 1024 * 1024),
        "Largest accepted POST /events/batch body; larger ones get 413.",
    )
    max_user_id_length: int = setting(
        "MAX_USER_ID_LENGTH",
        "256",
        _integer(1, 65536),
        "Longest accepted userId, in characters.",
    )
    max_payload_depth: int = setting(
        "MAX_PAYLOAD_DEPTH",
        "16",
        _integer(1, 1000),
        "Deepest nesting of objects and arrays accepted inside payload.",
    )
    max_payload_bytes: int = setting(
        "MAX_PAYLOAD_BYTES",
        "32768",
        _integer(2, 100 * 1024 * 1024),
        "Largest accepted payload, measured as compact JSON.",
    )
    event_types: frozenset[str] = setting(
        "EVENT_TYPES",
        ",".join(sorted(EVENT_TYPES)),
        _event_types,
        "Comma-separated eventType values the service accepts (a subset of the known ones).",
    )

    def limits(self) -> Limits:
        """The domain's :class:`Limits`, which declare no values of their own."""
        return Limits(
            event_types=self.event_types,
            max_user_id_length=self.max_user_id_length,
            max_payload_depth=self.max_payload_depth,
            max_payload_bytes=self.max_payload_bytes,
        )


@attrs.frozen(kw_only=True)
class StoreSettings:
    """The bounds of the in-memory store of processed events."""

    max_events: int = setting(
        "STORE_MAX_EVENTS",
        "100000",
        _integer(1, 100_000_000),
        "Most processed events kept in memory; beyond it the oldest are forgotten.",
    )
    max_bytes: int = setting(
        "STORE_MAX_BYTES",
        str(64 * 1024 * 1024),
        _integer(1024 * 1024, 1024**4),
        "Most bytes the stored events may take (JSON plus 210 B each); then the oldest go.",
    )


@attrs.frozen(kw_only=True)
class IdempotencySettings:
    """The ledger of Idempotency-Key values (in memory, per process; lost on restart)."""

    max_keys: int = setting(
        "IDEMPOTENCY_MAX_KEYS",
        "100000",
        _integer(1, 10_000_000),
        "Most Idempotency-Key values remembered; beyond it the oldest answered ones go.",
    )
    ttl_seconds: int = setting(
        "IDEMPOTENCY_TTL_SECONDS",
        str(24 * 3600),
        _integer(1, 30 * 24 * 3600),
        "Seconds an answered Idempotency-Key is remembered; a later repeat is a new request.",
    )


@attrs.frozen(kw_only=True)
class StreamSettings:
    """Bounds on the live streams of ``GET /events/stream``."""

    max_subscribers: int = setting(
        "MAX_STREAM_SUBSCRIBERS",
        "64",
        _integer(1, 10_000),
        "Open GET /events/stream subscriptions at most; beyond it the request gets 503.",
    )
    buffer_events: int = setting(
        "STREAM_BUFFER_EVENTS",
        "1000",
        _integer(1, 1_000_000),
        "Events buffered per stream subscriber; one that falls this far behind is disconnected.",
    )
    lifetime_ms: int = setting(
        "STREAM_LIFETIME_MS",
        "3600000",
        _integer(100, 86_400_000),
        "A stream is closed after this long; clients resume it with Last-Event-ID.",
    )

    @property
    def lifetime(self) -> float:
        """:attr:`lifetime_ms` in seconds."""
        return self.lifetime_ms / 1000


@attrs.frozen(kw_only=True)
class SupervisionSettings:
    """How failed actors are restarted, when the service gives up, and how long shutdown takes."""

    shutdown_timeout_ms: int = setting(
        "SHUTDOWN_TIMEOUT_MS",
        "10000",
        _MS,
        "Deadline for the whole graceful shutdown after SIGTERM or SIGINT.",
    )
    restart_backoff_ms: int = setting(
        "RESTART_BACKOFF_MS",
        "500",
        _MS,
        "First delay before the supervisor restarts a failed actor; doubles each time.",
    )
    restart_backoff_max_ms: int = setting(
        "RESTART_BACKOFF_MAX_MS",
        "16000",
        _MS,
        "Upper bound of the restart delay.",
    )
    restart_max_failures: int = setting(
        "RESTART_MAX_FAILURES",
        "5",
        _integer(1, 1000),
        "Failures of one actor within RESTART_WINDOW_MS that end the service.",
    )
    restart_window_ms: int = setting(
        "RESTART_WINDOW_MS",
        "60000",
        _MS,
        "Window in which actor failures are counted.",
    )

    @property
    def shutdown_timeout(self) -> float:
        """:attr:`shutdown_timeout_ms` in seconds."""
        return self.shutdown_timeout_ms / 1000

    def restart_policy(self) -> RestartPolicy:
        """When and how often the supervisor restarts a failed actor."""
        return RestartPolicy(
            backoff=Backoff(
                initial=self.restart_backoff_ms / 1000, maximum=self.restart_backoff_max_ms / 1000
            ),
            max_failures=self.restart_max_failures,
            window=self.restart_window_ms / 1000,
        )


@attrs.frozen(kw_only=True)
class LogSettings:
    """What the service logs."""

    level: str = setting(
        "LOG_LEVEL",
        "INFO",
        _log_level,
        "Logging level: DEBUG, INFO, WARNING or ERROR.",
    )


@attrs.frozen(kw_only=True)
class LocalBrokerSettings:
    """The broker that ``--local-broker`` starts on a developer's machine."""

    port: int = setting(
        "LOCAL_BROKER_PORT",
        "0",
        _integer(0, 65535),
        "Port of the broker started by --local-broker; 0 picks a free one.",
    )


@attrs.frozen(kw_only=True)
class Settings:
    """The parsed configuration, one group per thing it configures; durations are in ms.

    Build it with :func:`load_settings`.
    """

    kafka: KafkaSettings
    publish: PublishSettings
    http: HttpSettings
    limits: LimitSettings
    store: StoreSettings
    idempotency: IdempotencySettings
    streams: StreamSettings
    supervision: SupervisionSettings
    log: LogSettings
    local_broker: LocalBrokerSettings

    @property
    def http_graceful_timeout(self) -> float:
        """How long HTTP lets in-flight requests finish at shutdown: a publish's own timeout
        and a second to answer, within the whole shutdown's deadline."""
        return min(self.publish.timeout + 1, self.supervision.shutdown_timeout)


@attrs.frozen
class Setting:
    """One environment variable: its name, where it lands in :class:`Settings`, its default,
    parser and a one-line description."""

    variable: str
    group: str
    field: str
    default: str
    parse: Parser
    doc: str
    secret: bool = False


def declared_settings(settings_class: type[Any]) -> tuple[Setting, ...]:
    """Every setting declared in the groups that ``settings_class`` composes, in order.

    Raises:
        TypeError: a field of ``settings_class`` is not a group, a group's field was not
            declared with :func:`setting`, or one variable is declared twice.
    """
    declared: dict[str, Setting] = {}
    for group, group_class in _groups(settings_class).items():
        for field in attrs.fields(group_class):
            found = _setting_of(group, field)
            if found is None:
                raise TypeError(
                    f"{group_class.__name__}.{field.name} is not declared with setting()"
                )
            if found.variable in declared:
                first = declared[found.variable]
                raise TypeError(
                    f"{found.variable} is declared twice: {first.group}.{first.field} and "
                    f"{found.group}.{found.field}"
                )
            declared[found.variable] = found
    return tuple(declared.values())


def _groups(settings_class: type[Any]) -> dict[str, type[Any]]:
    """The group classes that ``settings_class`` composes, by field name, in order."""
    attrs.resolve_types(settings_class)
    groups: dict[str, type[Any]] = {}
    for group in attrs.fields(settings_class):
        if not (isinstance(group.type, type) and attrs.has(group.type)):
            raise TypeError(f"{settings_class.__name__}.{group.name} is not a group of settings")
        groups[group.name] = group.type
    return groups


def _setting_of(group: str, field: attrs.Attribute[Any]) -> Setting | None:
    declaration = field.metadata.get(_DECLARATION)
    if not isinstance(declaration, _Declaration):
        return None
    return Setting(
        variable=declaration.variable,
        group=group,
        field=field.name,
        default=declaration.default,
        parse=declaration.parse,
        doc=declaration.doc,
        secret=declaration.secret,
    )


#: Every setting, in declaration order: what ``--help`` and ``.env.example`` list.
SETTINGS: tuple[Setting, ...] = declared_settings(Settings)

#: Variables whose values must never appear in logs or error messages.
SECRET_VARIABLES = frozenset(declared.variable for declared in SETTINGS if declared.secret)

_GROUPS = _groups(Settings)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse every variable of :data:`SETTINGS` from ``environ``, falling back to defaults.

    Raises:
        SettingsError: for the first variable that does not parse or the first pair of
            variables that contradict each other. Secret values are never quoted.
    """
    values: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    for declared in SETTINGS:
        raw = environ.get(declared.variable, declared.default)
        try:
            values[declared.group][declared.field] = declared.parse(raw)
        except ValueError as error:
            problem = "is not valid" if declared.secret else str(error)
            raise SettingsError(declared.variable, problem) from None
    kafka = values["kafka"]
    if kafka["heartbeat_interval_ms"] is None:
        kafka["heartbeat_interval_ms"] = default_heartbeat_ms(kafka["session_timeout_ms"])
    settings = Settings(**{name: _GROUPS[name](**fields) for name, fields in values.items()})
    _check_consistency(settings)
    return settings


#: librdkafka's own heartbeat.interval.ms default.
_LIBRDKAFKA_HEARTBEAT_MS = 3000


def default_heartbeat_ms(session_timeout_ms: int) -> int:
    """The heartbeat for a session timeout when none is set: librdkafka's 3 s, or less so that
    it stays within the third of the session timeout that brokers expect (2000 for 6000)."""
    return min(_LIBRDKAFKA_HEARTBEAT_MS, session_timeout_ms // 3)


def _check_consistency(settings: Settings) -> None:
    kafka, publish, supervision = settings.kafka, settings.publish, settings.supervision
    if kafka.heartbeat_interval_ms * 3 > kafka.session_timeout_ms:
        raise SettingsError(
            "KAFKA_HEARTBEAT_INTERVAL_MS",
            f"must be at most a third of KAFKA_SESSION_TIMEOUT_MS ({kafka.session_timeout_ms})",
        )
    if kafka.max_poll_interval_ms < kafka.session_timeout_ms:
        raise SettingsError(
            "KAFKA_MAX_POLL_INTERVAL_MS",
            f"must be at least KAFKA_SESSION_TIMEOUT_MS ({kafka.session_timeout_ms})",
        )
    if publish.retry_backoff_ms > publish.retry_backoff_max_ms:
        raise SettingsError(
            "PUBLISH_RETRY_BACKOFF_MS", "must not exceed PUBLISH_RETRY_BACKOFF_MAX_MS"
        )
    if supervision.restart_backoff_ms > supervision.restart_backoff_max_ms:
        raise SettingsError("RESTART_BACKOFF_MS", "must not exceed RESTART_BACKOFF_MAX_MS")
    if kafka.dlq_topic is not None and kafka.dlq_topic == kafka.topic:
        raise SettingsError("KAFKA_DLQ_TOPIC", "must differ from KAFKA_TOPIC")
    uses_sasl = kafka.security_protocol.startswith("SASL_")
    if uses_sasl and kafka.sasl_mechanism is None:
        raise SettingsError("KAFKA_SASL_MECHANISM", f"is required with {kafka.security_protocol}")
