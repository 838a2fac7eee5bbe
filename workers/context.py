"""What jobs need from the worker process: the config, the key layout, the dedup script, metrics."""

from __future__ import annotations

from prometheus_client import Counter
from redis import Redis

from destinations import open_sender
from destinations.base import Sender
from trackpipe.config import Config, SourceConfig
from trackpipe.jobs import DELIVER_FUNCTION, delivery_job_options, delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.openjob import OpenJobWriter, recording_connection
from trackpipe.replication import ReplicaWait, replica_wait
from trackpipe.types import DestinationBase
from workers.deadletter import fold_legacy_dropped
from workers.dedup import Deduplicator

EVENTS_PROCESSED = Counter(
    "trackpipe_events_processed_total", "Events processed by ingest jobs, by source and status", ["source", "status"]
)
EVENTS_QUEUED = Counter("trackpipe_events_queued_total", "Events queued for delivery, by destination", ["destination"])
# Events one delivery job may gather from several fan-outs (the webhook still sends them in
# requests of its batch_size).
DELIVERY_JOB_MAX_EVENTS = 2_000

DEDUP_HITS = Counter("trackpipe_dedup_hits_total", "Events found to be duplicates", ["source"])


class WorkerContext:
    def __init__(self, config: Config, connection: Redis) -> None:
        self.config = config
        self.layout = KeyLayout(config.key_prefix)
        self.sources: dict[str, SourceConfig] = {s.id: s for s in config.sources}
        self.dedup = Deduplicator(connection, self.layout, config.dedup.window_seconds, config.dedup.buckets)
        self.destinations: dict[str, DestinationBase] = {d.id: d for d in config.destinations}
        # edge.min_replicas governs the workers too: their settle writes end with WAITAOF.
        self.replica_wait: ReplicaWait | None = replica_wait(config)
        self._senders: dict[str, Sender] = {}
        self._delivery_writers: dict[str, OpenJobWriter] = {}
        # Once per worker: counts an earlier version kept at the dropped-letter hash's old name move
        # to the new one, so delivery never meets a hash where a destination `dropped` keeps its DLQ.
        fold_legacy_dropped(connection, self.layout)

    def delivery_writer(self, destination_id: str) -> OpenJobWriter:
        """Adds fan-outs to the destination's open delivery job (see trackpipe.openjob)."""
        writer = self._delivery_writers.get(destination_id)
        if writer is None:
            writer = self._delivery_writers[destination_id] = OpenJobWriter(
                delivery_queue(destination_id, recording_connection()),
                self.layout,
                DELIVER_FUNCTION,
                f"deliver to {destination_id}",
                delivery_job_options(self.config.worker),
                DELIVERY_JOB_MAX_EVENTS,
            )
        return writer

    def sender(self, destination_id: str) -> Sender:
        """One sender per destination per process (the webhook's keeps its connection pool)."""
        sender = self._senders.get(destination_id)
        if sender is None:
            settings = self.destinations[destination_id]
            sender = self._senders[destination_id] = open_sender(settings)
        return sender

    def close(self) -> None:
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()

    def observe_ingest(self, status_counts: dict[tuple[str, str], int], queued: dict[str, int]) -> None:
        for (source, status), n in status_counts.items():
            EVENTS_PROCESSED.labels(source, status).inc(n)
            if status == "DUPLICATE":
                DEDUP_HITS.labels(source).inc(n)
        for destination, n in queued.items():
            EVENTS_QUEUED.labels(destination).inc(n)


_current: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _current
    _current = context


def current_context() -> WorkerContext:
    if _current is None:
        raise RuntimeError("no worker context: start jobs with `trackpipe worker`")
    return _current
