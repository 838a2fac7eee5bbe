"""`trackpipe soak --failover`: the primary SIGKILLed under load, a replica promoted by Sentinel;
then proves what the edge's answers promised.

The layout (tooling.replicated): a primary, one replica and three sentinels from the embedded wheel,
both servers with `appendonly yes` and `appendfsync always`. One edge and the soak's workers
(tooling.soak.Pipeline) connect with the `redis+sentinel://` URL; the edge runs with
`edge.min_replicas` N. The soak's producer posts unique ids (singles and batches of 10, v1 and v2)
at a steady rate; the webhook receiver and a `file` destination take the deliveries.

At a moment drawn from the seed the primary is SIGKILLed; the sentinels promote the replica. Then,
unless told not to, the old primary is started again `rejoin_after` seconds after the promotion, on
its own data but with `replicaof` the new primary in its config: it comes back as a replica and
resyncs, never as a second primary holding stale data (a split brain, which the run watches for).

With N = 1 the new primary has no replica until the old one is back: every write is answered 503
(WAITAOF finds no replica) until then. With N = 0 the edge answers as soon as the primary has a
write in memory and on its disk: what it had not yet sent to the replica when it died is gone, and
the report counts those 200s.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tooling.harness import file_ids, free_port
from tooling.replicated import Replicated, replicated
from tooling.soak import (
    DESTINATIONS,
    EXPLAIN_BEFORE,
    FILE,
    HOOK,
    LAYOUTS,
    Answer,
    Arrivals,
    FaultRecord,
    FileTail,
    Pipeline,
    Producer,
    Sink,
    WorkerReport,
    delivery_errors,
    drain,
    first_arrivals,
    locate,
    soak_config,
    start_load,
    tally,
)

# The kill lands between these fractions of the load (drawn from the seed): load before it, and
# time after it for the promotion, the rejoin and load on the new primary.
KILL_BETWEEN = (0.25, 0.45)
MIN_DURATION = 15
DEFAULT_REJOIN_AFTER = 3.0
# The layout has one replica: WAITAOF can never count more.
MAX_MIN_REPLICAS = 1
LOST_SHOWN = 20  # lost events listed per destination
# A job whose settlement died with the primary runs again once the workers can write again: within
# the soak's short timings (delivery timeout 4 s, abandoned grace 1 s, maintenance every 1 s).
RERUN_WITHIN = 6.0
# Both servers, and the old primary when it rejoins. A primary serving its first replica sync waits
# repl-diskless-sync-delay (default 5 s) for more replicas to share the transfer: with one replica
# that only lengthens the resync, and with min_replicas 1 every write waits on the resync (503).
SERVER_SETTINGS = {"appendfsync": "always", "repl-diskless-sync-delay": "0"}


class LostEvent(msgspec.Struct):
    event_id: str
    accepted_after_kill: float  # seconds from the kill to its 200 (negative: before the kill)


class EdgeOutage(msgspec.Struct):
    """How the edge answered around the kill (times in seconds from the kill)."""

    answers_503: int  # from the kill on
    answers_503_before_kill: int  # WAITAOF timeouts of a slow replica, nothing to do with the kill
    seconds_with_503: int  # whole seconds after the kill in which at least one 503 was answered
    first_503_after_kill: float | None
    last_503_after_kill: float | None
    connection_errors: int  # requests with no HTTP answer at all
    # From the kill to the first 200 of a request sent after it (None: none was accepted again).
    first_200_after_kill: float | None


class FailoverReport(msgspec.Struct):
    seed: int  # `--seed` repeats the moment of the kill
    min_replicas: int
    layout: str
    timings: str
    appendfsync: dict[str, str]  # per data server ("primary", "replica"), as the run set it
    repl_diskless_sync_delay: int  # seconds (see SERVER_SETTINGS)
    seconds: float
    requests: int
    statuses: dict[str, int]
    events_sent: int
    events_accepted: int
    accepted_before_kill: int
    kill_at: float  # seconds since the load started
    promoted_after_kill: float  # until the sentinels named the replica and it said it is primary
    # The old primary, started again as a replica of the new one: after how long, and what it was
    # at the end ("replica of 127.0.0.1:PORT, link up"; "not restarted").
    rejoined_after_kill: float | None
    in_sync_after_kill: float | None  # until its link to the new primary was up (resynced)
    old_primary: str
    # Two data servers answering role:master at once while the run watched, or the sentinels not
    # naming the promoted one at the end.
    split_brain: bool
    delivered: dict[str, int]
    lost: dict[str, int]
    lost_events: dict[str, list[LostEvent]]  # the first lost 200s, with when they were answered
    lost_accepted_before_kill: int  # distinct lost ids, over both destinations
    lost_accepted_after_kill: int
    missing: dict[str, dict[str, list[str]]]  # where lost ids sit on the new primary, if anywhere
    duplicates: dict[str, int]
    # Repeats of ids that reached the destination around the failover (see explained_window):
    # deliveries or fan-outs whose settlement died with the primary, run again.
    duplicates_explained: dict[str, int]
    duplicates_unexplained: dict[str, int]
    unexplained_arrivals: dict[str, dict[str, list[float]]]
    # Delivered ids that were answered 503 or never answered: a write that reached the server but
    # whose WAITAOF fell short, or whose answer was cut. Not promised, not a loss.
    delivered_not_accepted: dict[str, int]
    delivery_errors: dict[str, dict[str, int]]
    outage: EdgeOutage
    # Per destination, from the kill until every event accepted before it had arrived (0: all had
    # before the kill; None: some never did).
    recovery_seconds: dict[str, float | None]
    drain_seconds: float
    workers: list[WorkerReport]
    faults: list[FaultRecord]
    ok: bool


# -- the pure parts of the report -----------------------------------------------------------------


def edge_outage(answers: list[Answer], kill: float) -> EdgeOutage:
    """Summarize the edge's answers around the kill (`answers` as Producer.answers)."""
    failed = [answered - kill for _, answered, status in answers if status == "503" and answered >= kill]
    after = [answered - kill for sent, answered, status in answers if status == "200" and sent >= kill]
    return EdgeOutage(
        answers_503=len(failed),
        answers_503_before_kill=sum(1 for _, answered, status in answers if status == "503" and answered < kill),
        seconds_with_503=len({math.floor(t) for t in failed}),
        first_503_after_kill=round(min(failed), 2) if failed else None,
        last_503_after_kill=round(max(failed), 2) if failed else None,
        connection_errors=sum(1 for *_, status in answers if status == "connection error"),
        first_200_after_kill=round(min(after), 2) if after else None,
    )


