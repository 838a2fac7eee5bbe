"""`trackpipe bench redis`: what the pipeline costs the Redis/Valkey server per event, read from the
server's own statistics (INFO cpu of the valkey-server process, INFO commandstats for the breakdown).

The stages run separately, so the split needs no attribution: the real edge alone under load (its
group-committed writes), then real workers (ingest + the file destination's delivery worker)
draining exactly what the edge stored. A third run has the edge and the workers together (jobs the
size a live pipeline makes) as a check on the sum. Single events and batches of 100, at
`appendfsync always` and `everysec`; then, on a primary + replica + three sentinels, the edge with
`min_replicas` 0 and 1 side by side (what WAITAOF costs).

Server CPU per event is robust to a busy machine (it counts only the server's own work); the
wall-clock rates reported next to it are not.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from redis import Redis

from tooling.bench import BENCH_KEY, BENCH_SITE, Measurement, bench_server
from tooling.benchhttp import BATCH_EVENT_BYTES, BATCH_EVENTS, CONNECTIONS, _start, _stop, _stored_events
from tooling.examples import V2_EXAMPLE
from tooling.harness import free_port, poll_until, stop_worker
from trackpipe.keys import KeyLayout

CAPACITY_CONFIG = """
redis_url = "{redis_url}"
[edge]
max_backlog = 100000000
min_replicas = {min_replicas}
replica_timeout_ms = 5000
[[sources]]
id = "bench-web"
site_id = "{site}"
keys = ["{key}"]
[[destinations]]
id = "bench-file"
type = "file"
path = "{out_dir}"
"""

WORKER_QUEUES = ("ingest", "deliver:bench-file,retry:bench-file")
ID_MARK = b"@ID@"
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall")
TOP_COMMANDS = 8
KINDS = ("single", "batch")
POLICIES = ("always", "everysec")


# -- the server's statistics (pure) -------------------------------------------------------------


class ServerSample(msgspec.Struct, frozen=True):
    """One reading of the server's counters: CPU seconds (process = every thread; main = the thread
    that runs the commands, the one a primary cannot spread; children = AOF rewrites) and, per
    command, (calls, µs) from INFO commandstats."""

    cpu: float
    main: float
    children: float
    commands: dict[str, tuple[int, int]]
    at: float = 0.0  # time.monotonic() of the reading


class ServerDelta(msgspec.Struct, frozen=True):
    cpu_us: float
    main_us: float
    children_us: float
    commands: dict[str, tuple[int, int]]  # command -> (calls, µs) during the interval
    seconds: float = 0.0


def parse_sample(cpu_info: dict[str, Any], commandstats: dict[str, Any], at: float = 0.0) -> ServerSample:
    """A ServerSample from INFO cpu and INFO commandstats as redis-py parses them."""
    commands = {}
    for name, stats in commandstats.items():
        if name.startswith("cmdstat_") and isinstance(stats, dict):
            commands[name.removeprefix("cmdstat_")] = (int(stats.get("calls", 0)), int(stats.get("usec", 0)))
    main = cpu_info.get("used_cpu_sys_main_thread")
    return ServerSample(
        cpu=float(cpu_info["used_cpu_sys"]) + float(cpu_info["used_cpu_user"]),
        main=float(main) + float(cpu_info["used_cpu_user_main_thread"]) if main is not None else float("nan"),
        children=float(cpu_info.get("used_cpu_sys_children", 0)) + float(cpu_info.get("used_cpu_user_children", 0)),
        commands=commands,
        at=at,
    )


def difference(before: ServerSample, after: ServerSample) -> ServerDelta:
    """What the server did between two samples (commands that did not run are left out)."""
    commands = {}
    for name, (calls, usec) in after.commands.items():
        was_calls, was_usec = before.commands.get(name, (0, 0))
        if calls > was_calls:
            commands[name] = (calls - was_calls, usec - was_usec)
    return ServerDelta(
        cpu_us=(after.cpu - before.cpu) * 1e6,
        main_us=(after.main - before.main) * 1e6,
        children_us=(after.children - before.children) * 1e6,
        commands=commands,
        seconds=after.at - before.at,
    )


def combined(deltas: list[ServerDelta]) -> ServerDelta:
    commands: dict[str, tuple[int, int]] = {}
    for delta in deltas:
        for name, (calls, usec) in delta.commands.items():
            was_calls, was_usec = commands.get(name, (0, 0))
            commands[name] = (was_calls + calls, was_usec + usec)
    return ServerDelta(
        cpu_us=sum(d.cpu_us for d in deltas),
        main_us=sum(d.main_us for d in deltas),
        children_us=sum(d.children_us for d in deltas),
        commands=commands,
        seconds=sum(d.seconds for d in deltas),
    )


def events_per_core(us_per_event: float) -> float:
    """Events per second one core sustains at this much server CPU per event."""
    return 1e6 / us_per_event if us_per_event > 0 else 0.0


def idle_rate(delta: ServerDelta) -> float:
    """The server's CPU per second with nothing to do (its timers, idle clients polling)."""
    return max(delta.cpu_us, 0.0) / delta.seconds if delta.seconds > 0 else 0.0


