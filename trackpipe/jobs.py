"""RQ, set up so that Redis contents can never run arbitrary code in a worker.

- Job payloads are MessagePack (msgspec), never pickle: a planted pickle fails to decode.
- A job may only call functions on JOB_FUNCTIONS; any other name is refused before import.
"""

from __future__ import annotations

import os
from typing import Any

from trackpipe.keys import DEFAULT_PREFIX, INGEST_QUEUE, RQ_PREFIX_ENV, rq_prefix_for

# RQ reads its key prefix at import time; default it before the first import.
os.environ.setdefault(RQ_PREFIX_ENV, rq_prefix_for(DEFAULT_PREFIX))

import msgspec
from redis import Redis
from rq import Queue
from rq.job import Job

INGEST_FUNCTION = "workers.ingest.run_ingest_job"
JOB_FUNCTIONS = frozenset({INGEST_FUNCTION})

# Ingest jobs keep no result and only a short failure record: at volume the defaults
# (500 s results, a year of failures) would hold millions of keys.
INGEST_JOB_OPTIONS: dict[str, Any] = {"result_ttl": 0, "failure_ttl": 7 * 86_400, "timeout": 300}


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
    """A Job that only resolves functions trackpipe registered."""

    @property
    def func(self):  # type: ignore[override]
        name = self.func_name
        if self.instance is not None or name not in JOB_FUNCTIONS:
            raise ForbiddenJobFunction(f"job {self.id}: function {name!r} is not a trackpipe job")
        return super().func


def make_queue(name: str, connection: Redis) -> Queue:
    return Queue(name, connection=connection, serializer=MsgpackSerializer, job_class=SafeJob)


def ingest_queue(connection: Redis) -> Queue:
    return make_queue(INGEST_QUEUE, connection)
