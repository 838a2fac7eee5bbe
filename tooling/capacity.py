"""`trackpipe bench capacity`: the highest rate the whole pipeline holds on this machine.

Everything runs here, on the same cores: an embedded valkey (AOF, `appendfsync always`), the edge
(`--edges N` processes), RQ workers (one per role: ingest and each destination's queues, or
`--shared-workers N` on every queue), a webhook receiver in its own process, a `file` destination,
and the load generator in its own process. The offered rate goes up step by step (doubling from
`--start-rate` while every step kept up, then bisecting between the highest rate held and the
lowest not held above it). Each step offers a fixed schedule of `rate * duration` requests, every event with an id
of its own; an event's latency is its arrival at the webhook receiver minus its request's due time
on that schedule, so a generator falling behind adds to the latency instead of hiding it.

A step is held when, over the whole step: p99 latency < 250 ms, every request answered 200, every
accepted event at both destinations exactly once (ids counted at the receiver and in the file),
and no queue's backlog growing over the step's last half. Between steps the pipeline drains.

CPU per process comes from `/proc/<pid>/stat` (utime + stime, the process and its children) over
the step's load; the load generator reports its own.

`python -m tooling.capacity sink|generate ...` are the receiver's and the generator's processes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec

from tooling.bench import BENCH_KEY, BENCH_SITE, E2E_CONFIG
from tooling.loadgen import Lateness, percentile

HOLD_P99_MS = 250.0
# Bisecting stops once the lowest rate not held is within this factor of the highest held.
PRECISION = 0.10
# A queue grows when its waiting parts rise by more than this (and by more than half their mean
# level) over the step's last half, on a least-squares line through the samples.
GROWTH_FLOOR = 20
SAMPLE_SECONDS = 0.25
CONNECTIONS = 64

# The e2e bench's pipeline: one source, a file and a webhook destination.
SITE, KEY = BENCH_SITE, BENCH_KEY
HOOK = "bench-hook"
FILE = "bench-file"
CONFIG = E2E_CONFIG


# ---------------------------------------------------------------- pure step logic


class ProcessCpu(msgspec.Struct):
    seconds: float  # CPU seconds over the step's load
    cores: float  # seconds ÷ wall seconds: how many cores it kept busy
    share: float  # of all the CPU the processes used
    # Time runnable but waiting for a core (/proc/<pid>/task/*/schedstat), per wall second: what
    # other processes on the same cores (ours or anyone's) cost this one in latency.
    waiting: float = 0.0
    us_per_event: float = 0.0  # CPU microseconds per event accepted in the step


class StepResult(msgspec.Struct, omit_defaults=True):
    requests_per_second: float  # offered
    events_per_second: float  # offered
    held: bool
    why_not: list[str]
    # Kept up, whatever the latency: every request answered 200, nothing lost or repeated, no
    # backlog growing. The gap between this and `held` is latency, not throughput.
    sustained: bool
    scheduled: int
    answered_200: int
    statuses: dict[int, int]
    accepted_events: int
    webhook_received: int
    file_received: int
    lost: int  # accepted but missing at a destination once the step drained (or its wait ran out)
    duplicates: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    generator_lateness: Lateness
    backlog_growing: list[str]  # queues whose backlog grew over the step's last half
    backlog_peak: dict[str, int]  # most parts waiting per queue during the step
    seconds: float  # wall seconds of the step's load
    cpu: dict[str, ProcessCpu]
    machine_busy: float = 0.0  # all CPU used / (wall * cores)
    # CPU microseconds per accepted event, all processes together: 10^6 * cores / this is the most
    # events/s the pipeline could carry on `cores` cores of its own.
    us_per_event: float = 0.0


class CapacityReport(msgspec.Struct):
    events_per_request: int
    duration: int
    appendfsync: str
    layout: str
    held_requests_per_second: float  # 0 when no step was held
    held_events_per_second: float
    sustained_requests_per_second: float  # the highest step kept up with, p99 aside (0: none)
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    cpu: dict[str, ProcessCpu]  # at the highest held step
    steps: list[StepResult]
    # The machine's 1-minute load average when the steps began and ended: other work on the same
    # cores (which the per-process CPU does not show) drags every figure down.
    load_average: list[float]
    target_events_per_second: float
    met: bool


def why_not_held(
    *,
    p99_ms: float | None,
    scheduled: int,
    answered_200: int,
    lost: int,
    duplicates: int,
    growing: Sequence[str],
    late_p99_ms: float = 0.0,
) -> list[str]:
    """Every reason the step was not held (empty: held). `late_p99_ms`: the generator's p99 send
    lateness; past the latency bound the edge was not taking requests as fast as they were offered."""
    reasons = []
    if p99_ms is None:
        reasons.append("no event arrived")
    elif p99_ms >= HOLD_P99_MS:
        reasons.append(f"p99 {p99_ms:.0f} ms >= {HOLD_P99_MS:.0f} ms")
    if answered_200 < scheduled:
        reasons.append(f"{scheduled - answered_200} of {scheduled} requests not answered 200")
    if lost:
        reasons.append(f"{lost} accepted events missing at a destination")
    if duplicates:
        reasons.append(f"{duplicates} events delivered twice")
    if growing:
        reasons.append(f"backlog growing: {', '.join(growing)}")
    if late_p99_ms >= HOLD_P99_MS:
        reasons.append(f"requests sent late (p99 {late_p99_ms:.0f} ms): the edge was not keeping up")
    return reasons


def next_rate(steps: Sequence[tuple[float, bool, bool]], precision: float = PRECISION) -> float | None:
    """The next offered rate after `steps` of (rate, held, kept up). Latency is not monotonic in the
    rate (at low rates jobs are small and each pays RQ's whole fixed cost), so the rate doubles for
    as long as every step kept up, held or not; then it bisects between the highest rate held and
    the lowest rate above it not held (halving below the lowest not held while nothing is held).
    None once the two are within `precision`, or below one request/s."""
    if all(kept for _, _, kept in steps):
        return max(rate for rate, _, _ in steps) * 2
    held = [rate for rate, ok, _ in steps if ok]
    floor = max(held) if held else 0.0
    above = [rate for rate, ok, _ in steps if not ok and rate > floor]
    if not above:
        return None  # the highest held is above every failure: nothing left between them
    ceiling = min(above)
    if floor and ceiling <= floor * (1 + precision):
        return None
    candidate = (floor + ceiling) / 2 if floor else ceiling / 2
    if candidate < 1:
        return None
    return float(round(candidate)) if candidate >= 10 else round(candidate, 1)


def growing(samples: Sequence[tuple[float, int]], floor: int = GROWTH_FLOOR) -> bool:
    """Whether a backlog sampled as (seconds, waiting parts) grew over the last half of the samples'
    span: the rise of the least-squares line through that half beyond `floor` and half its mean."""
    if len(samples) < 2:
        return False
    start, end = samples[0][0], samples[-1][0]
    half = [(t, v) for t, v in samples if t >= start + (end - start) / 2]
    if len(half) < 3:
        return False
    n = len(half)
    mean_t = sum(t for t, _ in half) / n
    mean_v = sum(v for _, v in half) / n
    spread = sum((t - mean_t) ** 2 for t, _ in half)
    if spread == 0:
        return False
    slope = sum((t - mean_t) * (v - mean_v) for t, v in half) / spread
    rise = slope * (half[-1][0] - half[0][0])
    return rise > max(floor, mean_v / 2)


def cpu_shares(
    before: dict[str, float],
    after: dict[str, float],
    wall_seconds: float,
    waited: dict[str, float] | None = None,
    events: int = 0,
) -> tuple[dict[str, ProcessCpu], float]:
    """CPU seconds per process between two readings, as cores kept busy and shares of the whole;
    also the total in cores. A process missing from either reading counts nothing. `waited`:
    seconds each process spent runnable but without a core over the same span."""
    waited = waited or {}
    used = {name: max(0.0, after[name] - before[name]) for name in after if name in before}
    total = sum(used.values())
    shares = {
        name: ProcessCpu(
            seconds=round(seconds, 3),
            cores=round(seconds / wall_seconds, 3) if wall_seconds > 0 else 0.0,
            share=round(seconds / total, 3) if total > 0 else 0.0,
            waiting=round(waited.get(name, 0.0) / wall_seconds, 3) if wall_seconds > 0 else 0.0,
            us_per_event=round(seconds * 1e6 / events, 2) if events else 0.0,
        )
        for name, seconds in used.items()
    }
    return shares, (total / wall_seconds if wall_seconds > 0 else 0.0)


def event_latencies(arrivals: dict[int, float], start_wall: float, rate: float, events_per_request: int) -> list[float]:
    """Seconds from each arrived event's due time (its request's: `start + request / rate`) to its
    arrival; `arrivals` maps event number (request * events_per_request + index) to arrival time."""
    return [at - (start_wall + (n // events_per_request) / rate) for n, at in arrivals.items()]


# ---------------------------------------------------------------- processes and /proc

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...


def _waited_seconds(pid: int) -> float:
    """Seconds the threads of `pid` have spent runnable, waiting for a core."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def tree_times(pid: int) -> tuple[float, float]:
    """CPU seconds (utime + stime) of `pid` and every live descendant (uvicorn's worker
    processes, RQ's scheduler), and the seconds their threads waited for a core."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, waited, todo = 0, 0.0, [pid]
    while todo:
        current = todo.pop()
        fields = _stat_fields(current)
        if fields:
            total += int(fields[11]) + int(fields[12])
            waited += _waited_seconds(current)
        todo.extend(children.get(current, []))
    return total / TICKS, waited


def _python(*args: str, **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], **kwargs)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- reading what arrived


class _Arrivals:
    """Event arrivals at the receiver (over HTTP) and in the file, read incrementally."""

    def __init__(self, sink_url: str, out_dir: Path) -> None:
        self.sink_url = sink_url
        self.out_dir = out_dir
        self.sink_seen = 0
        self.file_offsets: dict[Path, int] = {}
        self.hook: dict[str, dict[int, float]] = {}  # tag -> event number -> first arrival
        self.file: dict[str, Counter[int]] = {}
        self.hook_duplicates: Counter[str] = Counter()

    @staticmethod
    def _split(event_id: str) -> tuple[str, int] | None:
        tag, _, number = event_id.rpartition("-")
        return (tag, int(number)) if tag and number.isdigit() else None

    def poll(self) -> None:
        reply = httpx.get(f"{self.sink_url}/arrivals", params={"from": self.sink_seen}, timeout=30)
        lines = reply.text.splitlines()
        self.sink_seen += len(lines)
        for line in lines:
            event_id, _, at = line.rpartition(" ")
            found = self._split(event_id)
            if found is None:
                continue
            seen = self.hook.setdefault(found[0], {})
            if found[1] in seen:
                self.hook_duplicates[found[0]] += 1
            else:
                seen[found[1]] = float(at)
        from tooling.harness import line_event_id

        for path in sorted(self.out_dir.glob("*.jsonl")) if self.out_dir.exists() else []:
            offset = self.file_offsets.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            end = data.rfind(b"\n") + 1  # whole lines only: a write may be under way
            self.file_offsets[path] = offset + end
            for line in data[:end].splitlines():
                event_id = line_event_id(line)
                found = self._split(event_id) if event_id else None
                if found is not None:
                    self.file.setdefault(found[0], Counter())[found[1]] += 1


# ---------------------------------------------------------------- the run


class _Pipeline:
    def __init__(self, tmp: Path, redis_url: str, edges: int, ingest_workers: int, shared_workers: int) -> None:
        from tooling.harness import free_port

        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        sink_port, self.port = free_port(), free_port()
        self.sink_url = f"http://127.0.0.1:{sink_port}"
        config_file = tmp / "capacity.toml"
        config_file.write_text(
            CONFIG.format(redis_url=redis_url, out_dir=tmp / "out", hook_url=f"{self.sink_url}/hook")
        )
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.procs["receiver"] = _python(
            "tooling.capacity", "sink", "--port", str(sink_port), "--out", str(tmp / "arrivals.txt"), **quiet
        )
        config = ["--config", str(config_file)]
        self.procs["edge"] = _python(
            "commands", "edge", *config, "--port", str(self.port), "--workers", str(edges), **quiet
        )
        hook_queues, file_queues = f"deliver:{HOOK},retry:{HOOK}", f"deliver:{FILE},retry:{FILE}"
        if shared_workers:
            for i in range(shared_workers):
                self.procs[f"worker all #{i + 1}"] = _python("commands", "worker", *config, "--queues", "all", **quiet)
            self.layout = f"{edges} edge process(es); {shared_workers} worker(s) on every queue"
        else:
            for i in range(ingest_workers):
                name = "worker ingest" + (f" #{i + 1}" if ingest_workers > 1 else "")
                self.procs[name] = _python("commands", "worker", *config, "--queues", "ingest", **quiet)
            self.procs[f"worker {HOOK}"] = _python("commands", "worker", *config, "--queues", hook_queues, **quiet)
            self.procs[f"worker {FILE}"] = _python("commands", "worker", *config, "--queues", file_queues, **quiet)
            self.layout = (
                f"{edges} edge process(es); workers: {ingest_workers} ingest, 1 per destination ({HOOK}, {FILE})"
            )

    def wait_ready(self) -> None:
        from tooling.harness import wait_http

        wait_http(f"{self.sink_url}/healthz", proc=self.procs["receiver"])
        wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout=30, proc=self.procs["edge"])

    def stop(self) -> None:
        # The edge first (nothing new comes in), the workers, the receiver last.
        order = ["edge", *[n for n in self.procs if n.startswith("worker")], "receiver"]
        for name in order:
            _stop([self.procs[name]])


def _backlog(connection: Any, layout: Any, queues: list[str]) -> dict[str, int]:
    """Parts waiting in each queue's waiting jobs (an edge write or a fan-out is one part)."""
    pipe = connection.pipeline(transaction=False)
    for queue in queues:
        pipe.lrange(layout.queue(queue), 0, 499)
    job_lists = pipe.execute()
    pipe = connection.pipeline(transaction=False)
    for jobs in job_lists:
        for job in jobs:
            pipe.llen(layout.job_parts(job.decode()))
    counts = iter(pipe.execute())
    return {queue: sum(next(counts) for _ in jobs) for queue, jobs in zip(queues, job_lists, strict=True)}


