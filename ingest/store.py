"""One group-commit write: the events join the ingest queue's open job, in one script call.

See trackpipe.openjob: a write joins the ingest job still waiting at the tail of the queue while
it holds fewer than `max_events`, else it makes a new job. So the edge can write eagerly (short
waits for producers) without flooding the workers with tiny jobs when they fall behind.

The commands are built without I/O; the edge sends them on the event loop (`ingest.wire`),
tools and tests with a sync redis-py client.

With `min_replicas` N > 0 a write that stores events ends with `WAIT N timeout` and `WAITAOF 1 N
slice` in the same round trip, and more slices follow on the same connection until the replicas confirm or
`replica_timeout_ms` is up (trackpipe.replication.WAIT_SLICE_MS says why): the write counts as
stored only when a reply says the primary and N replicas have it in their append-only file;
otherwise the whole write fails (NotReplicated, a 503 for every request it holds), as any Redis
error does. A reconnect between slices fails the write too: WAITAOF on a new connection would
confirm nothing of the old one's writes.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from ingest.commit import StorageUnavailable
from ingest.unauthorized import UnauthorizedSample, encode_sample
from trackpipe.config import WorkerConfig
from trackpipe.jobs import INGEST_FUNCTION, SafeJob, ingest_job_options, ingest_queue
from trackpipe.keys import INGEST_QUEUE, KeyLayout
from trackpipe.messages import IngestBatch, decode_batch, encode_batch
from trackpipe.openjob import OpenJobWriter, held_payloads, recording_connection
from trackpipe.replication import is_short, slice_ms

# Without one, RQ would describe the job by repr() of its arguments.
INGEST_DESCRIPTION = "ingest batch"


class NotReplicated(StorageUnavailable):
    """WAITAOF said fewer copies are on disk than asked for (or it timed out): not stored."""

    def public_reason(self) -> str:
        return f"storage unavailable, not acknowledged: {self}"


class WriteBuilder:
    """Builds the commands of one write; pure apart from the new job's id and timestamps."""

    def __init__(
        self,
        layout: KeyLayout,
        ring_size: int,
        worker: WorkerConfig | None = None,
        max_events: int = 2_000,
        *,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1_000,
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
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms

    def build(self, batch: IngestBatch | None, samples: list[UnauthorizedSample]) -> list[tuple[Any, ...]]:
        """The refused-key samples, then the command that stores the batch (its reply ends with the
        ingest queue length, the edge's backlog figure), then WAITAOF when replicas are required.
        Read the replies with `outcome`."""
        commands: list[tuple[Any, ...]] = []
        self._add_samples(commands, samples)
        if batch is not None and batch.records:
            commands.append(self._jobs.command(encode_batch(batch), batch.event_count, str(uuid.uuid4())))
            if self.min_replicas:
                # After the script, on the same connection: it waits for everything written so far.
                # WAIT first: trackpipe.replication.WAIT_SLICE_MS says why.
                commands.append(("WAIT", self.min_replicas, self.replica_timeout_ms))
                commands.append(self.wait_command(self.replica_timeout_ms))
        else:
            # Samples only: nobody waits for them, so no replica wait either.
            commands.append(("LLEN", self.queue_key))
        return commands

    def wait_command(self, remaining_ms: float) -> tuple[Any, ...]:
        """One slice of the replica wait."""
        return ("WAITAOF", 1, self.min_replicas, slice_ms(remaining_ms))

    def short(self, commands: list[tuple[Any, ...]], replies: list[Any]) -> bool:
        """The write waits for replicas and its last WAITAOF reply has not confirmed them yet."""
        return commands[-1][0] == "WAITAOF" and is_short(replies[-1], self.min_replicas)

    def outcome(self, commands: list[tuple[Any, ...]], replies: list[Any]) -> int:
        """The ingest queue length after the write; NotReplicated if WAITAOF fell short."""
        if commands[-1][0] != "WAITAOF":
            return backlog_from(replies[-1])
        local, replicas = (int(n) for n in replies[-1])
        if local < 1 or replicas < self.min_replicas:
            raise NotReplicated(
                f"the write reached {replicas} of {self.min_replicas} required replicas"
                f"{'' if local else ' and not the primary disk'} within {self.replica_timeout_ms} ms"
            )
        return backlog_from(replies[-3])

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
    # Changes whenever the underlying connection is replaced (a reconnect): a later WAITAOF would
    # then wait for another connection's writes.
    generation: int

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]: ...


class RedisPyCommands:
    """`Commands` over a redis-py asyncio client (in-process tests on fakeredis)."""

    def __init__(self, connection: AsyncRedis) -> None:
        self._redis = connection
        # A pool gives no promise that two pipelines share a connection: no second slice is sent
        # (tests on fakeredis only; the edge uses ingest.wire's single connection).
        self.generation = -1

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
        *,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1_000,
    ) -> None:
        self._commands = commands
        self._builder = WriteBuilder(
            layout, ring_size, worker, max_events, min_replicas=min_replicas, replica_timeout_ms=replica_timeout_ms
        )

    async def write(self, batch: IngestBatch | None, samples: list[UnauthorizedSample]) -> int:
        """Store the batch in an ingest job (and the samples); return the ingest queue length."""
        builder = self._builder
        commands = builder.build(batch, samples)
        deadline = time.monotonic() + builder.replica_timeout_ms / 1000
        replies = await self._commands.execute(commands)
        generation = self._commands.generation  # the connection that carried the write
        while builder.short(commands, replies) and generation >= 0:
            remaining = (deadline - time.monotonic()) * 1000
            if remaining < 1:
                break
            more = await self._commands.execute([builder.wait_command(remaining)])
            if self._commands.generation != generation:
                raise NotReplicated("the connection was replaced while waiting for replicas")
            replies[-1] = more[0]
        return builder.outcome(commands, replies)


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
        commands = self._builder.build(batch, samples)
        for command in commands:
            pipe.execute_command(*command)
        return self._builder.outcome(commands, pipe.execute())

    def close(self) -> None:
        self._redis.close()


def held_batches(connection: Redis, layout: KeyLayout, job: SafeJob) -> list[IngestBatch]:
    """Every write an ingest job holds, in order (a read: workers seal the job first)."""
    return [decode_batch(p) for p in held_payloads(connection, layout, job)]
