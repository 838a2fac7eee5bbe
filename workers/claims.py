"""Claims: a job a worker has taken is always on a list in Redis that names the worker.

RQ takes a job with a plain BLPOP when a worker serves several queues; between that pop and the
job's entry in the started registry the job id existed only in the worker's memory, so a worker
killed there lost the job (and every event in it). Here a worker takes a job with one script call
that moves it from the first non-empty queue (in the worker's priority order) onto its own claims
list, `P:claims:<worker>`, and the id stays there until the worker has finished with the job.

- Taking is atomic: the job is on its queue or on exactly one claims list, never in between.
- A worker is alive while its lease `P:lease:<worker>` exists; a thread of the worker (the keeper)
  renews it every third of `worker.lease_seconds`, so a long job does not make it look dead.
- The keeper also sweeps: every worker name ever registered is in `P:claimants`; a claimant whose
  lease is gone is dead, and its unfinished claims go back to the front of their queues (one script
  call, under a short lock so only one worker sweeps at a time). A job of a killed worker runs again
  within `lease_seconds` plus one renewal period.
- A worker's own leftovers (a job interrupted by a Redis outage, or a claim whose reply was lost)
  go back to their queues at its next take, in the same script call, before it takes new work.
- Waiting for work: an idle worker blocks on the queues' doorbells `P:wake:<queue>` (lists holding
  at most one token) instead of on the queues themselves, so a worker killed while it waits loses a
  wake-up, never a job. Producers ring when they add a job (trackpipe.openjob, the recovery below);
  jobs that RQ itself puts on a queue (scheduled retries) are found by the worker's wait, which
  re-checks the queues at least every `WAKE_POLL_SECONDS`.

What "unfinished" means for a claimed job, judged from its RQ hash: `started` (it was running), or
`queued` but on no queue (taken and never started). A job that finished (hash deleted, since
trackpipe keeps no results), failed, or was scheduled for a retry is only dropped from the list.
A recovered job counts its recoveries in its hash (`trackpipe_recovered`) and is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from prometheus_client import Counter
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from trackpipe.connection import sync_client
from trackpipe.jobs import RECOVERED_FIELD
from trackpipe.keys import KeyLayout
from trackpipe.replication import NotReplicated

log = logging.getLogger("trackpipe.worker")

# An idle worker re-checks its queues at least this often even without a doorbell.
WAKE_POLL_SECONDS = 1.0

JOBS_RECOVERED = Counter(
    "trackpipe_jobs_recovered_total", "Jobs put back on their queue after their worker died or lost Redis", ["queue"]
)

# Shared by the take and the sweep: put back the unfinished jobs of one claims list.
# Needs: rq (RQ's prefix), wake (doorbell prefix). Returns the list of requeued "queue|id" entries
# in `requeued`.
_RELEASE_LUA = """
local function release(claims, rq, wake, requeued)
  local ids = redis.call('LRANGE', claims, 0, -1)
  for _, id in ipairs(ids) do
    local job_key = rq .. ':job:' .. id
    local held = redis.call('HMGET', job_key, 'status', 'origin')
    local status, origin = held[1], held[2]
    if origin then
      local queue_key = rq .. ':queue:' .. origin
      local back = status == 'started'
      if status == 'queued' and not redis.call('LPOS', queue_key, id) then back = true end
      if back then
        -- forget the interrupted execution(s): started registry entries are '<job id>:<execution id>'
        local wip = rq .. ':wip:' .. origin
        local head = id .. ':'
        for _, member in ipairs(redis.call('ZRANGE', wip, 0, -1)) do
          if string.sub(member, 1, #head) == head then
            redis.call('ZREM', wip, member)
            redis.call('DEL', rq .. ':execution:' .. member)
            redis.call('ZREM', rq .. ':executions:' .. id, string.sub(member, #head + 1))
          end
        end
        redis.call('HSET', job_key, 'status', 'queued')
        redis.call('HINCRBY', job_key, '@RECOVERED@', 1)
        redis.call('LPUSH', queue_key, id)
        redis.call('SADD', rq .. ':queues', queue_key)
        redis.call('LPUSH', wake .. origin, '1')
        redis.call('LTRIM', wake .. origin, 0, 0)
        table.insert(requeued, origin .. '|' .. id)
      end
    end
  end
  redis.call('DEL', claims)
end
""".replace("@RECOVERED@", RECOVERED_FIELD)

# KEYS: 1 this worker's claims list, then pairs (queue list, its doorbell) in priority order
# ARGV: 1 RQ prefix, 2 doorbell prefix
# Returns {requeued leftovers, queue key or false, job id or false}.
TAKE_SCRIPT = (
    _RELEASE_LUA
    + """
local requeued = {}
if redis.call('LLEN', KEYS[1]) > 0 then release(KEYS[1], ARGV[1], ARGV[2], requeued) end
for i = 2, #KEYS, 2 do
  local id = redis.call('LMOVE', KEYS[i], KEYS[1], 'LEFT', 'RIGHT')
  if id then
    -- more waiting here: wake the next idle worker too
    if redis.call('LLEN', KEYS[i]) > 0 then
      redis.call('LPUSH', KEYS[i + 1], '1')
      redis.call('LTRIM', KEYS[i + 1], 0, 0)
    end
    return {requeued, KEYS[i], id}
  end
end
return {requeued, false, false}
"""
)

# KEYS: 1 claims list; ARGV: 1 RQ prefix, 2 doorbell prefix. Returns the requeued entries.
RELEASE_SCRIPT = (
    _RELEASE_LUA
    + """
local requeued = {}
release(KEYS[1], ARGV[1], ARGV[2], requeued)
return requeued
"""
)

# KEYS: 1 claimants set, 2 sweeper lock
# ARGV: 1 RQ prefix, 2 doorbell prefix, 3 claims prefix, 4 lease prefix, 5 lock ttl ms, 6 sweeper name
# Returns the requeued entries, or false when another worker holds the lock.
SWEEP_SCRIPT = (
    _RELEASE_LUA
    + """
if not redis.call('SET', KEYS[2], ARGV[6], 'NX', 'PX', ARGV[5]) then return false end
local requeued = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[4] .. name) == 0 then
    release(ARGV[3] .. name, ARGV[1], ARGV[2], requeued)
    redis.call('SREM', KEYS[1], name)
  end
end
return requeued
"""
)


def reconnect_delay(attempt: int, longest: float = 5.0) -> float:
    """Seconds to wait before reconnection attempt `attempt` + 1 (from 0): 0.5 s doubling, capped."""
    return min(0.5 * 2 ** min(attempt, 16), longest)


def is_outage(exc: BaseException) -> bool:
    """A Redis error that says nothing about the job: the server is unreachable, loading its data,
    or read-only (a replica after a failover), or a settle write that too few replicas confirmed
    (edge.min_replicas: the job must run again, not fail). Follows the exception's causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current, RedisConnectionError | RedisTimeoutError | ReadOnlyError | ConnectionResetError | NotReplicated
        ):
            return True
        if isinstance(current, ResponseError) and str(current).startswith(("LOADING", "MASTERDOWN", "TRYAGAIN")):
            return True
        current = current.__cause__ or current.__context__
    return False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw: Sequence[bytes | str]) -> list[tuple[str, str]]:
    out = []
    for item in raw:
        queue, _, job_id = _text(item).rpartition("|")
        out.append((queue, job_id))
    return out


