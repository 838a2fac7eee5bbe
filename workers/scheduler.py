"""The scheduler process each worker forks: it moves due jobs (delivery retries, ingest retries)
from RQ's scheduled registries onto their queues.

RQ's own scheduler (RQ 3.0) has three weaknesses here:
- nothing ends it when its worker dies: a SIGKILLed worker left it running for good, and one
  stopped while its Redis server went down could be left in a Redis call bounded only by the
  worker's long socket timeout;
- its per-queue locks live `interval + 60` s, and only the worker's maintenance pass (every
  `worker.maintenance_interval_seconds`, and an idle worker looks even less often) tries to take
  them, so a dead lock holder delayed every scheduled retry by a minute or more;
- any Redis error ends its process, and only a later maintenance pass starts it again.

`TrackpipeScheduler` runs in every worker (not only the one that got the locks first), contends
for the locks on each pass, one second apart, and keeps them with a short TTL: when the holder
dies, another worker's scheduler holds them within `lock_ttl + interval` seconds. It ends when its
worker is gone (PR_SET_PDEATHSIG where the OS has it, and a parent pid check on every pass), and
keeps trying with backoff while Redis is down and its worker lives.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from datetime import datetime
from multiprocessing import get_context
from types import FrameType
from typing import Any
from uuid import uuid4

from redis.exceptions import RedisError
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.scheduler import RQScheduler
from rq.scripts import ACQUIRE_OR_REFRESH_LOCK_SCRIPT, RELEASE_LOCK_SCRIPT
from rq.utils import now

log = logging.getLogger("trackpipe.scheduler")

PR_SET_PDEATHSIG = 1  # linux/prctl.h

# Redis errors and socket errors redis-py lets through are both "Redis is unreachable" here.
UNREACHABLE = (RedisError, OSError)


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies, even by SIGKILL.
    False where that is not available (not Linux): the parent pid check has to do."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class TrackpipeScheduler(RQScheduler):
    """An RQ scheduler that lives only as long as its worker and takes over a dead holder's locks
    within seconds (see the module docstring)."""

    # Seconds between passes. Retries are due at whole seconds: one pass a second keeps them on time.
    default_interval = 1
    # Lock lifetime, refreshed on every pass: a dead holder's locks are free this long after its
    # last pass. Long enough that a pass delayed by a busy machine does not lose them.
    lock_ttl = 5
    # Bounds on every Redis call of the scheduler (the worker's connection allows reads as long as
    # its longest wait for work, which RQ's scheduler inherited).
    redis_timeout = 5.0
    # Longest pause between tries while Redis fails.
    max_backoff = 5.0
    # Hard limit on a stop (locks released, death registered) once asked for: SIGALRM ends the process.
    stop_deadline = 10
    # How often the parent pid is checked while waiting between passes.
    poll_seconds = 0.25

    def __init__(self, queues: Any, connection: Any, interval: int | None = None, **kwargs: Any) -> None:
        super().__init__(queues, connection, interval=interval or self.default_interval, **kwargs)
        for key in ("socket_timeout", "socket_connect_timeout"):
            current = self._pool_kwargs.get(key)
            if current is None or current > self.redis_timeout:
                self._pool_kwargs[key] = self.redis_timeout
        self._parent_pid = os.getpid()
        self._retired = False  # set by the worker once it stopped us: no restart after that
        self._unreachable = False  # the last pass failed to reach Redis

    # -- locks -------------------------------------------------------------------------------

    def acquire_locks(self, auto_start: bool = False) -> set[str]:
        """Take or refresh every free or own lock, in one round trip; returns the queues owned.

        RQ's worker calls this with `auto_start=True` on its maintenance passes to restart a
        scheduler process that is gone. Here the process contends for the locks itself, so that
        call only restarts it; taking locks in the worker would hold them in a process that
        never refreshes them."""
        if auto_start:
            self.ensure_running()
            return set(self._acquired_locks)
        return self._contend(heartbeat=False)

    def heartbeat(self) -> None:
        """Refresh this scheduler's record and contend for every lock (one round trip)."""
        self._contend(heartbeat=True)

    def _contend(self, heartbeat: bool) -> set[str]:
        names = sorted(self._queue_names)
        script = self.connection.register_script(ACQUIRE_OR_REFRESH_LOCK_SCRIPT)
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                script(keys=[self.get_locking_key(name)], args=[self.name, self.lock_ttl], client=pipe)
            if heartbeat:
                self.last_heartbeat = now()
                # The whole record (a few fields): a server restarted without its data gets it back.
                pipe.hset(self.key, mapping=self.to_dict())
                pipe.expire(self.key, self.interval + 60)
            results = pipe.execute()
        owned = {name for name, outcome in zip(names, results, strict=False) if outcome in (1, 2)}
        if owned != self._acquired_locks:
            gained, lost = owned - self._acquired_locks, self._acquired_locks - owned
            if gained:
                log.info("scheduler %s now schedules %s", self.name, ", ".join(sorted(gained)))
            if lost:
                log.warning("scheduler %s lost its lock on %s", self.name, ", ".join(sorted(lost)))
            self._scheduled_job_registries = []  # rebuilt for the queues now owned
        self._acquired_locks = owned
        self.lock_acquisition_time = datetime.now()
        return owned

    def release_locks(self) -> None:
        """Free our locks (never another scheduler's) in one round trip, so that another worker's
        scheduler takes them on its next pass instead of after their TTL."""
        names = sorted(self._acquired_locks)
        self._acquired_locks = set()
        if not names:
            return
        script = self.connection.register_script(RELEASE_LOCK_SCRIPT)
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                script(keys=[self.get_locking_key(name)], args=[self.name], client=pipe)
            pipe.execute()

    # -- the process -------------------------------------------------------------------------

    def start(self) -> Any:
        """Fork the scheduler process (daemonic: a worker that exits normally also stops it)."""
        self._status = self.Status.STARTED
        self._connection = None  # a connection must not be shared across the fork
        self._parent_pid = os.getpid()
        self._process = get_context("fork").Process(target=run_child, args=(self,), name="Scheduler", daemon=True)
        self._process.start()
        return self._process

    def ensure_running(self) -> None:
        if self._retired:
            return
        if self._process is None or not self._process.is_alive():
            if self._process is not None:
                log.warning("scheduler process ended (exit code %s): starting it again", self._process.exitcode)
            self.start()

    def retire(self) -> None:
        self._retired = True

    def parent_gone(self) -> bool:
        return os.getppid() != self._parent_pid

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if not self._stop_requested:
            self._stop_requested = True
            # The stop talks to Redis (bounded by redis_timeout per call); never let it hang on.
            signal.alarm(self.stop_deadline)

    def work(self) -> None:
        """Pass after pass until asked to stop or the worker is gone: contend for the locks, move
        due jobs of the owned queues, wait `interval`. Redis errors (and any other error of a
        pass) are logged and retried with backoff, never fatal."""
        self._install_signal_handlers()
        registered = False
        failures = 0
        failing_since = 0.0
        last_report = 0.0
        while not self._stop_requested:
            if self.parent_gone():
                log.warning("scheduler %s: its worker (pid %d) is gone, stopping", self.name, self._parent_pid)
                self.request_stop()
                break
            try:
                if not registered:
                    self.register_birth()
                    registered = True
                self.heartbeat()
                self.enqueue_scheduled_jobs()
            except Exception as exc:  # a pass must never end the process
                self._unreachable = isinstance(exc, UNREACHABLE)
                failures += 1
                clock = time.monotonic()
                if failures == 1:
                    failing_since = clock
                if failures == 1 or clock - last_report >= 30:
                    last_report = clock
                    log.warning(
                        "scheduler %s: %s: %s (failing for %.0f s, retrying)",
                        self.name,
                        "Redis unreachable" if self._unreachable else "pass failed",
                        exc,
                        clock - failing_since,
                        exc_info=not self._unreachable,
                    )
                self._status = self.Status.STARTED
                self._pause(min(self.max_backoff, self.interval * 2 ** min(failures - 1, 8)))
                continue
            self._unreachable = False
            if failures:
                log.info("scheduler %s: Redis answers again after %d failed passes", self.name, failures)
                failures = 0
            self._pause(self.interval)
        self.stop()

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested and not self.parent_gone():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, self.poll_seconds))

    def stop(self) -> None:
        """Release the locks and delete this scheduler's record, if Redis lets us: unreleased
        locks simply expire after `lock_ttl`."""
        self._status = self.Status.STOPPED
        if self._unreachable:  # trying again would only wait for the same timeouts
            log.warning("scheduler %s: stopped while Redis is unreachable; its locks expire by themselves", self.name)
            return
        try:
            self.release_locks()
            self.register_death()
        except UNREACHABLE as exc:
            log.warning("scheduler %s: stopped without releasing its locks (%s)", self.name, exc)


