"""Queue depth, lag, retries and dead letters as Prometheus gauges, read from Redis at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trackpipe.config import Config
from trackpipe.connection import sync_client
from trackpipe.queries import collect


class QueueCollector(Collector):
    def __init__(self, config: Config, redis_url: str) -> None:
        self._config = config
        self._redis = sync_client(redis_url, socket_connect_timeout=2, socket_timeout=5)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("trackpipe_queue_jobs", "Jobs waiting on a queue", labels=["queue"])
        lag = GaugeMetricFamily(
            "trackpipe_queue_lag_seconds", "How long the oldest waiting job has waited", labels=["queue"]
        )
        scheduled = GaugeMetricFamily("trackpipe_queue_scheduled_jobs", "Jobs waiting for their time", labels=["queue"])
        taken = GaugeMetricFamily(
            "trackpipe_queue_taken_jobs", "Jobs taken by a worker and not started", labels=["queue"]
        )
        dlq = GaugeMetricFamily("trackpipe_dlq_events", "Dead letters kept per destination", labels=["destination"])
        try:
            status = collect(self._config, self._redis)
        except OSError:  # Redis down: no queue figures this scrape, the rest of the page still serves
            return
        for queue in status.queues:
            depth.add_metric([queue.name], queue.depth)
            lag.add_metric([queue.name], queue.lag_seconds or 0.0)
            scheduled.add_metric([queue.name], queue.scheduled)
            taken.add_metric([queue.name], queue.taken)
        for destination in status.destinations:
            dlq.add_metric([destination.id], destination.dlq)
        yield from (depth, lag, scheduled, taken, dlq)