def stage_figures(delta: ServerDelta, events: int, idle_us_per_second: float = 0.0, top: int = TOP_COMMANDS) -> dict:
    """Per-event figures of one stage, net of what the idle server spends in as long. `commands` is
    the breakdown by command (the `top` costliest by their own µs): calls and µs per event. Commands
    run inside a script or a MULTI are counted under their own name too, so the breakdown does not
    add up to the CPU figure (nor should it: the CPU also covers reading requests, writing replies
    and the AOF)."""
    if events <= 0:
        raise ValueError("a stage with no events has no cost per event")
    idle = min(idle_us_per_second * delta.seconds, delta.cpu_us, delta.main_us)
    ranked = sorted(delta.commands.items(), key=lambda item: item[1][1], reverse=True)[:top]
    return {
        "events": events,
        "us_per_event": round((delta.cpu_us - idle) / events, 3),
        "idle_us_per_event": round(idle / events, 3),  # subtracted from the two figures around it
        "main_thread_us_per_event": round((delta.main_us - idle) / events, 3),
        "aof_rewrite_us_per_event": round(delta.children_us / events, 3),
        "commands": {
            name: {"calls_per_event": round(calls / events, 4), "us_per_event": round(usec / events, 3)}
            for name, (calls, usec) in ranked
        },
    }


def totals(edge: dict[str, Any], workers: dict[str, Any]) -> dict[str, float]:
    """The whole pipeline's server CPU per event from its two stages, and what one core sustains."""
    total = round(edge["us_per_event"] + workers["us_per_event"], 3)
    return {"total_us_per_event": total, "events_per_core": round(events_per_core(total))}


def script_calls(delta: ServerDelta) -> int:
    """Script calls in an interval: at the edge, one per group-committed write."""
    return sum(delta.commands.get(name, (0, 0))[0] for name in SCRIPT_COMMANDS)


# -- the load ---------------------------------------------------------------------------------------


def single_template() -> bytes:
    return msgspec.json.encode(V2_EXAMPLE).replace(b'"c0ffee-1"', b'"' + ID_MARK + b'"')


def batch_event_template(size: int = BATCH_EVENT_BYTES) -> bytes:
    """One v2 event of about `size` bytes (as in `bench batch`) with its id left to fill in."""
    event = msgspec.json.encode({**V2_EXAMPLE, "note": ""}).replace(b'"c0ffee-1"', b'"' + ID_MARK + b'"')
    return event.replace(b'"note":""', b'"note":"' + b"x" * max(size - len(event), 0) + b'"')


