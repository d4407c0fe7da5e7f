"""Read a Prometheus text exposition with prometheus-client's own parser, for assertions.

Synopsis::

    scrape = Scrape.parse(metrics.exposition().decode())
    scrape.value("user_activity_events_consumed_total", outcome="stored")   # 3.0
    scrape.families["user_activity_consumer_lag_messages"].type              # "gauge"
    later.delta(earlier, "user_activity_http_requests_total", route="/health", ...)

Imported as ``metric_samples``: ``tests/`` is on ``sys.path`` (see ``fakes``).
"""

from __future__ import annotations

import attrs
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape"]


@attrs.frozen
class Scrape:
    """One exposition, parsed: every family by name, every sample by name and labels."""

    families: dict[str, Metric]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        return cls({family.name: family for family in text_string_to_metric_families(text)})

    def sample_names(self) -> set[str]:
        return {sample.name for family in self.families.values() for sample in family.samples}

    def samples(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample called ``name`` (e.g. ``x_total`` or ``x_bucket``), by its labels."""
        return {
            frozenset(sample.labels.items()): sample.value
            for family in self.families.values()
            for sample in family.samples
            if sample.name == name
        }

    def value(self, name: str, **labels: str) -> float:
        """The one sample called ``name`` with exactly ``labels``.

        Raises:
            KeyError: no such sample.
        """
        return self.samples(name)[frozenset(labels.items())]

    def delta(self, earlier: Scrape, name: str, **labels: str) -> float:
        """How much the sample moved since ``earlier`` (absent there counts as 0)."""
        before = earlier.samples(name).get(frozenset(labels.items()), 0.0)
        return self.value(name, **labels) - before
