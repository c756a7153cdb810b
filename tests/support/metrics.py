"""Reading what a ``/metrics`` endpoint answers."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

#: Every sample of an answer, by name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """The samples of a Prometheus text-format answer."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample; 0 when it is absent (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