def body_maker(kind: str, tag: str) -> tuple[str, int, Callable[[int], bytes]]:
    """(route, events per request, body of request i); every event has an id of its own, so the
    workers deduplicate, fan out and deliver every one (a repeated id would be dropped as a duplicate)."""
    if kind == "single":
        template = single_template()
        return "/events", 1, lambda i: template.replace(ID_MARK, f"{tag}-{i}".encode())
    event = batch_event_template()

    def batch(i: int) -> bytes:
        first = i * BATCH_EVENTS
        ids = range(first, first + BATCH_EVENTS)
        return b'{"batch":[' + b",".join(event.replace(ID_MARK, f"{tag}-{n}".encode()) for n in ids) + b"]}"

    return "/events/batch", BATCH_EVENTS, batch


def sample(connection: Redis) -> ServerSample:
    at = time.monotonic()
    return parse_sample(connection.info("cpu"), connection.info("commandstats"), at)


def _load(url: str, body_for: Callable[[int], bytes], duration: float) -> Any:
    from tooling.loadgen import run_load

    return asyncio.run(run_load(url, body_for, connections=CONNECTIONS, duration=duration))


def _processed(connection: Redis, layout: KeyLayout) -> int:
    return sum(int(n) for n in connection.hvals(layout.source_stats("bench-web")))


def _delivered(connection: Redis, layout: KeyLayout) -> int:
    hour = time.time_ns() // 1_000_000 // 3_600_000
    keys = [layout.destination_hour_stats("bench-file", h) for h in (hour - 1, hour)]
    return sum(int(connection.hget(key, "delivered") or 0) for key in keys)


@contextmanager
def _workers(config_file: Path) -> Iterator[None]:
    procs = []
    try:
        for queues in WORKER_QUEUES:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "commands", "worker", "--config", str(config_file), "--queues", queues],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # stop_worker stops the worker's whole group
                )
            )
        yield
    finally:
        for proc in procs:
            stop_worker(proc)


def _ingest_jobs_done(connection: Redis, layout: KeyLayout) -> int:
    """Jobs the running ingest workers finished (RQ's count in each worker's hash)."""
    done = 0
    for key in connection.smembers(f"{layout.rq_prefix}:workers"):
        queues, count = connection.hmget(key, "queues", "successful_job_count")
        if queues is not None and b"ingest" in queues.split(b","):
            done += int(count or 0)
    return done


def _wait_done(connection: Redis, layout: KeyLayout, events: int, timeout: float) -> None:
    """Until every event was processed by the ingest worker and delivered to the file."""

    def done() -> bool:
        return _processed(connection, layout) >= events and _delivered(connection, layout) >= events

    poll_until(
        done,
        timeout,
        lambda: (
            f"bench redis: {events} events stored but {_processed(connection, layout)} processed "
            f"and {_delivered(connection, layout)} delivered"
        ),
        interval=0.1,
    )


# -- the stages -------------------------------------------------------------------------------------


class Setup(msgspec.Struct):
    connection: Redis
    layout: KeyLayout
    config_file: Path
    edge_base: str
    duration: float
    idle: float = 0.0  # the server's idle CPU, µs per second


def _edge_stage(setup: Setup, kind: str, tag: str) -> tuple[dict[str, Any], int]:
    """The edge alone under load; its figures and the events it stored."""
    route, per_request, body_for = body_maker(kind, tag)
    before = sample(setup.connection)
    result = _load(f"{setup.edge_base}{route}?tc_s={BENCH_SITE}&token={BENCH_KEY}", body_for, setup.duration)
    after = sample(setup.connection)
    delta = difference(before, after)
    stored = _stored_events(setup.connection)  # after the sample: reading them back costs the server too
    answered = result.ok * per_request
    if stored < answered or stored == 0:
        raise RuntimeError(f"bench redis: {answered} events answered 200 but {stored} stored")
    figures = stage_figures(delta, stored, setup.idle)
    writes = script_calls(delta)
    figures["events_per_write"] = round(stored / writes, 1) if writes else None
    figures["events_per_second"] = round(answered / result.seconds) if result.seconds else 0
    figures["not_200"] = result.sent - result.ok
    return figures, stored