def lost_events(
    accepted_at: dict[str, float], received: dict[str, Counter[str]], kill: float
) -> dict[str, list[LostEvent]]:
    """Per destination, the first LOST_SHOWN accepted ids it never got, earliest 200 first."""
    shown: dict[str, list[LostEvent]] = {}
    for destination, got in received.items():
        missing = sorted((at, i) for i, at in accepted_at.items() if i not in got)
        shown[destination] = [LostEvent(i, round(at - kill, 3)) for at, i in missing[:LOST_SHOWN]]
    return shown


def recovery_seconds(first: dict[str, float], accepted_at: dict[str, float], kill: float) -> float | None:
    """From the kill until the last event accepted before it arrived; None if one never did."""
    before = [i for i, at in accepted_at.items() if at < kill]
    if any(i not in first for i in before):
        return None
    return round(max([0.0, *(first[i] - kill for i in before)]), 2)


def explained_window(kill: float, writable: float) -> tuple[float, float, tuple[str, ...]]:
    """Work whose settlement died with the primary: sent up to EXPLAIN_BEFORE before the kill (in
    flight), or run again within RERUN_WITHIN once the workers could settle again (`writable`: the
    promotion, or with min_replicas 1 the replica back in sync)."""
    return (kill - EXPLAIN_BEFORE, writable + RERUN_WITHIN, DESTINATIONS)


def verdict(min_replicas: int, accepted: int, lost: dict[str, int], split_brain: bool) -> bool:
    """Something must have been accepted, no split brain; with min_replicas >= 1, nothing lost.
    (With 0, a loss is the setting's documented risk: reported, counted, not a failure.)"""
    return accepted > 0 and not split_brain and (min_replicas == 0 or not any(lost.values()))


