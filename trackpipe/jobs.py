"""RQ, set up so that Redis contents can never run arbitrary code in a worker.

- Job payloads are MessagePack (msgspec), never pickle: a planted pickle fails to decode.
- A job may only call functions on JOB_FUNCTIONS; any other name is refused before import.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import msgspec
from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DeserializationError
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution
from rq.job import Job
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ReadyJobRegistry,
    ScheduledJobRegistry,
)
from rq.results import Result

# RQ's key prefix is set before rq is first imported: by default in trackpipe/__init__.py, from the
# config in trackpipe.config.load.
from trackpipe.config import WorkerConfig
from trackpipe.keys import INGEST_QUEUE, deliver_queue, retry_queue

INGEST_FUNCTION = "workers.ingest.run_ingest_job"
DELIVER_FUNCTION = "workers.deliver.run_delivery_job"
JOB_FUNCTIONS = frozenset({INGEST_FUNCTION, DELIVER_FUNCTION})

# Fields trackpipe adds to RQ's job hash (`P:rq:job:<id>`); they vanish with it when RQ deletes the job.
EVENTS_FIELD = "trackpipe_events"  # events the job holds (trackpipe.openjob)
VERDICT_FIELD = "trackpipe_dedup"  # the ingest job's dedup verdicts, kept for a re-run (workers.dedup)
DONE_FIELD = "trackpipe_done"  # the job's outcome is committed: a re-run does nothing (ingest and delivery)
RECOVERED_FIELD = "trackpipe_recovered"  # put back on its queue after its worker died (workers.claims)


def verdict_field(part: int) -> str:
    """The field of the verdicts of one part of an ingest job's dedup claim (workers.dedup sends a
    job's claim in parts; the first part's field is the one-call claim's)."""
    return VERDICT_FIELD if part == 0 else f"{VERDICT_FIELD}:{part}"


# Pauses between retries of a failed or abandoned job (the last one repeats).
RETRY_INTERVALS = [1, 5, 15, 60, 300]
FAILURE_TTL = 7 * 86_400


def ingest_job_options(worker: WorkerConfig) -> dict[str, Any]:
    """Ingest jobs keep no result and only a week of failure record: at volume RQ's defaults (500 s
    of results, a year of failures) would hold millions of keys. Retries cover both errors and a
    worker that died mid-job (RQ re-runs an abandoned job only if it has retries left)."""
    retry = Retry(max=worker.ingest_retries, interval=RETRY_INTERVALS)
    return {
        "result_ttl": 0,
        "failure_ttl": FAILURE_TTL,
        "timeout": worker.ingest_timeout_seconds,
        "retry": retry,
    }


class MsgpackSerializer:
    """RQ serializer (job data, meta, results) on msgspec MessagePack."""

    _encoder = msgspec.msgpack.Encoder()

    @classmethod
    def dumps(cls, obj: Any) -> bytes:
        return cls._encoder.encode(obj)

    @staticmethod
    def loads(data: bytes) -> Any:
        return msgspec.msgpack.decode(data)


class ForbiddenJobFunction(Exception):
    pass


# RQ deleting a finished job (result_ttl 0) reads before it writes: the job's stored status, then
# its executions twice (a cleanup, the ids, each record), seven round trips per job. This script
# does the same removals where the data is, inside the worker's closing MULTI, in no round trip
# of its own. KEYS: 1 the job hash, 2 its execution registry, 3 its queue's started registry.
# ARGV: 1 the job id, 2 the prefix of an execution's key (before "<job id>:<execution id>"), 3 and
# 4 what comes before and after the worker's name in its executions key, 5.. pairs of (status, the
# registry RQ removes the job from when its stored status is that one).
FORGET_EXECUTIONS_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
for n = 5, #ARGV, 2 do
  if ARGV[n] == status then redis.call('ZREM', ARGV[n + 1], ARGV[1]) end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local composite = ARGV[1] .. ':' .. id
  local execution = ARGV[2] .. composite
  local worker = redis.call('HGET', execution, 'worker_name')
  redis.call('DEL', execution)
  redis.call('ZREM', KEYS[3], composite)
  if worker and worker ~= '' then redis.call('SREM', ARGV[3] .. worker .. ARGV[4], composite) end