def _worker_stage(setup: Setup, events: int) -> dict[str, Any]:
    """Workers drain what the edge stage stored (every job is there before they start)."""
    jobs = setup.connection.llen(setup.layout.queue("ingest"))
    before = sample(setup.connection)
    started = time.perf_counter()
    with _workers(setup.config_file):
        _wait_done(setup.connection, setup.layout, events, timeout=120 + events / 1_000)
        seconds = time.perf_counter() - started
        after = sample(setup.connection)
    figures = stage_figures(difference(before, after), events, setup.idle)
    figures["events_per_ingest_job"] = round(events / jobs, 1) if jobs else None
    figures["seconds"] = round(seconds, 2)
    return figures


def _together_stage(setup: Setup, kind: str, tag: str) -> dict[str, Any]:
    """Edge and workers at once: jobs as large as a live pipeline makes them at this load."""
    route, per_request, body_for = body_maker(kind, tag)
    with _workers(setup.config_file):
        before = sample(setup.connection)
        url = f"{setup.edge_base}{route}?tc_s={BENCH_SITE}&token={BENCH_KEY}"
        result = _load(url, body_for, setup.duration)
        answered = result.ok * per_request
        _wait_done(setup.connection, setup.layout, answered, timeout=120 + answered / 1_000)
        after = sample(setup.connection)
        jobs = _ingest_jobs_done(setup.connection, setup.layout)
    events = _processed(setup.connection, setup.layout)
    figures = stage_figures(difference(before, after), events, setup.idle)
    figures["events_per_ingest_job"] = round(events / jobs, 1) if jobs else None
    figures["events_per_core"] = round(events_per_core(figures["us_per_event"]))
    figures["events_per_second"] = round(answered / result.seconds) if result.seconds else 0
    return figures


def _write_config(path: Path, redis_url: str, min_replicas: int = 0) -> Path:
    path.write_text(
        CAPACITY_CONFIG.format(
            redis_url=redis_url, min_replicas=min_replicas, site=BENCH_SITE, key=BENCH_KEY, out_dir=path.parent / "out"
        )
    )
    return path


def measure_pipeline(duration: float, together: bool = True) -> dict[str, Any]:
    """Server CPU per event of the edge and of the workers, per kind and fsync policy, on one server."""
    runs: dict[str, Any] = {}
    with bench_server() as (connection, url, tmp):
        config_file = _write_config(tmp / "capacity.toml", url)
        port = free_port()
        edge = _start(["commands", "edge", "--config", str(config_file), "--port", str(port)], port)
        try:
            setup = Setup(connection, KeyLayout(), config_file, f"http://127.0.0.1:{port}", duration)
            idle_before = sample(connection)
            time.sleep(1.0)
            setup.idle = idle_rate(difference(idle_before, sample(connection)))
            for kind in KINDS:
                runs[kind] = {}
                for n, policy in enumerate(POLICIES):
                    connection.config_set("appendfsync", policy)
                    edge_figures, stored = _edge_stage(setup, kind, f"{kind}-{policy}")
                    worker_figures = _worker_stage(setup, stored)
                    runs[kind][policy] = {"edge": edge_figures, "workers": worker_figures}
                    runs[kind][policy].update(totals(edge_figures, worker_figures))
                    connection.flushall()
                    if together and n == 0:  # at the default policy
                        runs[kind]["together"] = _together_stage(setup, kind, f"{kind}-together")
                        connection.flushall()
            connection.config_set("appendfsync", POLICIES[0])
        finally:
            _stop(edge)
    return {"idle_server_cpu_us_per_second": round(setup.idle), "runs": runs}


