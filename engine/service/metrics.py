"""Prometheus metrics of one engine, in its own registry (two services in one process never clash)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401  (re-exported for the API)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.service.store.availability import Availability

#: Seconds; stages run from under a second (tiny preset) to minutes (300 frames on a small GPU).
_STAGE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_SUBMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_length = Gauge("spooky_queue_length", "Jobs waiting to run", registry=r)
        self.running = Gauge("spooky_jobs_running", "Jobs running now (0 or 1)", registry=r)
        self.jobs = Counter(
            "spooky_jobs", "Finished jobs by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.submits = Counter(
            "spooky_submits",
            "Submit requests by outcome (accepted, duplicate or a refusal code)",
            ["outcome"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "spooky_stage_seconds",
            "Duration of one pipeline stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "spooky_job_seconds",
            "Duration of a job from start to end",
            ["kind"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.submit_seconds = Histogram(
            "spooky_submit_seconds", "Time to accept or refuse a submit", buckets=_SUBMIT_BUCKETS, registry=r
        )
        self.gpu_memory = Gauge(
            "spooky_gpu_memory_bytes",
            "CUDA memory held by the engine (allocated, reserved)",
            ["kind"],
            registry=r,
        )

    def watch_database(self, availability: Availability) -> None:
        """Export the shared database's availability (`spooky_database_*`), read at each scrape."""
        self.registry.register(_DatabaseCollector(availability))

    def update_gpu(self) -> None:
        """Refresh the GPU gauges; nothing without CUDA, and nothing on a node that never imported
        torch (an API node): the gauge stays absent."""
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            self.gpu_memory.labels("allocated").set(torch.cuda.memory_allocated())
            self.gpu_memory.labels("reserved").set(torch.cuda.memory_reserved())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DatabaseCollector(Collector):
    def __init__(self, availability: Availability) -> None:
        self.availability = availability

    def collect(self) -> Iterator[Metric]:
        c = self.availability.counts()
        yield GaugeMetricFamily(
            "spooky_database_up", "1 while the shared database answers this node, 0 during an outage", c.up
        )
        yield CounterMetricFamily(
            "spooky_database_outages", "Outages of the shared database this node saw", c.outages
        )
        yield CounterMetricFamily(
            "spooky_database_unavailable_calls",
            "Store calls and listener connections that found the shared database unavailable",
            c.failed_calls,
        )
        yield CounterMetricFamily(
            "spooky_database_down_seconds", "Total seconds of the outages that ended", c.down_seconds
        )