# -- the run --------------------------------------------------------------------------------------


def _probe(port: int) -> redis.Redis:
    """A client of one data server that fails at once (redis-py retries with backoff by default:
    seconds against a dead port, which would delay the rejoin and blur the times)."""
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )


def _role(port: int) -> str | None:
    with contextlib.suppress(redis.RedisError, OSError), _probe(port) as conn:
        return str(conn.info("replication").get("role"))
    return None


def _rejoin(layout: Replicated, old_port: int, new_port: int) -> subprocess.Popen:
    """Start the killed primary again on its data, as a replica of the new primary from its first
    moment (`replicaof` in its config): never a primary with stale data beside the promoted one."""
    layout.settings = {**layout.settings, **SERVER_SETTINGS}  # what the run set with CONFIG SET
    return layout.restart_as_replica(old_port, new_port)


def _replica_state(port: int) -> str:
    with contextlib.suppress(redis.RedisError, OSError), _probe(port) as conn:
        info = conn.info("replication")
        if info.get("role") != "slave":
            return f"role {info.get('role')} (expected a replica)"
        return f"replica of {info.get('master_host')}:{info.get('master_port')}, link {info.get('master_link_status')}"
    return "not answering"


def run_failover(
    duration: float = 40.0,
    rate: float = 100.0,
    min_replicas: int = 1,
    log: Callable[[str], None] = lambda _: None,
    drain_timeout: float = 300.0,
    layout: str = "roles",
    seed: int | None = None,
    rejoin: bool = True,
    rejoin_after: float = DEFAULT_REJOIN_AFTER,
    default_timings: bool = False,
) -> FailoverReport:
    """Load for `duration` seconds, the primary SIGKILLed at a seeded moment, then wait for delivery."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if not 0 <= min_replicas <= MAX_MIN_REPLICAS:
        raise ValueError(f"min_replicas {min_replicas}: the layout has one replica (0 or 1)")
    if duration < MIN_DURATION:
        raise ValueError(f"duration {duration}: at least {MIN_DURATION} s (load before and after the failover)")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    kill_fraction = random.Random(seed).uniform(*KILL_BETWEEN)
    log(f"seed {seed} (--seed {seed} repeats the moment of the kill), min_replicas {min_replicas}, layout {layout}")
    faults: list[FaultRecord] = []
    with tempfile.TemporaryDirectory(prefix="trackpipe-failover-") as tmp_name:
        tmp = Path(tmp_name)
        with replicated(tmp / "servers", appendonly=True) as servers:
            appendfsync: dict[str, str] = {}
            for role, port in (("primary", servers.primary_port), ("replica", servers.replica_port)):
                with servers.client(port) as conn:
                    conn.config_set(*[item for pair in SERVER_SETTINGS.items() for item in pair])
                    appendfsync[role] = str(conn.config_get("appendfsync")["appendfsync"])
                    sync_delay = int(conn.config_get("repl-diskless-sync-delay")["repl-diskless-sync-delay"])
            url = servers.url()
            edge_port = free_port()
            sink = Sink()
            tail = FileTail(tmp / "out")
            config_file = tmp / "failover.toml"
            edge_settings = f"min_replicas = {min_replicas}\nreplica_timeout_ms = 1000"
            config_file.write_text(soak_config(url, sink.url, tmp / "out", default_timings, edge_settings))
            pipeline = Pipeline(config_file, edge_port, url, {**os.environ}, layout)
            producer = Producer(edge_port, rate)
            split_brain = False
            rejoined: float | None = None
            in_sync: float | None = None
            try:
                pipeline.start_all()
                loop_thread, started, note = start_load(producer, faults, log)

                time.sleep(max(0.0, started + duration * kill_fraction - time.monotonic()))
                old_port = servers.kill_primary()
                kill = time.monotonic()
                note("primary SIGKILLed", f"port {old_port}")
                new_port = servers.wait_promoted(old_port)
                promoted = time.monotonic()
                note("replica promoted", f"port {new_port}")
                end = started + duration
                rejoin_at = promoted + rejoin_after if rejoin else math.inf
                # Watch the roles until the load ends: two primaries at once is a split brain.
                while time.monotonic() < end:
                    if time.monotonic() >= rejoin_at:
                        rejoin_at = math.inf
                        _rejoin(servers, old_port, new_port)
                        rejoined = time.monotonic() - kill
                        note("old primary started again", f"as a replica of port {new_port}")
                    if rejoined is not None and in_sync is None and _replica_state(old_port).endswith("link up"):
                        in_sync = time.monotonic() - kill
                        note("old primary in sync", f"replica of port {new_port}, link up")
                    both_primary = _role(old_port) == "master" and _role(new_port) == "master"
                    if rejoined is not None and not split_brain and both_primary:
                        split_brain = True
                        note("split brain", f"ports {old_port} and {new_port} both answer role:master")
                    time.sleep(0.2)
                producer.stop = True
                loop_thread.join(timeout=60)
                note("load stopped")
                seconds = time.monotonic() - started
                accepted = producer.accepted
                drain_seconds = drain(accepted, sink, tail, url, drain_timeout, note)
                if servers.master_port() != new_port:
                    split_brain = True
                    note("split brain", f"the sentinels name port {servers.master_port()}, not {new_port}")
                old_primary = _replica_state(old_port) if rejoined is not None else "not restarted"
                workers = pipeline.reports()
                tail.poll()
                arrivals: dict[str, Arrivals] = {HOOK: sink.arrivals(), FILE: tail.arrivals()}
                received = {HOOK: sink.ids(), FILE: file_ids(tmp / "out")}
                errors = delivery_errors(url, received)
                missing = {d: locate(url, accepted - set(got)) for d, got in received.items() if accepted - set(got)}
            finally:
                pipeline.stop()
                sink.close()
                tail.close()
    writable = promoted if min_replicas == 0 or in_sync is None else kill + in_sync
    counts = tally(accepted, received, arrivals, [explained_window(kill, writable)], started)
    lost_ids = set().union(*(accepted - set(got) for got in received.values()))
    recovery = {d: recovery_seconds(first_arrivals(a), producer.accepted_at, kill) for d, a in arrivals.items()}
    report = FailoverReport(
        seed=seed,
        min_replicas=min_replicas,
        layout=layout,
        timings="default" if default_timings else "fast",
        appendfsync=appendfsync,
        repl_diskless_sync_delay=sync_delay,
        seconds=round(seconds, 1),
        requests=sum(producer.statuses.values()),
        statuses=dict(producer.statuses),
        events_sent=producer.sent,
        events_accepted=len(accepted),
        accepted_before_kill=sum(1 for at in producer.accepted_at.values() if at < kill),
        kill_at=round(kill - started, 2),
        promoted_after_kill=round(promoted - kill, 2),
        rejoined_after_kill=None if rejoined is None else round(rejoined, 2),
        in_sync_after_kill=None if in_sync is None else round(in_sync, 2),
        old_primary=old_primary,
        split_brain=split_brain,
        delivered=counts.delivered,
        lost=counts.lost,
        lost_events=lost_events(producer.accepted_at, received, kill),
        lost_accepted_before_kill=sum(1 for i in lost_ids if producer.accepted_at[i] < kill),
        lost_accepted_after_kill=sum(1 for i in lost_ids if producer.accepted_at[i] >= kill),
        missing=missing,
        duplicates=counts.duplicates,
        duplicates_explained=counts.duplicates_explained,
        duplicates_unexplained=counts.duplicates_unexplained,
        unexplained_arrivals=counts.unexplained_arrivals,
        delivered_not_accepted=counts.unexpected_ids,
        delivery_errors=errors,
        outage=edge_outage(producer.answers, kill),
        recovery_seconds=recovery,
        drain_seconds=round(drain_seconds, 1),
        workers=workers,
        faults=sorted(faults, key=lambda f: f.at),
        ok=False,
    )
    report.ok = verdict(min_replicas, len(accepted), counts.lost, split_brain)
    return report