def _report(requeued: list[tuple[str, str]], why: str) -> None:
    for queue, job_id in requeued:
        JOBS_RECOVERED.labels(queue).inc()
        log.warning("job %s put back on queue %s (%s)", job_id, queue, why)


class Claims:
    """One worker's side of the claims protocol (the script calls; no threads)."""

    def __init__(self, connection: Redis, layout: KeyLayout, worker_name: str, queue_names: Sequence[str]) -> None:
        self.connection = connection
        self.layout = layout
        self.worker_name = worker_name
        self.key = layout.claims(worker_name)
        self._take_keys = [self.key]
        for name in queue_names:
            self._take_keys += [layout.queue(name), layout.wake(name)]
        self._wake_keys = [layout.wake(name) for name in queue_names]
        self._take = connection.register_script(TAKE_SCRIPT)
        self._release = connection.register_script(RELEASE_SCRIPT)

    def register(self, lease_seconds: float) -> None:
        """At start: known as a claimant, alive, and nothing left from an earlier run of this name."""
        pipe = self.connection.pipeline(transaction=True)
        pipe.sadd(self.layout.claimants, self.worker_name)
        pipe.set(self.layout.lease(self.worker_name), 1, px=int(lease_seconds * 1000))
        pipe.execute()
        self.release_all("left by an earlier run of this worker")

    def take(self) -> tuple[str, str] | None:
        """Put back any leftover claim, then move the next job onto the claims list.
        Returns (queue key, job id) or None when every queue is empty."""
        args = [self.layout.rq_prefix, self.layout.wake_prefix]
        requeued, queue_key, job_id = self._take(keys=self._take_keys, args=args)
        _report(_entries(requeued), "its run was interrupted")
        if not job_id:
            return None
        return _text(queue_key), _text(job_id)

    def wait(self, timeout: float) -> None:
        """Block until a doorbell of one of the queues rings, or `timeout` (seconds) passes."""
        self.connection.blpop(self._wake_keys, timeout=max(timeout, 0.01))

    def release_all(self, why: str) -> list[tuple[str, str]]:
        """Put this worker's unfinished claims back on their queues (after a Redis outage, at stop)."""
        requeued = _entries(self._release(keys=[self.key], args=[self.layout.rq_prefix, self.layout.wake_prefix]))
        _report(requeued, why)
        return requeued

    def retire(self) -> None:
        """A clean stop: nothing held, no lease, no longer a claimant."""
        self.release_all("its worker stopped")
        pipe = self.connection.pipeline(transaction=True)
        pipe.delete(self.layout.lease(self.worker_name))
        pipe.srem(self.layout.claimants, self.worker_name)
        pipe.execute()