def measure_waitaof(duration: float, kinds: tuple[str, ...] = KINDS, rounds: int = 2) -> dict[str, Any]:
    """The edge with min_replicas 0 and 1 against one primary with one replica (both at appendfsync
    always, three sentinels watching), in alternating rounds: server CPU per event on the primary
    (and the replica) and the edge's rate."""
    from tooling.replicated import replicated

    out: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="trackpipe-bench-") as tmp,
        replicated(Path(tmp) / "replicated", appendonly=True) as layout,
    ):
        primary, replica = layout.client(layout.primary_port), layout.client(layout.replica_port)
        for server in (primary, replica):
            server.config_set("appendfsync", "always")
        url = f"redis://127.0.0.1:{layout.primary_port}/0"
        edges, bases = [], {}
        try:
            for n in (0, 1):
                edge_dir = Path(tmp) / f"edge{n}"
                edge_dir.mkdir()
                config_file = _write_config(edge_dir / "capacity.toml", url, min_replicas=n)
                port = free_port()
                edges.append(_start(["commands", "edge", "--config", str(config_file), "--port", str(port)], port))
                bases[n] = f"http://127.0.0.1:{port}"
            idle = [sample(primary), sample(replica)]
            time.sleep(1.0)
            idle_primary = idle_rate(difference(idle[0], sample(primary)))
            idle_replica = idle_rate(difference(idle[1], sample(replica)))
            out["round_trip_ms"] = _round_trips(primary)
            round_seconds = max(duration / rounds, 0.5)
            for kind in kinds:
                got: dict[int, dict[str, Any]] = {
                    n: {"primary": [], "replica": [], "events": 0, "answered": 0, "seconds": 0.0, "writes": 0}
                    for n in (0, 1)
                }
                for r in range(rounds):
                    for n in (0, 1) if r % 2 == 0 else (1, 0):
                        route, per_request, body_for = body_maker(kind, f"{kind}-r{n}-{r}")
                        before = (sample(primary), sample(replica))
                        url = f"{bases[n]}{route}?tc_s={BENCH_SITE}&token={BENCH_KEY}"
                        result = _load(url, body_for, round_seconds)
                        # The replica may still be applying the stream: let it finish before reading it.
                        time.sleep(0.3)
                        after = (sample(primary), sample(replica))
                        stored = _stored_events(primary)
                        primary.flushall()
                        figures = got[n]
                        figures["primary"].append(difference(before[0], after[0]))
                        figures["replica"].append(difference(before[1], after[1]))
                        figures["events"] += stored
                        figures["answered"] += result.ok * per_request
                        figures["seconds"] += result.seconds
                        figures["writes"] += script_calls(figures["primary"][-1])
                out[kind] = _waitaof_figures(got, idle_primary, idle_replica)
        finally:
            for edge in edges:
                _stop(edge)
            primary.close()
            replica.close()
    return out


