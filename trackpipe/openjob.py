"""Open jobs: a producer adds its payload to the job still waiting at the tail of a queue.

RQ costs a worker ~7 ms of bookkeeping (~50 round trips) per job, whatever the job holds. If
every edge write and every ingest job's fan-out made a job of its own, a busy pipeline would
spend its CPU on that bookkeeping. Instead, a payload joins the queue's *open* job (the last one
made, while it is still the queue's last entry and holds fewer than `max_events`); otherwise a
new job is made. While workers keep up, each payload is soon its own job (low latency); when they
fall behind, queued jobs grow instead of multiplying.

Safety: a job leaves the queue list when a worker takes it (moved onto the worker's claims list,
see workers.claims), and a payload only joins
a job that is both the open one and still the queue's last entry. The worker first *seals* the
job (clears the open marker if it names the job) and then reads the parts, in one script call:
nothing joins after that, so a re-run after a crash reads the same parts in the same order, even
if RQ puts the job back on the queue.

The new job's hash is RQ's own enqueue, recorded once into a pipeline that never connects; its
data is constant (the function and an empty argument: the payloads live in the parts list).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis import ConnectionPool, Redis
from rq import Queue

from trackpipe.jobs import EVENTS_FIELD, SafeJob
from trackpipe.keys import KeyLayout

_TEMPLATE_ID = "00000000-0000-4000-8000-000000000000"
_PER_JOB_FIELDS = ("created_at", "enqueued_at")

# KEYS: 1 queue list, 2 open-job marker, 3 RQ's set of queues, 4 the queue's doorbell (a new job
# wakes an idle worker; see workers.claims)
# ARGV: 1 payload, 2 events in it, 3 max events per job, 4 parts key prefix, 5 job key prefix,
#       6 new job id, 7.. the new job's hash as field, value pairs
# Returns {1 if a job was made else 0, the queue's length}.
APPEND_SCRIPT = """
local open = redis.call('GET', KEYS[2])
if open and redis.call('LINDEX', KEYS[1], -1) == open then
  local job_key = ARGV[5] .. open
  local held = redis.call('HMGET', job_key, 'status', '@EVENTS@')
  if held[1] == 'queued' and tonumber(held[2] or '0') + tonumber(ARGV[2]) <= tonumber(ARGV[3]) then
    redis.call('RPUSH', ARGV[4] .. open, ARGV[1])
    redis.call('HINCRBY', job_key, '@EVENTS@', ARGV[2])
    return {0, redis.call('LLEN', KEYS[1])}
  end
end
local id = ARGV[6]
local job_key = ARGV[5] .. id
redis.call('HSET', job_key, unpack(ARGV, 7))
redis.call('HSET', job_key, '@EVENTS@', ARGV[2])
redis.call('RPUSH', ARGV[4] .. id, ARGV[1])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('RPUSH', KEYS[1], id)
redis.call('SET', KEYS[2], id)
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return {1, redis.call('LLEN', KEYS[1])}
""".replace("@EVENTS@", EVENTS_FIELD)

# KEYS: 1 open-job marker, 2 the job's parts; ARGV: 1 job id
SEAL_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return redis.call('LRANGE', KEYS[2], 0, -1)
"""


class _RecordOnlyPool(ConnectionPool):
    """A pool that refuses to connect: the recorder must never talk to a server."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the job recorder does no I/O")


def rq_timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # rq.utils.utcformat


def recording_connection() -> Redis:
    return Redis(connection_pool=_RecordOnlyPool())


class OpenJobWriter:
    """Builds the command that adds one payload to a queue's open job (no I/O)."""

    def __init__(
        self,
        queue: Queue,
        layout: KeyLayout,
        function: str,
        description: str,
        options: dict[str, Any],
        max_events: int,
    ) -> None:
        """`queue` must be bound to `recording_connection()`: RQ's enqueue is recorded, not sent."""
        # RQ would ask the server (INFO) for this; enqueueing only copies it onto the Job object.
        queue.redis_server_version = (7, 0, 0)
        pipe = queue.connection.pipeline(transaction=True)
        queue.enqueue_call(
            function, args=(b"",), pipeline=pipe, description=description, job_id=_TEMPLATE_ID, **options
        )
        job_key = str(SafeJob.key_for(_TEMPLATE_ID))
        fields: dict[Any, Any] = {}
        for args, _ in pipe.command_stack:
            if args[0] == "HSET" and args[1] == job_key:
                for i in range(2, len(args), 2):
                    fields[args[i]] = args[i + 1]
        self._fields = [x for pair in fields.items() for x in pair]
        self._stamp_slots = [i + 1 for i in range(0, len(self._fields), 2) if self._fields[i] in _PER_JOB_FIELDS]
        self._job_key_prefix = job_key.removesuffix(_TEMPLATE_ID)
        self._keys = (queue.key, layout.open_job(queue.name), f"{layout.rq_prefix}:queues", layout.wake(queue.name))
        self._parts_prefix = layout.job_parts_prefix
        self.max_events = max_events
        self.queue_key = queue.key

    def command(self, payload: bytes, events: int, new_job_id: str, now: datetime | None = None) -> tuple[Any, ...]:
        """EVAL of APPEND_SCRIPT; its reply is [1 if `new_job_id` was made else 0, queue length]."""
        fields = list(self._fields)
        stamp = rq_timestamp(now or datetime.now(UTC))
        for slot in self._stamp_slots:
            fields[slot] = stamp
        return (
            "EVAL",
            APPEND_SCRIPT,
            len(self._keys),
            *self._keys,
            payload,
            events,
            self.max_events,
            self._parts_prefix,
            self._job_key_prefix,
            new_job_id,
            *fields,
        )


def seal_and_read_parts(connection: Redis, layout: KeyLayout, queue_name: str, job_id: str) -> list[bytes]:
    """The payloads a job holds; after this call nothing more joins it (one round trip)."""
    return connection.eval(SEAL_SCRIPT, 2, layout.open_job(queue_name), layout.job_parts(job_id), job_id)


def held_payloads(connection: Redis, layout: KeyLayout, job: SafeJob) -> list[bytes]:
    """Every payload a job holds, in order: its argument (if any), then its parts. A read only."""
    payloads = [job.args[0] if job.args else b"", *connection.lrange(layout.job_parts(job.id), 0, -1)]
    return [p for p in payloads if p]
