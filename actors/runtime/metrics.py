"""Prometheus metrics of one service instance, from the actors' own observations.

The supervisor creates one :class:`Metrics` per service, with a registry of its own (never
prometheus-client's global one, so that tests can run many services in one process), and
hands it to the actors. Each actor records only what it observes itself, through the methods
below; none reads or writes another's entries. Values that already live elsewhere are read when
Prometheus scrapes instead of being copied on every change: each actor's state and the store's
size from :class:`~actors.runtime.health.Health`, mailbox depths from the channels'
``statistics()``. The HTTP actor serves :meth:`Metrics.exposition` as ``GET /metrics``.

Every name starts with :data:`PREFIX` and follows Prometheus' conventions (``_total`` for
counters, base units such as ``_seconds`` and ``_bytes``); README.md lists them all.

Synopsis::

    metrics = Metrics(restartable=("consumer", "publisher"))
    metrics.watch_health(health)
    metrics.watch_mailbox("publisher", publish_send)
    metrics.http_request(route="/events/generate", method="POST", status=201, seconds=0.004)
    metrics.event_consumed("stored")
    body = metrics.exposition()          # the text format, CONTENT_TYPE names it

prometheus-client's instruments are thread-safe, so the Kafka clients' statistics may be
recorded from a worker thread as well as from trio's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, get_args

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from actors.domain.messages import PublishFailureKind
from actors.runtime.health import ActorState, Health

__all__ = [
    "CONSUME_OUTCOMES",
    "CONTENT_TYPE",
    "PREFIX",
    "PUBLISH_FAILURE_KINDS",
    "ConsumeOutcome",
    "Metrics",
]

# NOTE: process-wide, the library's only switch: no `_created` series beside each counter and
# histogram (the text format shows them as gauges of their own, which nobody here reads).
disable_created_metrics()  # type: ignore[no-untyped-call]  # the library leaves it unannotated

#: The one prefix of every metric the service exports.
PREFIX = "user_activity_"

#: ``Content-Type`` of :meth:`Metrics.exposition`: the classic text format, which every
#: Prometheus reads (and what the library's own HTTP handler answers a plain scrape with).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Why a POST got no 201 although its event was valid: ``publish_failures_total``'s reasons.
PUBLISH_FAILURE_KINDS: tuple[PublishFailureKind, ...] = get_args(PublishFailureKind)

#: What became of one consumed record; exactly one per record.
ConsumeOutcome = Literal["stored", "duplicate", "malformed", "dead_lettered"]
CONSUME_OUTCOMES: tuple[ConsumeOutcome, ...] = get_args(ConsumeOutcome)

#: Request and publish latencies: from a millisecond up to the longest publish timeout in use.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: End-to-end latency also covers a consumer that is minutes behind.
END_TO_END_BUCKETS = (*LATENCY_BUCKETS, 30.0, 60.0, 300.0)


class Metrics:
    """The instruments of one service and the registry they live in.

    Args:
        restartable: actors whose restarts are counted; their series exist from the start at
            0, so that ``increase()`` in an alert sees the first restart.
    """

    def __init__(self, *, restartable: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._http_requests = Counter(
            f"{PREFIX}http_requests",
            "HTTP requests answered, by route (the matched path pattern), method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self._http_duration = Histogram(
            f"{PREFIX}http_request_duration_seconds",
            "Time from a request's arrival at the app to its response (a listing's body is "
            "streamed after that), by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._published = Counter(
            f"{PREFIX}events_published",
            "Events the broker acknowledged to the publisher.",
            registry=self.registry,
        )
        self._publish_failures = Counter(
            f"{PREFIX}publish_failures",
            "Valid POSTed events answered without 201, by reason: timeout (no acknowledgement "
            "in time), queue_full (publisher or producer queue full), refused (the broker "
            "refused for good), unavailable (the publisher was not running).",
            ("reason",),
            registry=self.registry,
        )
        self._publish_latency = Histogram(
            f"{PREFIX}publish_latency_seconds",
            "Time from a POST handing its event to the publisher to the broker's acknowledgement.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._consumed = Counter(
            f"{PREFIX}events_consumed",
            "Records the consumer handled, by outcome: stored, duplicate, malformed (logged "
            "and skipped), dead_lettered (malformed, copied to the dead-letter topic).",
            ("outcome",),
            registry=self.registry,
        )
        self._end_to_end = Histogram(
            f"{PREFIX}end_to_end_latency_seconds",
            "Time from an event's timestamp (set when it was accepted) to its being stored, "
            "across the two clocks of publisher and consumer.",
            buckets=END_TO_END_BUCKETS,
            registry=self.registry,
        )
        self._restarts = Counter(
            f"{PREFIX}actor_restarts",
            "Restarts of a failed actor by the supervisor, by actor.",
            ("actor",),
            registry=self.registry,
        )
        self._producer_queue = Gauge(
            f"{PREFIX}producer_queue_messages",
            "Messages in the publisher's librdkafka queues, not yet acknowledged (from its "
            "statistics, every second).",
            registry=self.registry,
        )
        self._assigned = Gauge(
            f"{PREFIX}assigned_partitions",
            "Partitions assigned to this instance's consumer (from its statistics).",
            registry=self.registry,
        )
        self._lag = Gauge(
            f"{PREFIX}consumer_lag_messages",
            "Messages between the consumer's position and the partition's high watermark, per "
            "assigned partition (librdkafka's consumer_lag, every second).",
            ("topic", "partition"),
            registry=self.registry,
        )
        self._lag_series: set[tuple[str, str]] = set()
        ProcessCollector(namespace=PREFIX.rstrip("_"), registry=self.registry)
        # Children resolved once: a labelled lookup per event would cost more than the count.
        self._failure_counters = {
            reason: self._publish_failures.labels(reason) for reason in PUBLISH_FAILURE_KINDS
        }
        self._outcome_counters = {
            outcome: self._consumed.labels(outcome) for outcome in CONSUME_OUTCOMES
        }
        #: (route, method, status) -> its request counter and its route's duration histogram;
        #: bounded because unknown paths share the route "unmatched".
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        for actor in restartable:
            self._restarts.labels(actor)
        self._scraped = _ScrapeTimeValues()
        self.registry.register(self._scraped)

    # --- read when scraped -------------------------------------------------------------------

    def watch_health(self, health: Health) -> None:
        """Export each actor's state, readiness and the store's size from ``health``."""
        self._scraped.health = health

    def watch_mailbox(self, name: str, channel: trio.MemorySendChannel[Any]) -> None:
        """Export the depth and capacity of the mailbox behind ``channel`` as ``name``."""
        self._scraped.mailboxes[name] = channel.statistics

    # --- the HTTP actor ----------------------------------------------------------------------

    def http_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self._http_requests.labels(route, method, str(status)),
                self._http_duration.labels(route),
            )
            self._request_children[key] = children
        counter, duration = children
        counter.inc()
        duration.observe(seconds)

    def publish_acknowledged(self, seconds: float) -> None:
        """A POST's event was acknowledged ``seconds`` after it was handed to the publisher."""
        self._publish_latency.observe(seconds)

    def publish_failed(self, reason: PublishFailureKind) -> None:
        self._failure_counters[reason].inc()

    # --- the publisher -----------------------------------------------------------------------

    def event_published(self) -> None:
        self._published.inc()

    def producer_queue(self, messages: int) -> None:
        self._producer_queue.set(messages)

    # --- the consumer ------------------------------------------------------------------------

    def event_consumed(self, outcome: ConsumeOutcome) -> None:
        self._outcome_counters[outcome].inc()

    def end_to_end(self, seconds: float) -> None:
        self._end_to_end.observe(max(0.0, seconds))

    def consumer_assignment(self, partitions: int, lag: Mapping[tuple[str, int], int]) -> None:
        """The consumer's assignment size and the lag of each partition whose lag is known;
        the series of partitions no longer listed are removed."""
        self._assigned.set(partitions)
        current = {(topic, str(partition)): value for (topic, partition), value in lag.items()}
        for gone in self._lag_series - current.keys():
            self._lag.remove(*gone)
        for labels, value in current.items():
            self._lag.labels(*labels).set(value)
        self._lag_series = set(current)

    # --- supervision -------------------------------------------------------------------------

    def actor_restarted(self, actor: str) -> None:
        self._restarts.labels(actor).inc()

    # --- exposition ----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)