def run_child(scheduler: TrackpipeScheduler) -> None:
    """The forked process's body."""
    # A job timeout (SimpleWorker arms SIGALRM around jobs) must not leave its handler here: the
    # alarm that bounds our stop must end the process.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    die_with_parent(signal.SIGTERM)
    if scheduler.parent_gone():  # the worker died before the line above took effect
        return
    log.info(
        "scheduler %s for %s started (pid %d)", scheduler.name, ", ".join(sorted(scheduler._queue_names)), os.getpid()
    )
    try:
        scheduler.work()
    except Exception:
        log.exception("scheduler %s failed", scheduler.name)
        raise
    log.info("scheduler %s stopped", scheduler.name)


class SchedulerMixin:
    """For an RQ worker class (put it first among the bases): run `TrackpipeScheduler` instead of
    RQ's scheduler, in every worker, and stop it within a bounded time."""

    scheduler_class: type[TrackpipeScheduler] = TrackpipeScheduler
    # How long a stopping worker waits for its scheduler before killing it.
    scheduler_stop_timeout = 15.0

    scheduler: TrackpipeScheduler | None
    name: str
    queues: list[Any]
    connection: Any
    serializer: Any
    log: logging.Logger

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | int | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        scheduler = self.scheduler_class(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
            name=f"{self.name}-{uuid4().hex[:8]}",  # the lock's value then says which worker holds it
        )
        self.scheduler = scheduler
        if burst:  # as RQ: one pass in this process if the locks are free, no process
            if scheduler.acquire_locks():
                try:
                    scheduler.register_birth()
                    scheduler.enqueue_scheduled_jobs()
                finally:
                    scheduler.release_locks()
                    scheduler.register_death()
            return
        scheduler.start()

    def stop_scheduler(self) -> None:
        """SIGTERM the scheduler process, wait for it (bounded), SIGKILL it if it is still there.
        Safe to call twice (RQ does on a warm shutdown): a process already reaped is left alone
        rather than signalled by a pid that may be reused."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        scheduler.retire()
        process = scheduler._process
        if process is None or process.exitcode is not None:
            return
        process.terminate()
        process.join(self.scheduler_stop_timeout)
        if process.exitcode is None:
            log.warning(
                "scheduler process %s did not stop within %.0f s: killing it", process.pid, self.scheduler_stop_timeout
            )
            process.kill()
            process.join(5)
