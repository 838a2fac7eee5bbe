"""Acknowledged means replicated: `edge.min_replicas` for the whole pipeline.

With `edge.min_replicas` N > 0 every write that settles work ends with `WAITAOF 1 N timeout` in the
same round trip: the edge's group-committed write (ingest.store) and, here, the workers' settle
transactions (the ingest job's fan-out, a delivery job's outcome). The write counts only when the
reply says the primary has it in its append-only file and N replicas have it in theirs; otherwise
`NotReplicated`, which the worker treats as a Redis outage: the job is not acknowledged and runs
again (a duplicate at most, never a loss).

WAITAOF cannot wait inside MULTI (there it answers at once), so the settle pipeline sends it right
after EXEC, on the same connection and in the same round trip (`SettlePipeline`), in short slices
(`WAIT_SLICE_MS`: see there why) until the replicas confirm or `replica_timeout_ms` is up. It waits for
everything that connection wrote so far, so the writes before the transaction (the seal, the dedup
marks) are covered too: a replica's stream is in order.

WAITAOF fails on a primary without AOF, so `check_primary` tells at start, in words, that every
write would be refused.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import msgspec
from redis.client import Pipeline
from redis.exceptions import RedisError, ResponseError

if TYPE_CHECKING:
    from redis import Redis

    from trackpipe.config import Config


# Valkey asks replicas for their fsynced offset (REPLCONF GETACK) only when a WAIT or WAITAOF
# blocks, and a replica answers it at once, before its own fsync of what came in the same read. So a
# write followed by WAITAOF alone was confirmed only by the replica's once-a-second report (~1 s per
# write, even with appendfsync always on both sides, measured with tooling.benchredis). Sent as
# write, WAIT, WAITAOF in one round trip, the WAIT's question is answered with the write applied,
# then the replica fsyncs it, and the WAITAOF's own question finds it on disk (~1 ms). Should that
# still fall short (a replica fsyncing once a second, a slow disk), the wait goes on in slices, each
# asking again (a blocked command's timeout fires on the server's clock tick: hz 10, ~100 ms).
WAIT_SLICE_MS = 10


def slice_ms(remaining_ms: float) -> int:
    """The next slice's timeout: WAIT_SLICE_MS, or what is left (at least 1: 0 means forever)."""
    return max(1, min(WAIT_SLICE_MS, int(remaining_ms)))


def is_short(reply: Any, min_replicas: int) -> bool:
    """A WAITAOF reply ([local, replicas]) that does not yet confirm min_replicas replicas."""
    if isinstance(reply, BaseException):
        return False  # an error is final; check_waitaof words it
    local, replicas = (int(n) for n in reply)
    return local < 1 or replicas < min_replicas


class NotReplicated(RedisError):
    """A settle write that WAITAOF did not confirm on the primary's disk and N replicas: the work
    is not acknowledged. Workers treat it as a Redis outage (workers.claims.is_outage)."""


class ReplicaWait(msgspec.Struct, frozen=True):
    """What a settle write waits for: `min_replicas` replicas, at most `timeout_ms`."""

    min_replicas: int
    timeout_ms: int

    def command(self, timeout_ms: int | None = None) -> tuple[str, int, int, int]:
        return ("WAITAOF", 1, self.min_replicas, self.timeout_ms if timeout_ms is None else timeout_ms)

    def first(self) -> list[tuple[Any, ...]]:
        """What follows the write in its own round trip: WAIT (the replicas apply it), then the
        first WAITAOF slice (see WAIT_SLICE_MS)."""
        return [("WAIT", self.min_replicas, self.timeout_ms), self.command(slice_ms(self.timeout_ms))]


def replica_wait(config: Config) -> ReplicaWait | None:
    """The pipeline's wait (`edge.min_replicas`, `edge.replica_timeout_ms`); None when 0."""
    edge = config.edge
    return ReplicaWait(edge.min_replicas, edge.replica_timeout_ms) if edge.min_replicas else None


def check_waitaof(reply: Any, wait: ReplicaWait) -> None:
    """Raise NotReplicated unless WAITAOF's reply ([local, replicas], or its error) confirms `wait`."""
    if isinstance(reply, BaseException):
        text = str(reply)
        if "appendonly" in text.lower():
            raise NotReplicated(
                f"edge.min_replicas = {wait.min_replicas}: the primary has appendonly disabled, so WAITAOF "
                "cannot confirm anything; set appendonly yes on the primary and its replicas"
            ) from reply
        raise NotReplicated(f"WAITAOF failed: {text}") from reply
    local, replicas = (int(n) for n in reply)
    if local < 1 or replicas < wait.min_replicas:
        raise NotReplicated(
            f"the write reached {replicas} of {wait.min_replicas} required replicas"
            f"{'' if local else ' and not the primary disk'} within {wait.timeout_ms} ms (edge.min_replicas)"
        )