def sweep(connection: Redis, layout: KeyLayout, sweeper_name: str, lock_ms: int) -> list[tuple[str, str]] | None:
    """Put back the unfinished claims of every dead claimant. None when another worker is sweeping."""
    result = connection.eval(
        SWEEP_SCRIPT,
        2,
        layout.claimants,
        layout.sweeper_lock,
        layout.rq_prefix,
        layout.wake_prefix,
        layout.claims_prefix,
        layout.lease_prefix,
        lock_ms,
        sweeper_name,
    )
    if result is None:
        return None
    requeued = _entries(result)
    _report(requeued, "its worker died")
    return requeued


class Keeper(threading.Thread):
    """Renews a worker's lease and sweeps dead workers' claims, on its own connection, whatever the
    worker's main thread is doing.

    After losing Redis it waits one whole lease period of good connection before it judges other
    workers: their keepers need that long to renew the leases that expired during the outage."""

    def __init__(self, redis_url: str, layout: KeyLayout, worker_name: str, lease_seconds: float) -> None:
        super().__init__(name=f"keeper-{worker_name}", daemon=True)
        self.layout = layout
        self.worker_name = worker_name
        self.lease_seconds = lease_seconds
        self.period = max(lease_seconds / 3, 0.2)
        self.connection = sync_client(redis_url, socket_connect_timeout=2, socket_timeout=max(lease_seconds / 2, 1))
        self._stop_event = threading.Event()
        self._healthy_since: float | None = time.monotonic()
        self._warned = False

    def beat(self) -> None:
        """One renewal (and, when trusted, one sweep); never raises for a Redis error."""
        try:
            self.connection.set(self.layout.lease(self.worker_name), 1, px=int(self.lease_seconds * 1000))
            if self._healthy_since is None:
                self._healthy_since = time.monotonic()
                log.warning("keeper of %s: Redis is back", self.worker_name)
            self._warned = False
            if time.monotonic() - self._healthy_since >= self.lease_seconds:
                sweep(self.connection, self.layout, self.worker_name, int(self.period * 1000))
        except RedisError as exc:
            self._healthy_since = None
            if not self._warned:
                log.warning("keeper of %s: Redis unreachable (%s); retrying", self.worker_name, exc)
                self._warned = True
        except Exception:
            # The lease must keep being renewed whatever went wrong once: a keeper that died would
            # make its living worker look dead, and its job run twice.
            log.exception("keeper of %s: unexpected error; carrying on", self.worker_name)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.beat()
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=self.period + 5)
        self.connection.close()