def _run_step(
    pipeline: _Pipeline,
    arrivals: _Arrivals,
    connection: Any,
    server_pid: int,
    tag: str,
    rate: float,
    duration: int,
    events_per_request: int,
) -> StepResult:
    from trackpipe.keys import KeyLayout

    layout = KeyLayout()
    queues = ["ingest", f"deliver:{HOOK}", f"deliver:{FILE}"]
    out = pipeline.tmp / f"{tag}.json"
    pids = {name: proc.pid for name, proc in pipeline.procs.items()}
    pids["valkey"] = server_pid

    def readings() -> tuple[dict[str, float], dict[str, float]]:
        found = {name: tree_times(pid) for name, pid in pids.items()}
        found["controller"] = (time.process_time(), _waited_seconds(os.getpid()))
        return {n: cpu for n, (cpu, _) in found.items()}, {n: wait for n, (_, wait) in found.items()}

    generator = _python(
        "tooling.capacity",
        "generate",
        "--url",
        f"http://127.0.0.1:{pipeline.port}/events{'/batch' if events_per_request > 1 else ''}?tc_s={SITE}&token={KEY}",
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--events-per-request",
        str(events_per_request),
        "--tag",
        tag,
        "--out",
        str(out),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert generator.stdout is not None
    if generator.stdout.readline().strip() != "go":
        generator.wait()
        raise RuntimeError(f"bench capacity: the load generator did not start (exit {generator.returncode})")
    (before, waits_before), started = readings(), time.monotonic()
    samples: dict[str, list[tuple[float, int]]] = {q: [] for q in queues}
    while generator.poll() is None:
        now = time.monotonic() - started
        if now <= duration:  # the backlog over the schedule, not over the generator's tail
            for queue, parts in _backlog(connection, layout, queues).items():
                samples[queue].append((now, parts))
        time.sleep(SAMPLE_SECONDS)
    (after, waits_after), wall = readings(), time.monotonic() - started
    if generator.returncode != 0:
        raise RuntimeError(f"bench capacity: the load generator exited with {generator.returncode}")
    result = msgspec.json.decode(out.read_bytes())
    result_cpu = result["cpu_seconds"]
    before["load generator"], after["load generator"] = 0.0, result_cpu
    waited = {n: waits_after[n] - waits_before[n] for n in waits_after if n in waits_before}
    waited["load generator"] = result["waited_seconds"]
    accepted = {r * events_per_request + i for r in result["ok_numbers"] for i in range(events_per_request)}
    cpu, busy_cores = cpu_shares(before, after, wall, waited, len(accepted))
    drain_seconds = max(60.0, 3.0 * duration)
    deadline = time.monotonic() + drain_seconds
    while True:
        arrivals.poll()
        hook = arrivals.hook.get(tag, {})
        in_file = arrivals.file.get(tag, Counter())
        if (len(accepted & hook.keys()) == len(accepted) and len(accepted & in_file.keys()) == len(accepted)) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    hook = {n: at for n, at in hook.items() if n in accepted}
    lost = (len(accepted) - len(hook)) + len(accepted - in_file.keys())
    duplicates = arrivals.hook_duplicates[tag] + sum(c - 1 for c in in_file.values() if c > 1)
    latencies = event_latencies(hook, result["start_wall"], rate, events_per_request) if hook else []
    growing_queues = [q for q, s in samples.items() if growing(s)]
    answered_200 = result["statuses"].get("200", 0)
    p50, p99 = (percentile(latencies, q) * 1000 for q in (0.5, 0.99)) if latencies else (None, None)
    why = functools.partial(
        why_not_held,
        scheduled=result["scheduled"],
        answered_200=answered_200,
        lost=lost,
        duplicates=duplicates,
        growing=growing_queues,
        late_p99_ms=result["lateness"]["p99_ms"],
    )
    return StepResult(
        requests_per_second=rate,
        events_per_second=rate * events_per_request,
        held=False,
        sustained=not why(p99_ms=0.0),  # everything but the latency bound
        why_not=why(p99_ms=p99),
        scheduled=result["scheduled"],
        answered_200=answered_200,
        statuses={int(k): v for k, v in result["statuses"].items()},
        accepted_events=len(accepted),
        webhook_received=len(hook),
        file_received=len(accepted & in_file.keys()),
        lost=lost,
        duplicates=duplicates,
        p50_ms=round(p50, 1) if p50 is not None else None,
        p99_ms=round(p99, 1) if p99 is not None else None,
        max_ms=round(max(latencies) * 1000, 1) if latencies else None,
        generator_lateness=msgspec.convert(result["lateness"], Lateness),
        backlog_growing=growing_queues,
        backlog_peak={q: max((v for _, v in s), default=0) for q, s in samples.items()},
        seconds=round(wall, 2),
        cpu=cpu,
        machine_busy=round(busy_cores / (os.cpu_count() or 1), 3),
        us_per_event=round(sum(c.us_per_event for c in cpu.values()), 1),
    )


def run_capacity(
    events_per_request: int = 1,
    duration: int = 10,
    *,
    start_rate: float | None = None,
    max_steps: int = 8,
    edges: int = 1,
    ingest_workers: int = 1,
    shared_workers: int = 0,
    progress: Callable[[str], None] | None = None,
) -> CapacityReport:
    """Raise the offered rate step by step until the highest rate held is found (see the module)."""
    from tooling.bench import bench_server

    rate = start_rate or max(1.0, 2000.0 / events_per_request)
    steps: list[StepResult] = []
    with bench_server() as (connection, url, tmp):
        fsync = str(connection.config_get("appendfsync")["appendfsync"])
        server_pid = int(connection.info("server")["process_id"])
        pipeline = _Pipeline(tmp, url, edges, ingest_workers, shared_workers)
        try:
            pipeline.wait_ready()
            arrivals = _Arrivals(pipeline.sink_url, tmp / "out")
            # Warm-up, not counted: the first jobs of fresh workers pay for imports, script loads and
            # connection set-up, which would otherwise land in the first step's p99.
            _run_step(pipeline, arrivals, connection, server_pid, "warm", rate, min(duration, 2), events_per_request)
            load_before = os.getloadavg()[0]
            for number in range(max_steps):
                step = _run_step(
                    pipeline, arrivals, connection, server_pid, f"s{number}", rate, duration, events_per_request
                )
                step.held = not step.why_not
                steps.append(step)
                if progress:
                    verdict = "held" if step.held else "not held: " + "; ".join(step.why_not)
                    progress(
                        f"{rate:g} requests/s ({step.events_per_second:g} events/s): p99 {step.p99_ms} ms, {verdict}"
                    )
                following = next_rate([(s.requests_per_second, s.held, s.sustained) for s in steps])
                if following is None:
                    break
                rate = following
        finally:
            pipeline.stop()
    held_steps = [s for s in steps if s.held]
    best = max(held_steps, key=lambda s: s.requests_per_second) if held_steps else None
    target = 8_000.0 if events_per_request == 1 else 40_000.0
    return CapacityReport(
        events_per_request=events_per_request,
        duration=duration,
        appendfsync=fsync,
        layout=pipeline.layout,
        held_requests_per_second=best.requests_per_second if best else 0.0,
        held_events_per_second=best.events_per_second if best else 0.0,
        sustained_requests_per_second=max((s.requests_per_second for s in steps if s.sustained), default=0.0),
        p50_ms=best.p50_ms if best else None,
        p99_ms=best.p99_ms if best else None,
        max_ms=best.max_ms if best else None,
        cpu=best.cpu if best else {},
        steps=steps,
        load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)],
        target_events_per_second=target,
        met=bool(best and best.events_per_second >= target),
    )


