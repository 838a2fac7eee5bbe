"""One group-commit write: the events join the ingest queue's open job, in one script call.

See trackpipe.openjob: a write joins the ingest job still waiting at the tail of the queue while
it holds fewer than `max_events`, else it makes a new job. So the edge can write eagerly (short
waits for producers) without flooding the workers with tiny jobs when they fall behind.

The commands are built without I/O; the edge sends them on the event loop (`ingest.wire`),
tools and tests with a sync redis-py client.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from ingest.unauthorized import UnauthorizedSample, encode_sample
from trackpipe.config import WorkerConfig
from trackpipe.jobs import INGEST_FUNCTION, SafeJob, ingest_job_options, ingest_queue
from trackpipe.keys import INGEST_QUEUE, KeyLayout
from trackpipe.messages import IngestBatch, decode_batch, encode_batch
from trackpipe.openjob import OpenJobWriter, held_payloads, recording_connection

# Without one, RQ would describe the job by repr() of its arguments.
INGEST_DESCRIPTION = "ingest batch"


class WriteBuilder:
    """Builds the commands of one write; pure apart from the new job's id and timestamps."""

    def __init__(
        self, layout: KeyLayout, ring_size: int, worker: WorkerConfig | None = None, max_events: int = 2_000
    ) -> None:
        self._jobs = OpenJobWriter(
            ingest_queue(recording_connection()),
            layout,
            INGEST_FUNCTION,
            INGEST_DESCRIPTION,
            ingest_job_options(worker or WorkerConfig()),
            max_events,
        )
        self._layout = layout
        self._ring_size = ring_size
        self.queue_key = layout.queue(INGEST_QUEUE)

    def build(self, batch: IngestBatch | None, samples: list[UnauthorizedSample]) -> list[tuple[Any, ...]]:
        """The refused-key samples, then the command that stores the batch; the last reply ends
        with the ingest queue length (the edge's backlog figure)."""
        commands: list[tuple[Any, ...]] = []
        self._add_samples(commands, samples)
        if batch is not None and batch.records:
            commands.append(self._jobs.command(encode_batch(batch), batch.event_count, str(uuid.uuid4())))
        else:
            commands.append(("LLEN", self.queue_key))
        return commands

    def _add_samples(self, commands: list[tuple[Any, ...]], samples: list[UnauthorizedSample]) -> None:
        counts: dict[str, int] = {}
        for sample in samples:
            field = f"{sample.site_id}|{sample.reason}"
            counts[field] = counts.get(field, 0) + 1
            if self._ring_size:
                ring = self._layout.unauthorized_ring(sample.site_id)
                commands.append(("LPUSH", ring, encode_sample(sample)))
                commands.append(("LTRIM", ring, 0, self._ring_size - 1))
        for field, n in counts.items():
            commands.append(("HINCRBY", self._layout.unauthorized_count, field, n))


def backlog_from(reply: Any) -> int:
    """The ingest queue length from the last reply of a write (LLEN, or the script's pair)."""
    return int(reply[-1]) if isinstance(reply, list) else int(reply)


class Commands(Protocol):
    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]: ...


class RedisPyCommands:
    """`Commands` over a redis-py asyncio client (in-process tests on fakeredis)."""

    def __init__(self, connection: AsyncRedis) -> None:
        self._redis = connection

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()

    def close(self) -> None:
        pass


class AsyncIngestStore:
    """The edge's writer: each write is sent from the event loop."""

    def __init__(
        self,
        commands: Commands,
        layout: KeyLayout,
        ring_size: int,
        worker: WorkerConfig | None = None,
        max_events: int = 2_000,
    ) -> None:
        self._commands = commands
        self._builder = WriteBuilder(layout, ring_size, worker, max_events)

    async def write(self, batch: IngestBatch | None, samples: list[UnauthorizedSample]) -> int:
        """Store the batch in an ingest job (and the samples); return the ingest queue length."""
        return backlog_from((await self._commands.execute(self._builder.build(batch, samples)))[-1])


class IngestStore:
    """The same write with a sync client (benchmarks, tools, tests)."""

    def __init__(
        self,
        connection: Redis,
        layout: KeyLayout,
        ring_size: int,
        worker: WorkerConfig | None = None,
        max_events: int = 2_000,
    ) -> None:
        self._redis = connection
        self._builder = WriteBuilder(layout, ring_size, worker, max_events)

    def write(self, batch: IngestBatch | None, samples: list[UnauthorizedSample]) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for command in self._builder.build(batch, samples):
            pipe.execute_command(*command)
        return backlog_from(pipe.execute()[-1])

    def close(self) -> None:
        self._redis.close()


def held_batches(connection: Redis, layout: KeyLayout, job: SafeJob) -> list[IngestBatch]:
    """Every write an ingest job holds, in order (a read: workers seal the job first)."""
    return [decode_batch(p) for p in held_payloads(connection, layout, job)]