end
redis.call('DEL', KEYS[2])
"""
_LEFT_REGISTRIES = (
    ("finished", FinishedJobRegistry),
    ("deferred", DeferredJobRegistry),
    ("ready_to_enqueue", ReadyJobRegistry),
    ("scheduled", ScheduledJobRegistry),
    ("failed", FailedJobRegistry),
    ("stopped", FailedJobRegistry),
    ("canceled", CanceledJobRegistry),
)


@functools.lru_cache(maxsize=256)
def _left_registries(origin: str, connection: Redis) -> list[str]:
    """(status, registry key) pairs, flat, of a queue (keys depend only on its name)."""
    return [x for status, kind in _LEFT_REGISTRIES for x in (status, kind(origin, connection=connection).key)]


class SafeJob(Job):
    """A Job that only resolves functions trackpipe registered.

    A job that names another function, or whose data is not MessagePack (a planted pickle), fails
    for good: retrying it could never succeed.
    """

    _unrunnable = False

    def _deserialize_data(self) -> None:
        try:
            super()._deserialize_data()
        except DeserializationError:
            self._unrunnable = True
            raise

    @property
    def should_retry(self) -> bool:  # type: ignore[override]
        return not self._unrunnable and super().should_retry

    def cleanup(self, ttl: int | None = None, pipeline: Any = None, remove_from_queue: bool = True) -> None:
        """A finished job without a result to keep (ttl 0), deleted in the worker's closing MULTI
        (the only caller with these arguments): RQ's deletion with its reads done by the server, see
        FORGET_EXECUTIONS_SCRIPT. Anything else (a group, a rate limit, other arguments) is RQ's."""
        if ttl != 0 or pipeline is None or remove_from_queue or self.group_id or self.has_rate_limit:
            super().cleanup(ttl, pipeline, remove_from_queue)
            return
        registries = _left_registries(self.origin, self.connection)
        probe = Execution("-", self.id, self.connection)
        worker_before, worker_after = WORKER_EXECUTIONS_KEY_TEMPLATE.split("{0}")
        pipeline.eval(
            FORGET_EXECUTIONS_SCRIPT,
            3,
            self.key,
            self.execution_registry.key,
            self.started_job_registry.key,
            self.id,
            probe.key.removesuffix(probe.composite_key),
            worker_before,
            worker_after,
            *registries,
        )
        pipeline.delete(self.key, self.dependents_key, self.dependencies_key, Result.get_key(self.id))

    @property
    def func(self):  # type: ignore[override]
        name = self.func_name
        if self.instance is not None or name not in JOB_FUNCTIONS:
            self._unrunnable = True
            raise ForbiddenJobFunction(f"job {self.id}: function {name!r} is not a trackpipe job")
        return super().func


def load_job_functions() -> None:
    """Import the job functions' modules now (a worker does before its first job): otherwise the
    first job a worker takes, under load too, pays tens of milliseconds of imports."""
    for name in sorted(JOB_FUNCTIONS):
        importlib.import_module(name.rpartition(".")[0])


def delivery_job_options(worker: WorkerConfig) -> dict[str, Any]:
    """Delivery jobs: same bookkeeping as ingest jobs; retries cover a worker that died mid-delivery
    (failed deliveries themselves are retried per event, on the destination's retry queue)."""
    return {**ingest_job_options(worker), "timeout": worker.delivery_timeout_seconds}


def make_queue(name: str, connection: Redis) -> Queue:
    return Queue(name, connection=connection, serializer=MsgpackSerializer, job_class=SafeJob)


def ingest_queue(connection: Redis) -> Queue:
    return make_queue(INGEST_QUEUE, connection)


def delivery_queue(destination_id: str, connection: Redis) -> Queue:
    return make_queue(deliver_queue(destination_id), connection)


def delivery_retry_queue(destination_id: str, connection: Redis) -> Queue:
    return make_queue(retry_queue(destination_id), connection)
