"""Prometheus metrics of the edge.

The hot path only adds to plain dicts; `flush` moves the sums into the Prometheus counters after
every write, every backlog poll and before each scrape (a labelled increment with its lock cost
~5% of a request's CPU when done per request).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

# `_created` series double the page for nothing a dashboard uses.
disable_created_metrics()

REQUESTS = Counter("trackpipe_http_requests_total", "HTTP requests answered by the edge", ["route", "code"])
EVENTS = Counter("trackpipe_edge_events_total", "Events seen by the edge, by source and outcome", ["source", "outcome"])
UNAUTHORIZED = Counter(
    "trackpipe_edge_unauthorized_requests_total", "Requests whose key was missing or unknown", ["reason"]
)
COMMIT_EVENTS = Histogram(
    "trackpipe_edge_commit_events",
    "Events per group commit (one ingest job each)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
COMMIT_SECONDS = Histogram(
    "trackpipe_edge_commit_seconds",
    "Time of one group-commit write to Redis",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
COMMIT_FAILURES = Counter("trackpipe_edge_commit_failures_total", "Group-commit writes that failed")
HEADER_TIMEOUTS = Counter(
    "trackpipe_edge_header_timeouts_total",
    "Connections closed because a request's headers did not arrive within edge.header_timeout_seconds",
)
BACKLOG = Gauge(
    "trackpipe_ingest_backlog_jobs",
    "Ingest jobs waiting on a shard, as last seen by this edge",
    ["shard"],
    multiprocess_mode="max",
)

_pending_requests: dict[tuple[str, int], int] = {}
_pending_events: dict[tuple[str, str], int] = {}


def count_request(route: str, code: int) -> None:
    key = (route, code)
    _pending_requests[key] = _pending_requests.get(key, 0) + 1


def count_events(source: str, outcome: str, n: int) -> None:
    if n:
        key = (source, outcome)
        _pending_events[key] = _pending_events.get(key, 0) + n


def flush() -> None:
    """Apply the counts gathered since the last flush (runs on the event loop, like the counting)."""
    while _pending_requests:
        (route, code), n = _pending_requests.popitem()
        REQUESTS.labels(route, str(code)).inc(n)
    while _pending_events:
        (source, outcome), n = _pending_events.popitem()
        EVENTS.labels(source, outcome).inc(n)


def observe_commit(events: int, seconds: float) -> None:
    flush()
    COMMIT_EVENTS.observe(events)
    COMMIT_SECONDS.observe(seconds)


def render() -> tuple[bytes, str]:
    """The metrics page; with several edge processes, the sum over all of them."""
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST
