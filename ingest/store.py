"""The synchronous write behind a group commit: one RQ ingest job per write, in one round trip.

Runs in the edge's single storage thread with its own Redis connection (RQ is synchronous).
"""

from __future__ import annotations

from redis import Redis

from ingest.unauthorized import UnauthorizedSample, encode_sample
from trackpipe.config import WorkerConfig
from trackpipe.jobs import INGEST_FUNCTION, ingest_job_options, ingest_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, encode_batch

# Without one, RQ would describe the job by repr() of its arguments: kilobytes of event bytes.
INGEST_DESCRIPTION = "ingest batch"


class IngestStore:
    def __init__(
        self, connection: Redis, layout: KeyLayout, ring_size: int, worker: WorkerConfig | None = None
    ) -> None:
        self._redis = connection
        self._job_options = ingest_job_options(worker or WorkerConfig())
        self._layout = layout
        self._queue = ingest_queue(connection)
        self._ring_size = ring_size

    def write(self, batch: IngestBatch | None, samples: list[UnauthorizedSample]) -> int:
        """Store the batch as one ingest job (and the refused-key samples); return the queue length.

        MULTI/EXEC: the job's hash and its place on the queue land together or not at all.
        """
        pipe = self._redis.pipeline(transaction=True)
        if batch is not None and batch.records:
            self._queue.enqueue_call(
                INGEST_FUNCTION,
                args=(encode_batch(batch),),
                pipeline=pipe,
                description=INGEST_DESCRIPTION,
                **self._job_options,
            )
        self._add_samples(pipe, samples)
        pipe.llen(self._queue.key)
        return int(pipe.execute()[-1])

    def _add_samples(self, pipe, samples: list[UnauthorizedSample]) -> None:
        counts: dict[str, int] = {}
        for sample in samples:
            field = f"{sample.site_id}|{sample.reason}"
            counts[field] = counts.get(field, 0) + 1
            if self._ring_size:
                ring = self._layout.unauthorized_ring(sample.site_id)
                pipe.lpush(ring, encode_sample(sample))
                pipe.ltrim(ring, 0, self._ring_size - 1)
        for field, n in counts.items():
            pipe.hincrby(self._layout.unauthorized_count, field, n)

    def backlog(self) -> int:
        return int(self._redis.llen(self._queue.key))

    def close(self) -> None:
        self._redis.close()
