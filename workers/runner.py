"""The RQ worker process: queues, worker class and timings tuned for trackpipe's jobs."""

from __future__ import annotations

import logging

from redis import Redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job

from trackpipe.config import Config
from trackpipe.jobs import MsgpackSerializer, SafeJob, make_queue
from trackpipe.keys import INGEST_QUEUE, deliver_queue, retry_queue
from workers.context import WorkerContext, install

log = logging.getLogger("trackpipe.worker")


class QueueNameError(ValueError):
    pass


def destination_queues(destination_id: str) -> list[str]:
    return [deliver_queue(destination_id), retry_queue(destination_id)]


def all_queues(config: Config) -> list[str]:
    # Deliveries first: they finish work already accepted.
    return [q for d in config.destinations for q in destination_queues(d.id)] + [INGEST_QUEUE]


def parse_queues(spec: str | None, config: Config) -> list[str]:
    """`ingest,deliver:crm-hook` → queue names, each checked against the config. None or "all":
    every queue; "deliveries": every destination's delivery and retry queues."""
    known = all_queues(config)
    if spec is None or spec.strip() in ("", "all"):
        return known
    if spec.strip() == "deliveries":
        return [q for q in known if q != INGEST_QUEUE]
    names = [part.strip() for part in spec.split(",") if part.strip()]
    for name in names:
        if name not in known:
            raise QueueNameError(f"--queues: unknown queue {name!r} (known: {', '.join(known)})")
    return list(dict.fromkeys(names))


class TrackpipeWorker(SimpleWorker):
    """A SimpleWorker (no fork per job: a fork costs ten times the work of a job here) whose dead
    jobs are noticed within seconds: a job counts as abandoned once its timeout plus a short grace
    has passed without the worker finishing it (RQ's default grace is 60 s, plus 10 min between
    maintenance passes)."""

    abandoned_grace_seconds = 10

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return int(job.timeout if job.timeout and job.timeout > 0 else 60) + self.abandoned_grace_seconds

    def execute_job(self, job: Job, queue: Queue) -> None:
        if job.started_at is not None:  # a re-run: an earlier execution may have died with its worker
            prune_dead_executions(job, self.connection)
        super().execute_job(job, queue)


def prune_dead_executions(job: Job, connection: Redis) -> None:
    """Forget executions whose records are gone (their worker was killed).

    RQ 3.0 keeps a dead execution's id in the job's execution registry after its record expires,
    and finishing the re-run then fails with "Execution ... not found in Redis", so a re-run that
    did all its work would still be marked failed and retried.
    """
    registry = job.execution_registry
    ids = [i.decode() if isinstance(i, bytes) else i for i in connection.zrange(registry.key, 0, -1)]
    if not ids:
        return
    pipe = connection.pipeline(transaction=False)
    for execution_id in ids:
        pipe.exists(Execution(execution_id, job.id, connection).key)
    dead = [i for i, alive in zip(ids, pipe.execute(), strict=True) if not alive]
    if dead:
        log.info("job %s: forgetting %d dead execution(s)", job.id, len(dead))
        connection.zrem(registry.key, *dead)


def build_worker(config: Config, connection: Redis, queues: list[str], name: str | None = None) -> TrackpipeWorker:
    install(WorkerContext(config, connection))
    worker = TrackpipeWorker(
        [make_queue(q, connection) for q in queues],
        connection=connection,
        name=name,
        job_class=SafeJob,
        serializer=MsgpackSerializer,
        maintenance_interval=config.worker.maintenance_interval_seconds,
        # An idle worker only looks for abandoned jobs between blocking waits for work, which last
        # worker_ttl - 15 s (400 s by default): make them as long as the maintenance interval.
        worker_ttl=config.worker.maintenance_interval_seconds + 15,
    )
    worker.abandoned_grace_seconds = config.worker.abandoned_grace_seconds
    return worker
