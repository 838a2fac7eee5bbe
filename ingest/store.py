"""One group-commit write: the events go into an ingest job, in one atomic script call.

A write joins the ingest job still waiting at the tail of the queue (the "open" job) while that
job holds fewer than `max_events`; otherwise it creates a new RQ job. So while workers keep up,
each write is soon its own job (low latency); when they fall behind, queued jobs grow instead of
multiplying, and a worker's fixed cost per job (~7 ms of RQ bookkeeping, ~50 round trips) is
spread over more events. The edge can then write eagerly without flooding the workers.

Why it is safe: a job leaves the queue list when a worker takes it (RQ's LMOVE), and the script
only adds to a job that is both the open one and still the queue's last entry. A worker first
*seals* its job (clears the open marker if it names the job, see workers.ingest) and then reads
the parts: nothing is added after that, so a re-run after a crash reads the same parts.

The commands are built without I/O. The new job's hash is RQ's own enqueue, recorded once into a
pipeline that never connects; its data is constant (the function and an empty payload), so
nothing is compressed per write. The edge sends the commands on the event loop (`ingest.wire`),
tools and tests with a sync redis-py client.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from redis import ConnectionPool, Redis
from redis.asyncio import Redis as AsyncRedis

from ingest.unauthorized import UnauthorizedSample, encode_sample
from trackpipe.config import WorkerConfig
from trackpipe.jobs import INGEST_FUNCTION, SafeJob, ingest_job_options, ingest_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, decode_batch, encode_batch

# Without one, RQ would describe the job by repr() of its arguments.
INGEST_DESCRIPTION = "ingest batch"
# Events an ingest job holds (a field trackpipe adds to RQ's job hash).
EVENTS_FIELD = "trackpipe_events"
_TEMPLATE_ID = "00000000-0000-4000-8000-000000000000"
_PER_JOB_FIELDS = ("created_at", "enqueued_at")

# KEYS: 1 ingest queue, 2 open-job marker, 3 RQ's set of queues
# ARGV: 1 payload, 2 events in it, 3 max events per job, 4 parts key prefix, 5 job key prefix,
#       6 new job id, 7.. the new job's hash as field, value pairs
# Returns {1 if a job was created else 0, ingest queue length}.
WRITE_SCRIPT = (
    """
local open = redis.call('GET', KEYS[2])
if open and redis.call('LINDEX', KEYS[1], -1) == open then
  local job_key = ARGV[5] .. open
  local held = redis.call('HMGET', job_key, 'status', '"""
    + EVENTS_FIELD
    + """')
  if held[1] == 'queued' and tonumber(held[2] or '0') + tonumber(ARGV[2]) <= tonumber(ARGV[3]) then
    redis.call('RPUSH', ARGV[4] .. open, ARGV[1])
    redis.call('HINCRBY', job_key, '"""
    + EVENTS_FIELD
    + """', ARGV[2])
    return {0, redis.call('LLEN', KEYS[1])}
  end
end
local id = ARGV[6]
local job_key = ARGV[5] .. id
redis.call('HSET', job_key, unpack(ARGV, 7))
redis.call('HSET', job_key, '"""
    + EVENTS_FIELD
    + """', ARGV[2])
redis.call('RPUSH', ARGV[4] .. id, ARGV[1])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('RPUSH', KEYS[1], id)
redis.call('SET', KEYS[2], id)
return {1, redis.call('LLEN', KEYS[1])}
"""
)


class _RecordOnlyPool(ConnectionPool):
    """A pool that refuses to connect: the recorder must never talk to a server."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the write recorder does no I/O")


def rq_timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # rq.utils.utcformat


def recorded_ingest_job(worker: WorkerConfig) -> tuple[str, list[Any], list[int]]:
    """RQ's enqueue of an ingest job (empty payload), recorded without I/O: the job key prefix,
    the job hash as a flat field/value list, and where in it the timestamps go."""
    queue = ingest_queue(Redis(connection_pool=_RecordOnlyPool()))
    # RQ would ask the server (INFO) for this; enqueueing only copies it onto the Job object.
    queue.redis_server_version = (7, 0, 0)
    pipe = queue.connection.pipeline(transaction=True)
    queue.enqueue_call(
        INGEST_FUNCTION,
        args=(b"",),
        pipeline=pipe,
        description=INGEST_DESCRIPTION,
        job_id=_TEMPLATE_ID,
        **ingest_job_options(worker),
    )
    job_key = str(SafeJob.key_for(_TEMPLATE_ID))
    fields: dict[Any, Any] = {}
    for args, _ in pipe.command_stack:
        if args[0] == "HSET" and args[1] == job_key:
            for i in range(2, len(args), 2):
                fields[args[i]] = args[i + 1]
    flat = [x for pair in fields.items() for x in pair]
    stamps = [i + 1 for i in range(0, len(flat), 2) if flat[i] in _PER_JOB_FIELDS]
    return job_key.removesuffix(_TEMPLATE_ID), flat, stamps


class WriteBuilder:
    """Builds the commands of one write; pure apart from the new job's id and timestamps."""

    def __init__(
        self, layout: KeyLayout, ring_size: int, worker: WorkerConfig | None = None, max_events: int = 2_000
    ) -> None:
        self._job_key_prefix, self._job_fields, self._stamp_slots = recorded_ingest_job(worker or WorkerConfig())
        self._layout = layout
        self._ring_size = ring_size
        self._max_events = max_events
        self.queue_key = layout.queue("ingest")
        self._queues_set = f"{layout.rq_prefix}:queues"

    def build(self, batch: IngestBatch | None, samples: list[UnauthorizedSample]) -> list[tuple[Any, ...]]:
        """The refused-key samples, then one script call that stores the batch; the last reply
        ends with the ingest queue length (the edge's backlog figure)."""
        commands: list[tuple[Any, ...]] = []
        self._add_samples(commands, samples)
        if batch is not None and batch.records:
            fields = list(self._job_fields)
            stamp = rq_timestamp(datetime.now(UTC))
            for slot in self._stamp_slots:
                fields[slot] = stamp
            commands.append(
                (
                    "EVAL",
                    WRITE_SCRIPT,
                    3,
                    self.queue_key,
                    self._layout.ingest_open,
                    self._queues_set,
                    encode_batch(batch),
                    batch.event_count,
                    self._max_events,
                    self._layout.ingest_parts_prefix,
                    self._job_key_prefix,
                    str(uuid.uuid4()),
                    *fields,
                )
            )
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

    def backlog(self) -> int:
        return int(self._redis.llen(self._builder.queue_key))

    def close(self) -> None:
        self._redis.close()


def held_batches(connection: Redis, layout: KeyLayout, job: SafeJob) -> list[IngestBatch]:
    """Every write an ingest job holds, in order (a read: workers seal the job first)."""
    payloads = [job.args[0] if job.args else b"", *connection.lrange(layout.ingest_parts(job.id), 0, -1)]
    return [decode_batch(p) for p in payloads if p]