def _round_trips(primary: Redis, times: int = 5) -> dict[str, float]:
    """Median ms of one write alone, followed by WAIT 1, by one WAITAOF 1 1, and by WAITAOF 1 1 in
    slices as trackpipe sends it (trackpipe.replication.WAIT_SLICE_MS): what a group-committed write
    waits for, whatever its size."""
    from trackpipe.replication import ReplicaWait, SettlePipeline

    key = f"{KeyLayout().prefix}:bench:probe"
    out = {}
    waits = (("write", None), ("write_wait", ("WAIT", 1, 5000)), ("write_waitaof_one_call", ("WAITAOF", 1, 1, 5000)))
    for name, wait in waits:
        took = []
        for _ in range(times):
            started = time.perf_counter()
            pipe = primary.pipeline(transaction=False)
            pipe.rpush(key, b"x")
            if wait:
                pipe.execute_command(*wait)
            pipe.execute()
            took.append((time.perf_counter() - started) * 1000)
        out[name] = round(sorted(took)[len(took) // 2], 2)
    took = []
    for _ in range(times):
        started = time.perf_counter()
        pipe = SettlePipeline(primary, ReplicaWait(1, 5000))
        pipe.rpush(key, b"x")
        pipe.execute()
        took.append((time.perf_counter() - started) * 1000)
    out["write_wait_then_waitaof"] = round(sorted(took)[len(took) // 2], 2)
    primary.delete(key)
    return out


def _waitaof_figures(got: dict[int, dict[str, Any]], idle_primary: float, idle_replica: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for n, figures in got.items():
        if figures["events"] < figures["answered"] or figures["events"] == 0:
            raise RuntimeError(
                f"bench redis: min_replicas {n}: {figures['answered']} events answered 200 "
                f"but {figures['events']} stored"
            )
        primary = stage_figures(combined(figures["primary"]), figures["events"], idle_primary)
        replica = stage_figures(combined(figures["replica"]), figures["events"], idle_replica, top=0)
        result[f"min_replicas_{n}"] = {
            "primary_us_per_event": primary["us_per_event"],
            "primary_main_thread_us_per_event": primary["main_thread_us_per_event"],
            "primary_idle_us_per_event": primary["idle_us_per_event"],
            "replica_us_per_event": replica["us_per_event"],
            "events_per_write": round(figures["events"] / figures["writes"], 1) if figures["writes"] else None,
            "events_per_second": round(figures["answered"] / figures["seconds"]) if figures["seconds"] else 0,
            "events": figures["events"],
            "commands": primary["commands"],
        }
    without, with_wait = result["min_replicas_0"], result["min_replicas_1"]
    base = without["primary_us_per_event"]
    result["cpu_ratio"] = round(with_wait["primary_us_per_event"] / base, 3) if base else 0.0
    rate = without["events_per_second"]
    result["rate_ratio"] = round(with_wait["events_per_second"] / rate, 3) if rate else 0.0
    return result


# -- the measurement --------------------------------------------------------------------------------


def headline(pipeline: dict[str, Any], waitaof: dict[str, Any] | None) -> dict[str, float]:
    """The figures `bench redis --json` shows at its top level (the rest is in `detail`)."""
    runs = pipeline["runs"]
    figures: dict[str, float] = {}
    for kind in KINDS:
        for policy in POLICIES:
            run = runs[kind][policy]
            figures[f"{kind}_{policy}_edge_us_per_event"] = run["edge"]["us_per_event"]
            figures[f"{kind}_{policy}_workers_us_per_event"] = run["workers"]["us_per_event"]
            figures[f"{kind}_{policy}_total_us_per_event"] = run["total_us_per_event"]
            figures[f"{kind}_{policy}_events_per_core"] = run["events_per_core"]
        if "together" in runs[kind]:
            figures[f"{kind}_together_us_per_event"] = runs[kind]["together"]["us_per_event"]
    for name, ms in (waitaof or {}).get("round_trip_ms", {}).items():
        figures[f"{name}_ms"] = ms
    for kind, wait in (waitaof or {}).items():
        if kind not in KINDS:
            continue
        figures[f"{kind}_waitaof_cpu_ratio"] = wait["cpu_ratio"]
        figures[f"{kind}_waitaof_rate_ratio"] = wait["rate_ratio"]
    return figures


def bench_redis(duration: float = 5.0, waitaof: bool = True) -> Measurement:
    """Value: events/s one primary core sustains for single events at appendfsync always (the
    default); baseline: the same for batches of 100 (ratio single ÷ batch)."""
    pipeline = measure_pipeline(duration)
    waits = measure_waitaof(duration) if waitaof else None
    figures = headline(pipeline, waits)
    single, batch = figures["single_always_events_per_core"], figures["batch_always_events_per_core"]
    detail = {
        "cpu": "used_cpu_sys + used_cpu_user of the valkey-server process (INFO cpu), per event stored",
        "split": "stages run separately: the edge alone under load, then the workers draining what it stored",
        "connections": CONNECTIONS,
        "generator": "builtin",
        "events_per_batch": BATCH_EVENTS,
        "seconds_of_load_per_stage": duration,
        "cpus": os.cpu_count(),
        **pipeline,
        "waitaof": waits,
    }
    return Measurement(single, batch, round(single / batch, 3) if batch else 0.0, "events/s per core", detail, figures)
