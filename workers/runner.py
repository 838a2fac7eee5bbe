"""The RQ worker process: queues, worker class and timings tuned for trackpipe's jobs."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import msgspec
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job
from rq.registry import clean_registries
from rq.timeouts import JobTimeoutException
from rq.utils import now as rq_now
from rq.worker import WorkerStatus

from trackpipe.config import Config
from trackpipe.jobs import MsgpackSerializer, SafeJob, load_job_functions, make_queue
from trackpipe.keys import (
    DELIVER_QUEUE_PREFIX,
    INGEST_QUEUE,
    RETRY_QUEUE_PREFIX,
    KeyLayout,
    deliver_queue,
    retry_queue,
)
from trackpipe.shards import by_name, shards
from workers.claims import WAKE_POLL_SECONDS, Claims, Keeper, is_outage, reconnect_delay
from workers.context import WorkerContext, install
from workers.scheduler import SchedulerMixin

log = logging.getLogger("trackpipe.worker")


class QueueNameError(ValueError):
    pass


HEARTBEAT_EVERY_SECONDS = 5.0
# RQ asks the server before every job whether `rq suspend` was called: at most this often here.
SUSPENSION_CHECK_EVERY_SECONDS = 1.0


class WorkerNameError(ValueError):
    pass


class ShardNameError(ValueError):
    pass


# Worker names appear in key names (claims, leases): the same alphabet as ids.
WORKER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def destination_queues(destination_id: str) -> list[str]:
    return [deliver_queue(destination_id), retry_queue(destination_id)]


def destination_of_queue(queue_name: str | None) -> str | None:
    """The destination a `deliver:<id>` or `retry:<id>` queue serves; None for other queues."""
    for prefix in (DELIVER_QUEUE_PREFIX, RETRY_QUEUE_PREFIX):
        if queue_name and queue_name.startswith(prefix):
            return queue_name.removeprefix(prefix)
    return None


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


class TrackpipeWorker(SchedulerMixin, SimpleWorker):
    """A SimpleWorker (no fork per job: a fork costs ten times the work of a job here) that takes
    jobs through claims (workers.claims: a taken job is always on a list naming its worker, and a
    dead worker's jobs run again within seconds) and rides out Redis outages: it waits for the
    server with backoff, puts the job it was running back on its queue, and carries on."""

    abandoned_grace_seconds = 10
    lease_seconds = 10.0
    layout = KeyLayout()
    redis_url: str | None = None
    # Longest pause between reconnection attempts (RQ's own default is 60 s).
    max_connection_wait_time = 5

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """A hung job (not a dead worker: claims handle those) counts as abandoned once its timeout
        plus a short grace has passed (RQ's default grace is 60 s). Never before a dead worker's
        claims are swept (two leases): RQ's own re-run of an abandoned job waits its retry interval
        (up to minutes) and spends one of the job's retries."""
        timeout = int(job.timeout if job.timeout and job.timeout > 0 else 60)
        return timeout + max(self.abandoned_grace_seconds, int(2 * self.lease_seconds) + 1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claims: Claims | None = None
        self.keeper: Keeper | None = None
        self._last_beat = -HEARTBEAT_EVERY_SECONDS  # monotonic time of the last heartbeat sent
        self._suspension_checked = -SUSPENSION_CHECK_EVERY_SECONDS
        self._written_state: str | None = None  # the state last written to the worker's hash
        self._idle_unwritten = False
        self._held_start: Any = None  # prepare_execution's writes, sent by prepare_job_execution
        worker = self

        class ClaimingQueue(self.queue_class):  # type: ignore[name-defined, misc]
            @classmethod
            def dequeue_any(cls, queues: Any, timeout: int | None, *args: Any, **kwargs: Any) -> Any:
                return worker.take(cls, timeout, **kwargs)

        self.queue_class = ClaimingQueue

    # -- taking jobs ----------------------------------------------------------------------------

    def take(self, queue_class: type[Queue], timeout: int | None, **kwargs: Any) -> tuple[Job, Queue] | None:
        """The next job of this worker's queues, in their order, moved onto its claims list.
        Waits up to `timeout` seconds (None: not at all) for one; returns None when there is none
        or a stop was requested, raises DequeueTimeout when the wait ran out."""
        assert self.claims is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                taken = self.claims.take()
            except RedisError as exc:
                if not is_outage(exc):
                    raise
                if self._stop_requested:
                    return None  # stopping: nothing was taken that is not on a claims list
                raise RedisConnectionError(str(exc)) from exc  # RQ's loop waits and calls again
            if taken is not None:
                queue_key, job_id = taken
                result = queue_class._fetch_dequeued_job(
                    self.connection,
                    queue_key,
                    job_id,
                    job_class=kwargs.get("job_class"),
                    serializer=kwargs.get("serializer"),
                    death_penalty_class=kwargs.get("death_penalty_class"),
                )
                if result is None:  # the job's hash is gone: nothing to run (dropped at the next take)
                    continue
                return result
            if self._stop_requested or deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DequeueTimeout(timeout, self.queue_keys())
            self._write_idle()
            self.claims.wait(min(left, WAKE_POLL_SECONDS))
            if self._stop_requested:
                return None

    def _shutdown(self) -> None:
        """SIGTERM/SIGINT. RQ raises StopRequested at once when the worker is idle; here an idle
        worker instead ends its current wait (at most WAKE_POLL_SECONDS) and stops, so a stop never
        interrupts a take half-way (a take is one script call either way)."""
        if self.get_state() == WorkerStatus.BUSY:
            try:
                super()._shutdown()
            except RedisError:
                self._stop_requested = True
            return
        self._stop_requested = True
        with contextlib.suppress(RedisError):  # the stop does not depend on recording it
            self.set_shutdown_requested_date()
        if self.scheduler:
            self.stop_scheduler()

    # -- running jobs ---------------------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        with self.riding_out_outages(f"job {job.id} was interrupted; it will run again"):
            if job.started_at is not None:  # a re-run: an earlier execution may have died with its worker
                prune_dead_executions(job, self.connection)
            super().execute_job(job, queue)

    # RQ writes a job's start in two round trips (the execution record, then the job's state) and
    # its end in two more (the job's last heartbeat, then the outcome); with `appendfsync always`
    # each waits for an fsync, ~0.5 ms, as long as a small job's own work. The execution record is
    # held and sent with the job's state, and the last heartbeat (a field of a hash deleted a moment
    # later, read by nothing here) is not written.

    def prepare_execution(self, job: Job) -> Execution:
        pipe = self.connection.pipeline()
        execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name)
        self.executions[execution.id] = execution
        self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self._held_start = pipe
        return execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        pipe, self._held_start = self._held_start, None
        if pipe is None:  # not prepared by prepare_execution above
            pipe = self.connection.pipeline()
        heartbeat_ttl = self.get_heartbeat_ttl(job)
        self.heartbeat(heartbeat_ttl, pipeline=pipe)
        job.heartbeat(rq_now(), heartbeat_ttl, pipeline=pipe)
        job.prepare_for_execution(self.name, pipeline=pipe)
        pipe.persist(job.key)
        if remove_from_intermediate_queue:
            pipe.lrem(Queue(job.origin, connection=self.connection).intermediate_queue_key, 1, job.id)
        pipe.execute()

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        job.ended_at = rq_now()
        job.last_heartbeat = job.ended_at

    def _finalize_failure(self, job: Job, queue: Queue, execution: Any, exc_info: Any) -> None:
        """A job that failed because Redis went away did nothing wrong: it is not recorded as
        failed (that would spend one of its retries, or fail it for good); the outage handling puts
        it back on its queue instead."""
        exc = exc_info[1]
        if exc is not None and is_outage(exc):
            raise RedisConnectionError(f"job {job.id} interrupted: {exc}") from exc
        destination = destination_of_queue(job.origin)
        if destination is not None and exc is not None:
            self._count_delivery_job_failure(destination, exc)
        super()._finalize_failure(job, queue, execution, exc_info)

    def _count_delivery_job_failure(self, destination_id: str, exc: BaseException) -> None:
        """A delivery job that stopped on an exception (its timeout, a bug) may have sent its batch
        before: its re-run sends it again. Counted with the destination's errors, so an operator
        sees it (`trackpipe status`) and can raise `worker.delivery_timeout_seconds`."""
        kind = "job timeout" if isinstance(exc, JobTimeoutException) else f"job error {type(exc).__name__}"
        pipe = self.connection.pipeline(transaction=False)
        pipe.hincrby(self.layout.destination_errors(destination_id), kind, 1)
        pipe.hset(self.layout.destination_errors_last(destination_id), kind, int(time.time() * 1000))
        pipe.execute()

    def ride_out_outage(self) -> None:
        """Wait until Redis answers (backoff up to `max_connection_wait_time`), then put back
        whatever this worker had taken and not finished."""
        assert self.claims is not None
        attempt = 0
        while True:
            try:
                self.connection.ping()
                self.claims.release_all("its run was interrupted by a Redis outage")
                self.set_state(WorkerStatus.IDLE)
                return
            except RedisError as exc:
                if not is_outage(exc):
                    raise
                if self._stop_requested:
                    log.warning("worker %s: stopping while Redis is unreachable", self.name)
                    return
                wait = reconnect_delay(attempt, self.max_connection_wait_time)
                log.warning("worker %s: Redis unreachable (%s); retrying in %.1f s", self.name, exc, wait)
                time.sleep(wait)
                attempt += 1

    @contextlib.contextmanager
    def riding_out_outages(self, what: str = "") -> Iterator[None]:
        """Around the work loop's own Redis calls: an outage error waits for the server (and puts
        back what this worker held) instead of ending the worker; any other error propagates."""
        try:
            yield
        except RedisError as exc:
            if not is_outage(exc):
                raise
            if what:
                log.warning("worker %s: Redis went away (%s): %s", self.name, exc, what)
            self.ride_out_outage()

    # -- the work loop's own Redis calls must not end the worker --------------------------------

    # RQ writes its bookkeeping one command per round trip: a heartbeat (three commands) twice
    # around every take, once after every job and once in the suspension check's pipeline, the
    # state twice per job. With `appendfsync always` each write waits for an fsync: ~25 round trips
    # per job in all, as long as the dedup claim of 2,000 events. Heartbeats only keep the worker's
    # hash from expiring (`worker_ttl`, minutes): one per HEARTBEAT_EVERY_SECONDS does that. The
    # state is informational: written when it changes, "idle" only once the worker waits.

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if timeout is not None:  # a job's own ttl: always sent
            with self.riding_out_outages():
                super().heartbeat(timeout, pipeline)
            return
        at = time.monotonic()
        if at - self._last_beat < HEARTBEAT_EVERY_SECONDS:
            return  # (RQ's suspension check, once per job, also puts one in its pipeline)
        if pipeline is not None:
            super().heartbeat(None, pipeline)
        else:
            with self.riding_out_outages():
                pipe = self.connection.pipeline(transaction=False)
                super().heartbeat(None, pipe)
                pipe.execute()
        self._last_beat = at

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None:
            if state == WorkerStatus.IDLE:
                self._state = state
                self._idle_unwritten = True  # written by _write_idle if the worker waits
                return
            self._idle_unwritten = False
            if state == self._written_state:
                self._state = state
                return
        self._write_state(state, pipeline)

    def _write_idle(self) -> None:
        if self._idle_unwritten:
            self._idle_unwritten = False
            if self._written_state != WorkerStatus.IDLE:
                self._write_state(WorkerStatus.IDLE)

    def _write_state(self, state: str, pipeline: Any = None) -> None:
        try:
            super().set_state(state, pipeline)
            self._written_state = state
        except RedisError as exc:
            if not is_outage(exc):
                raise
            self._state = state  # only informational in Redis; kept locally meanwhile
            self._written_state = None

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while not self._stop_requested:
            with self.riding_out_outages():
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        return None

    def check_for_suspension(self, burst: bool) -> None:
        at = time.monotonic()
        if at - self._suspension_checked < SUSPENSION_CHECK_EVERY_SECONDS:
            return
        with self.riding_out_outages():
            super().check_for_suspension(burst)
        self._suspension_checked = at

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except RedisError as exc:
            if not is_outage(exc):
                raise
            log.warning("worker %s: maintenance skipped, Redis unreachable (%s)", self.name, exc)
            self.last_cleaned_at = rq_now()

    def clean_registries(self) -> None:
        """RQ's maintenance, except for jobs stuck in a queue's intermediate list (see below)."""
        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                clean_registries(queue, self._exc_handlers)
                worker_registration.clean_worker_registry(queue)
                requeue_stuck_jobs(queue)
                queue.release_maintenance_lock()
        self.last_cleaned_at = rq_now()

    # -- birth and death ------------------------------------------------------------------------

    def register_birth(self) -> None:
        # RQ refuses a name whose worker record has no death date, for minutes after a SIGKILL.
        # The lease tells a killed worker (take its name; its claims go back below) from a live one.
        if self.connection.exists(self.key) and not self.connection.hexists(self.key, "death"):
            if self.connection.exists(self.layout.lease(self.name)):
                raise WorkerNameError(f"--name: a worker named {self.name!r} is already running")
            self.connection.delete(self.key)
        super().register_birth()
        self.claims = Claims(self.connection, self.layout, self.name, self.queue_names())
        self.claims.register(self.lease_seconds)
        if self.redis_url is not None:
            self.keeper = Keeper(self.redis_url, self.layout, self.name, self.lease_seconds)
            self.keeper.start()

    def teardown(self) -> None:
        try:
            if self.claims is not None:
                self.claims.retire()
            super().teardown()
        except RedisError as exc:
            # Whatever it still held stays on its claims list; its lease runs out and another
            # worker puts it back.
            log.warning("worker %s: stopped without reaching Redis (%s)", self.name, exc)
        finally:
            if self.keeper is not None:
                self.keeper.stop()


def requeue_stuck_jobs(queue: Queue) -> int:
    """Put back on its queue a job a worker took (RQ moves it to `<queue>:intermediate`) but never
    started, because the worker died or was stopped in between; returns how many. trackpipe's
    workers take jobs through claims and never use that list; this cleans up after workers of an
    earlier version (or plain RQ workers) that did.

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


def shard_config(config: Config, shard_name: str | None) -> Config:
    """The config as a worker of one shard sees it: `redis_url` is that shard's, so the worker's
    connection, its keeper's, its scheduler's and every job's (dedup, fan-out, settlement) are all on
    the shard. None: the only shard (ShardNameError when there are several: name one)."""
    names = [s.name for s in shards(config)]
    if shard_name is None:
        if len(names) > 1:
            raise ShardNameError(f"--shard: this config has {len(names)} shards; name one of {', '.join(names)}")
        return config
    try:
        shard = by_name(config, shard_name)
    except KeyError as exc:
        raise ShardNameError(f"--shard: {exc.args[0]}") from None
    return msgspec.structs.replace(config, redis_url=shard.redis_url)


def check_worker_name(name: str | None) -> None:
    if name is not None and not WORKER_NAME.fullmatch(name):
        raise WorkerNameError(f"--name: {name!r} may only use letters, digits, '_', '.' and '-' (1 to 64)")


def build_worker(config: Config, connection: Redis, queues: list[str], name: str | None = None) -> TrackpipeWorker:
    check_worker_name(name)
    install(WorkerContext(config, connection))
    load_job_functions()
    worker = TrackpipeWorker(
        [make_queue(q, connection) for q in queues],
        connection=connection,
        name=name,
        job_class=SafeJob,
        serializer=MsgpackSerializer,
        maintenance_interval=config.worker.maintenance_interval_seconds,
        # An idle worker runs maintenance between waits for work, which last worker_ttl - 15 s
        # (400 s by default): make them as long as the maintenance interval.
        worker_ttl=config.worker.maintenance_interval_seconds + 15,
    )
    worker.abandoned_grace_seconds = config.worker.abandoned_grace_seconds
    worker.lease_seconds = float(config.worker.lease_seconds)
    worker.redis_url = config.redis_url
    worker.layout = KeyLayout(config.key_prefix)
    return worker