# ---------------------------------------------------------------- the receiver and the generator


def _sink_main(args: argparse.Namespace) -> None:
    from urllib.parse import parse_qs

    import uvicorn

    from ingest.protocol import UVICORN_SETTINGS
    from tooling.benchsink import Sink

    class ArrivalsSink(Sink):
        """The bench receiver, plus `GET /arrivals?from=N`: the arrivals from the N-th on."""

        async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
            if scope["type"] == "http" and scope["path"] == "/arrivals":
                start = int(parse_qs(scope["query_string"].decode()).get("from", ["0"])[0])
                body = "".join(f"{event_id} {at:.6f}\n" for event_id, at in self.arrivals[start:]).encode()
                headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await super().__call__(scope, receive, send)

    uvicorn.run(ArrivalsSink(args.out), host="127.0.0.1", port=args.port, log_level="warning", **UVICORN_SETTINGS)


def request_bodies(tag: str, events_per_request: int) -> Callable[[int], bytes]:
    """Request i's body: the contract's v2 example with event ids `<tag>-<n>`, n = i * size + index;
    one event to /events, else `{"batch": [...]}`."""
    from tooling.examples import V2_EXAMPLE

    event = msgspec.json.encode(V2_EXAMPLE).replace(b'"c0ffee-1"', b'"' + tag.encode() + b'-%d"')
    if events_per_request == 1:
        return lambda i: event % i

    def body(i: int) -> bytes:
        first = i * events_per_request
        return b'{"batch":[' + b",".join(event % n for n in range(first, first + events_per_request)) + b"]}"

    return body


