"""RQ, set up so that Redis contents can never run arbitrary code in a worker.

- Job payloads are MessagePack (msgspec), never pickle: a planted pickle fails to decode.
- A job may only call functions on JOB_FUNCTIONS; any other name is refused before import.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DeserializationError
from rq.job import Job

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

    @property
    def func(self):  # type: ignore[override]
        name = self.func_name
        if self.instance is not None or name not in JOB_FUNCTIONS:
            self._unrunnable = True
            raise ForbiddenJobFunction(f"job {self.id}: function {name!r} is not a trackpipe job")
        return super().func


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