class SettlePipeline(Pipeline):
    """A MULTI/EXEC pipeline whose round trip ends with WAITAOF, sent after EXEC on the same
    connection; `execute` raises NotReplicated when the reply falls short (the transaction itself
    has run then: its effects are on the primary, not acknowledged)."""

    def __init__(self, connection: Redis, wait: ReplicaWait) -> None:
        super().__init__(connection.connection_pool, connection.response_callbacks, True, None)
        self.replica_wait = wait
        self._waited: Any = None

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        deadline = time.monotonic() + self.replica_wait.timeout_ms / 1000
        wait = connection.pack_commands(self.replica_wait.first())
        send = connection.send_packed_command

        def send_with_wait(packed: Any, check_health: bool = True) -> None:
            # One-shot: only the transaction's packet gets the WAITAOF.
            connection.send_packed_command = send
            items = [packed] if isinstance(packed, str | bytes) else list(packed)
            send([*items, *wait], check_health)

        connection.send_packed_command = send_with_wait
        try:
            data = super()._execute_transaction(connection, commands, raise_on_error)
        except BaseException:
            connection.disconnect()  # WAITAOF's reply may still be on the wire
            raise
        finally:
            if connection.send_packed_command is send_with_wait:
                connection.send_packed_command = send
        # Read here, not raised here: an error inside the retried call would run the transaction
        # again (redis-py retries timeouts), so the verdict is given in `execute`.
        try:
            with contextlib.suppress(ResponseError):  # only its question to the replicas matters
                self.parse_response(connection, "WAIT")
            self._waited = self.parse_response(connection, "WAITAOF")
            # More slices on this same connection (WAITAOF waits for its own writes), until the
            # replicas confirm or the time is up.
            while is_short(self._waited, self.replica_wait.min_replicas):
                remaining = (deadline - time.monotonic()) * 1000
                if remaining < 1:
                    break
                connection.send_command(*self.replica_wait.command(slice_ms(remaining)))
                self._waited = self.parse_response(connection, "WAITAOF")
        except ResponseError as exc:
            self._waited = exc
        except (RedisError, OSError) as exc:
            # The transaction ran; only its confirmation is unknown: not acknowledged.
            connection.disconnect()
            self._waited = exc
        return data

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self._waited = None
        replies = super().execute(raise_on_error)
        if self._waited is None:  # nothing was sent (an empty pipeline)
            return replies
        check_waitaof(self._waited, self.replica_wait)
        return replies


def settle_pipeline(connection: Redis, wait: ReplicaWait | None) -> Pipeline:
    """The MULTI/EXEC pipeline of a settle write: with `wait`, its EXEC is followed by WAITAOF."""
    if wait is None:
        return connection.pipeline(transaction=True)
    return SettlePipeline(connection, wait)


def aof_problem(info: dict[str, Any], min_replicas: int) -> str | None:
    """What is wrong with a primary for `edge.min_replicas` (from its `INFO persistence`), or None."""
    if min_replicas <= 0:
        return None
    enabled = info.get("aof_enabled")
    if enabled is None:
        return (
            f"edge.min_replicas = {min_replicas}: the server does not report aof_enabled in INFO persistence; "
            "WAITAOF needs a Redis 7.2+ or Valkey server with appendonly yes"
        )
    if str(enabled) not in ("1", "yes"):
        return (
            f"edge.min_replicas = {min_replicas} needs appendonly yes on the primary (and its replicas), "
            "but the server has appendonly no: WAITAOF fails there, so every write would be refused (503) "
            "and no job could settle; set appendonly yes, or edge.min_replicas = 0"
        )
    return None


def check_primary(client: Redis, min_replicas: int) -> str | None:
    """`aof_problem` of the server `client` talks to (one INFO call; none when min_replicas is 0)."""
    if min_replicas <= 0:
        return None
    return aof_problem(client.info("persistence"), min_replicas)


def confirm_settled(connection: Redis, job_key: str, done_field: str, wait: ReplicaWait | None) -> None:
    """A re-run that finds its job already settled (the done mark in its hash): with `wait`, the
    settlement may be on the primary only (its WAITAOF fell short), so it is confirmed before the
    job counts as finished. The done mark is written again: WAITAOF waits for this connection's
    last write, and the replica stream is in order, so that covers the earlier settlement too."""
    if wait is None:
        return
    pipe = SettlePipeline(connection, wait)
    pipe.hset(job_key, done_field, 1)
    pipe.execute()