def _generate_main(args: argparse.Namespace) -> None:
    from tooling.loadgen import run_load

    body_for = request_bodies(args.tag, args.events_per_request)
    # No cyclic garbage is made here, and a full collection over the run's growing dicts would stall
    # sends (it would show as lateness that is the generator's own).
    gc.disable()
    print("go", flush=True)
    cpu, waited = time.process_time(), _waited_seconds(os.getpid())
    result = asyncio.run(
        run_load(args.url, body_for, connections=args.connections, duration=args.duration, rate=args.rate)
    )
    cpu, waited = time.process_time() - cpu, _waited_seconds(os.getpid()) - waited
    args.out.write_bytes(
        msgspec.json.encode(
            {
                "scheduled": result.scheduled,
                "sent": result.sent,
                "statuses": result.statuses,
                "ok_numbers": result.ok_numbers,
                "start_wall": result.due_times.get(0, time.time()),
                "lateness": result.lateness,
                "seconds": result.seconds,
                "cpu_seconds": cpu,
                "waited_seconds": waited,
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="processes of `trackpipe bench capacity`")
    sub = parser.add_subparsers(dest="role", required=True)
    sink = sub.add_parser("sink", help="the webhook receiver")
    sink.add_argument("--port", type=int, required=True)
    sink.add_argument("--out", type=Path, required=True)
    generate = sub.add_parser("generate", help="one step's load")
    generate.add_argument("--url", required=True)
    generate.add_argument("--rate", type=float, required=True)
    generate.add_argument("--duration", type=float, required=True)
    generate.add_argument("--events-per-request", type=int, default=1)
    generate.add_argument("--tag", required=True)
    generate.add_argument("--connections", type=int, default=CONNECTIONS)
    generate.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.role == "sink":
        _sink_main(args)
    else:
        _generate_main(args)


if __name__ == "__main__":
    main()
