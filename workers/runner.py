"""The RQ worker process: queues, worker class and timings tuned for trackpipe's jobs."""

from __future__ import annotations

import logging
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job
from rq.registry import clean_registries
from rq.utils import now as rq_now
from rq.worker import WorkerStatus

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        worker = self

        class StoppableDequeue(self.queue_class):  # type: ignore[name-defined, misc]
            @classmethod
            def dequeue_any(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    return super().dequeue_any(*args, **kwargs)
                except DequeueTimeout:
                    if worker._stop_requested:
                        return None  # the work loop then ends: no job was taken
                    raise

        self.queue_class = StoppableDequeue

    def _shutdown(self) -> None:
        """SIGTERM/SIGINT. RQ raises StopRequested at once when the worker is idle, even from inside
        a blocking pop the server may already have served: the popped job was then on no queue and
        in no registry, its events never delivered (found by `trackpipe soak`; a worker on several
        queues pops with BLPOP, without RQ's intermediate list). Instead an idle worker finishes its
        wait (at most `worker.maintenance_interval_seconds`), runs a job it got, then stops."""
        if self.get_state() == WorkerStatus.BUSY:
            super()._shutdown()
            return
        self._stop_requested = True
        self.set_shutdown_requested_date()
        if self.scheduler:
            self.stop_scheduler()

    def clean_registries(self) -> None:
        """RQ's maintenance, except for jobs stuck in a queue's intermediate list (see below)."""
        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                clean_registries(queue, self._exc_handlers)
                worker_registration.clean_worker_registry(queue)
                requeue_stuck_jobs(queue)
                queue.release_maintenance_lock()
        self.last_cleaned_at = rq_now()

    def execute_job(self, job: Job, queue: Queue) -> None:
        if job.started_at is not None:  # a re-run: an earlier execution may have died with its worker
            prune_dead_executions(job, self.connection)
        super().execute_job(job, queue)


def requeue_stuck_jobs(queue: Queue) -> int:
    """Put back on its queue a job a worker took (RQ moves it to `<queue>:intermediate`) but never
    started, because the worker died or was stopped in between; returns how many.

    RQ 3.0 hands such a job, after a minute, to its failure handling, which logs and swallows an
    error when the failure cannot be recorded, then removes the job from the intermediate list
    anyway: the job was left `queued` on no queue, and its events undelivered (found by
    `trackpipe soak`). The job never ran, so it only needs to go back to the front of its queue.
    """
    intermediate = queue.intermediate_queue
    connection = queue.connection
    requeued = 0
    for job_id in intermediate.get_job_ids():
        if job_id in queue.started_job_registry:
            continue
        if not connection.exists(SafeJob.key_for(job_id)):
            intermediate.remove(job_id)
            continue
        if intermediate.set_first_seen(job_id) or not intermediate.should_be_cleaned_up(job_id):
            continue
        pipe = connection.pipeline(transaction=True)
        pipe.lrem(intermediate.key, 1, job_id)
        pipe.lpush(queue.key, job_id)
        pipe.delete(intermediate.get_first_seen_key(job_id))
        removed, _, _ = pipe.execute()
        if removed:
            requeued += 1
            log.warning("job %s was taken from %s but never started: put back on the queue", job_id, queue.name)
    return requeued


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