class _ScrapeTimeValues:
    """A collector of values owned elsewhere, read only when Prometheus scrapes."""

    def __init__(self) -> None:
        self.health: Health | None = None
        self.mailboxes: dict[str, Callable[[], trio.MemoryChannelStatistics]] = {}

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        families = list(self._families())
        self._fill(families)
        return families

    def _families(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            f"{PREFIX}mailbox_depth", "Messages waiting in an actor's mailbox.", labels=["mailbox"]
        )
        yield GaugeMetricFamily(
            f"{PREFIX}mailbox_capacity",
            "How many messages an actor's mailbox holds before senders are refused or wait.",
            labels=["mailbox"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}actor_state",
            "1 for the state each actor is in, 0 for the others.",
            labels=["actor", "state"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}ready",
            "1 when every actor runs and the consumer holds its assignment (GET /health/ready "
            "answers 200), else 0.",
        )
        yield GaugeMetricFamily(f"{PREFIX}stored_events", "Events the store holds.")
        yield GaugeMetricFamily(
            f"{PREFIX}stored_bytes",
            "Bytes the stored events take, as the store counts them against STORE_MAX_BYTES.",
        )

    def _fill(self, families: list[GaugeMetricFamily]) -> None:
        depth, capacity, state, ready, events, size = families
        for name, statistics in self.mailboxes.items():
            current = statistics()
            depth.add_metric([name], current.current_buffer_used)
            capacity.add_metric([name], current.max_buffer_size)
        if self.health is None:
            return
        for actor, actor_state in self.health.states().items():
            for candidate in ActorState:
                state.add_metric([actor, candidate.value], float(candidate is actor_state))
        ready.add_metric([], float(self.health.healthy))
        events.add_metric([], self.health.gauges.get("store_events", 0))
        size.add_metric([], self.health.gauges.get("store_bytes", 0))
