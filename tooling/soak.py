"""`trackpipe soak`: real load through the real pipeline while faults are injected; then proves that
every event answered 200 reached every destination it matches.

Runs on one machine: an embedded valkey (AOF, the durability settings of `tooling.embedded`), one
edge, a webhook receiver in this process and a `file` destination, and the workers of a layout:

- `roles`: an ingest worker and one worker per destination (`deliver:<id>,retry:<id>`), with a
  supervisor that restarts any worker that exits, as compose or systemd would;
- `all-queues`: two `trackpipe worker` processes with their default queues (every queue), which
  nothing restarts;
- `mixed` (the default): both at once.

A producer posts unique event ids at a steady rate: singles and batches of 10, v1 and v2. Faults,
at set points of the run:

- the ingest role is replaced by a worker armed to SIGKILL itself in the middle of an ingest job,
  three times;
- a delivery role is replaced by a worker armed to SIGKILL itself after the destination took the
  batch and before it settled it, three times: the re-run sends that batch again, so those events
  arrive twice and the report names them;
- the webhook answers 500 for a while, then recovers;
- the Redis server is stopped, then started again on its AOF, while the edge keeps receiving:
  meanwhile the edge must answer 503, never 200; later it is SIGKILLed and started again;
- the edge is stopped with SIGTERM and started again.

And throughout the load, at moments drawn from `seed`: SIGKILLs of random workers (just after one
took a job off its queue, while one runs a job, while one waits for work), and a burst on one
all-queue worker (killed and restarted three times, ~3 s apart). The second all-queue worker is never touched and never
restarted: if it dies on its own (say, when Redis goes away), the report shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from tooling.embedded import start_server
from tooling.harness import HookServer, Reply, file_ids, free_port, line_event_id, wait_http

SITE = "7"
KEY = "soak-key-0123456789abcdef"
HOOK, FILE = "soak-hook", "soak-file"
DESTINATIONS = (HOOK, FILE)
LAYOUTS = ("roles", "all-queues", "mixed")
# Every accepted event should be delivered within this long after the last fault.
RECOVERY_TARGET_SECONDS = 30.0
# The all-queue worker nothing restarts and no fault touches.
UNTOUCHED = "all-2"
# A batch a destination took while a fault hit its delivery job is sent again by the re-run: ids
# that arrived from this long before the fault until this long after it explain their repeats. A
# batch is in flight from its arrival until the answer is read (up to the webhook's 2 s read timeout)
# and its settlement is written, which a loaded machine can delay by a second or two more.
EXPLAIN_BEFORE, EXPLAIN_AFTER = 4.0, 1.0
# What a random kill waits for in its victim: a job running, no job, or a job just taken off its
# queue and not yet started (see Pipeline.kill).
WANTS = ("popped", "busy", "idle")

# Short worker timings: a killed job runs again within seconds. Without them (--default-timings) the
# workers run with the product's defaults.
FAST_TIMINGS = """
[worker]
ingest_timeout_seconds = 3
delivery_timeout_seconds = 4
abandoned_grace_seconds = 1
maintenance_interval_seconds = 1
"""
SOAK_CONFIG = """
redis_url = "{redis_url}"
[edge]
retry_after_seconds = 1
{edge_settings}
{worker_timings}
[[sources]]
id = "soak-web"
site_id = "{site}"
keys = ["{key}"]
{destinations}"""
# The webhook and the file destination (the sharded soak uses them too).
DESTINATIONS_CONFIG = """
[[destinations]]
id = "soak-hook"
type = "webhook"
url = "{hook_url}"
read_timeout_seconds = 2
[destinations.retry]
max_attempts = 1000
backoff_seconds = [1, 1, 2]
[[destinations]]
id = "soak-file"
type = "file"
path = "{out_dir}"
[destinations.retry]
max_attempts = 1000
backoff_seconds = [1, 1, 2]
"""


def soak_config(redis_url: str, hook_url: str, out_dir: Path, default_timings: bool, edge_settings: str = "") -> str:
    """The config of a soak run: one source, the webhook and the file destination."""
    return SOAK_CONFIG.format(
        redis_url=redis_url,
        edge_settings=edge_settings,
        site=SITE,
        key=KEY,
        destinations=DESTINATIONS_CONFIG.format(hook_url=hook_url, out_dir=out_dir),
        worker_timings="" if default_timings else FAST_TIMINGS,
    )


class FaultRecord(msgspec.Struct):
    at: float  # seconds since the load started
    fault: str
    detail: str = ""


class WorkerReport(msgspec.Struct):
    name: str
    layout: str  # "role" (its own queues, supervised) or "all-queues" (default queues)
    queues: str
    supervised: bool
    starts: int
    killed: int  # SIGKILLs the soak sent it (random and burst)
    fault_kills: int  # times it SIGKILLed itself at an armed fault point
    # Exit statuses of exits nobody caused (a worker that quit, e.g. when Redis went away).
    exited_on_its_own: list[int]
    alive_at_end: bool


class SoakReport(msgspec.Struct):
    seed: int  # `--seed` repeats the same choices of victims and moments
    layout: str
    timings: str  # "fast" (the soak's short worker timings) or "default" (the product's)
    server_appendfsync: str
    seconds: float
    requests: int
    statuses: dict[str, int]  # HTTP status, or "connection error"
    events_sent: int
    events_accepted: int  # answered 200
    delivered: dict[str, int]  # destination -> distinct accepted ids delivered
    lost: dict[str, int]  # destination -> accepted ids never delivered
    duplicates: dict[str, int]  # destination -> extra deliveries
    # Of those, ids that reached the destination while a fault hit a delivery job of theirs: a worker
    # serving the destination killed, or Redis stopping before the job could settle.
    duplicates_explained: dict[str, int]
    duplicates_unexplained: dict[str, int]
    unexplained_arrivals: dict[str, dict[str, list[float]]]
    # Failed sends per destination by kind: a timeout or dropped connection may also have reached
    # the destination (its answer was lost), which explains any further repeats.
    delivery_errors: dict[str, dict[str, int]]
    # Where undelivered ids sit in Redis (only when some are missing), to diagnose a loss.
    missing: dict[str, dict[str, list[str]]]
    unexpected_ids: dict[str, int]  # destination -> delivered ids nobody was answered 200 for
    ok_during_redis_outage: int  # 200s answered while the server was down (must be 0)
    # What each randomly killed worker was doing at the kill: "busy" (mid-job), "idle", ...
    kills_by_state: dict[str, int]
    workers: list[WorkerReport]
    last_fault_at: float  # seconds since the load started
    load_stopped_at: float
    # Per destination, the longest an accepted event waited for delivery counted from its 200 or
    # from the last fault, whichever came later: within the target, every event accepted before the
    # last fault was delivered that soon after it (None: some never arrived).
    recovery_seconds: dict[str, float | None]
    # Per destination, from the last fault until the last accepted event arrived (includes the load
    # that went on after the last fault).
    last_delivery_after_last_fault: dict[str, float | None]
    recovery_target_seconds: float
    drain_seconds: float  # from the end of the load until everything accepted was delivered
    faults: list[FaultRecord]
    ok: bool


Arrivals = list[tuple[float, list[str]]]  # (monotonic time seen, ids), in order


class Sink(HookServer):
    """The webhook receiver (the harness's): records every delivered id (with repeats) and when; can
    be told to fail (answers 500 meanwhile)."""

    def __init__(self) -> None:
        super().__init__(Reply(200))
        self._seen = 0  # requests decoded into _arrivals so far (the drain loop asks often)
        self._arrivals: Arrivals = []
        self._decode_lock = threading.Lock()
        self.start()

    @property
    def failing(self) -> bool:
        return self._next_reply().status != 200

    @failing.setter
    def failing(self, value: bool) -> None:
        self.script(Reply(500) if value else Reply(200))

    def arrivals(self) -> Arrivals:
        with self._decode_lock:
            requests = self.requests()
            for r in requests[self._seen :]:
                if r.status == 200:
                    ids = [e["context"]["event_id"] for e in msgspec.json.decode(r.body)["batch"]]
                    self._arrivals.append((r.at, ids))
            self._seen = len(requests)
            return list(self._arrivals)

    def ids(self) -> Counter[str]:
        return Counter(i for _, ids in self.arrivals() for i in ids)

    def close(self) -> None:
        self.stop()


class FileTail:
    """Follows the file destination's output as it grows and notes when each line appeared (to
    within the poll interval): the file's arrival times, as the webhook receiver keeps its own."""

    def __init__(self, out_dir: Path, interval: float = 0.2) -> None:
        self.out_dir = out_dir
        self.interval = interval
        self.torn_lines = 0  # lines cut by a writer killed mid-write (the next write starts afresh)
        self._offsets: dict[Path, int] = {}
        self._arrivals: Arrivals = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            seen = time.monotonic()
            ids: list[str] = []
            for path in sorted(self.out_dir.glob("*.jsonl")) if self.out_dir.exists() else []:
                offset = self._offsets.get(path, 0)
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
                end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
                self._offsets[path] = offset + end
                for line in data[:end].splitlines():
                    event_id = line_event_id(line)
                    if event_id is not None:
                        ids.append(event_id)
                    elif line.strip():
                        self.torn_lines += 1
            if ids:
                self._arrivals.append((seen, ids))

    def arrivals(self) -> Arrivals:
        with self._lock:
            return list(self._arrivals)

    def ids(self) -> Counter[str]:
        return Counter(i for _, ids in self.arrivals() for i in ids)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def first_arrivals(arrivals: Arrivals) -> dict[str, float]:
    first: dict[str, float] = {}
    for seen, ids in arrivals:
        for event_id in ids:
            first.setdefault(event_id, seen)
    return first


def arrived_between(arrivals: Arrivals, start: float, end: float) -> set[str]:
    return {i for seen, ids in arrivals if start <= seen <= end for i in ids}


def v2_event(event_id: str) -> bytes:
    return msgspec.json.encode({"event_name": "page_view", "context": {"event_id": event_id}, "page": "soak"})


def v1_event(event_id: str) -> bytes:
    return msgspec.json.encode({"event_name": "page_view", "event_id": event_id, "properties": {"page": "soak"}})


Answer = tuple[float, float, str]  # (monotonic time sent, time answered, HTTP status or "connection error")


class Producer:
    """Posts unique ids at a steady rate; remembers which ids were answered 200, and when."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.rate = rate
        self.sent = 0
        self.accepted: set[str] = set()
        self.statuses: Counter[str] = Counter()
        self.ok_times: list[float] = []  # monotonic time of each 200
        self.accepted_at: dict[str, float] = {}  # id -> monotonic time of its 200
        self.answers: list[Answer] = []  # every request: (sent, answered, status), in answer order
        self.stop = False
        self._n = 0

    def _request(self) -> tuple[str, bytes, list[str]]:
        """Every fourth request is a batch of 10; v1 and v2 alternate."""
        n = self._n
        self._n += 1
        make = v1_event if n % 2 else v2_event
        if n % 4 == 3:
            ids = [f"soak-{n}-{i}" for i in range(10)]
            return "/events/batch", b'{"batch":[' + b",".join(make(i) for i in ids) + b"]}", ids
        return "/events", make(f"soak-{n}"), [f"soak-{n}"]

    async def _one(self, route: str, body: bytes, ids: list[str], query: str = f"tc_s={SITE}&token={KEY}") -> str:
        """Post one request (to the source `query` names); its status, or "connection error"."""
        head = (
            f"POST {route}?{query} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.sent += len(ids)
        sent_at = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
            try:
                writer.write(head + body)
                status_line = await asyncio.wait_for(reader.readline(), 15)
                status = int(status_line.split()[1])
                await asyncio.wait_for(reader.read(), 5)
            finally:
                writer.close()
        except (OSError, TimeoutError, ValueError, IndexError):
            self.statuses["connection error"] += 1
            self.answers.append((sent_at, time.monotonic(), "connection error"))
            return "connection error"
        now = time.monotonic()
        self.statuses[str(status)] += 1
        self.answers.append((sent_at, now, str(status)))
        if status == 200:
            self.accepted.update(ids)
            self.ok_times.append(now)
            self.accepted_at.update(dict.fromkeys(ids, now))
        return str(status)

    async def run(self) -> None:
        started = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        while not self.stop:
            due = started + self._n / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self._one(*self._request()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)


class Slot:
    """One worker of the layout, and the process that runs it now."""

    def __init__(self, name: str, queues: str | None, supervised: bool, serves: tuple[str, ...]) -> None:
        self.name = name
        self.queues = queues  # None: `trackpipe worker` without --queues (every queue)
        self.supervised = supervised
        self.serves = serves  # destinations whose deliveries it runs
        self.proc: subprocess.Popen | None = None
        self.rq_name = ""
        self.fault: str | None = None  # fault point to arm at the next start
        self.reserved = False  # a scheduled fault is working on it: random kills leave it alone
        self.last_start = 0.0
        self.starts = 0
        self.killed = 0
        self.fault_kills = 0
        self.own_exits: list[int] = []

    def report(self) -> WorkerReport:
        return WorkerReport(
            name=self.name,
            layout="all-queues" if self.queues is None else "role",
            queues=self.queues or "default (all)",
            supervised=self.supervised,
            starts=self.starts,
            killed=self.killed,
            fault_kills=self.fault_kills,
            exited_on_its_own=list(self.own_exits),
            alive_at_end=self.proc is not None and self.proc.poll() is None,
        )


class Pipeline:
    """The processes; a supervisor restarts the role workers that exit and notes every exit."""

    def __init__(self, config_file: Path, edge_port: int, redis: RedisTarget, env: dict[str, str], layout: str) -> None:
        from trackpipe.keys import KeyLayout

        self.config_file = config_file
        self.edge_port = edge_port
        self.env = env
        self.edge: subprocess.Popen | None = None
        self.slots: dict[str, Slot] = {}
        if layout in ("roles", "mixed"):
            self.slots["ingest"] = Slot("ingest", "ingest", True, ())
            self.slots["hook"] = Slot("hook", f"deliver:{HOOK},retry:{HOOK}", True, (HOOK,))
            self.slots["file"] = Slot("file", f"deliver:{FILE},retry:{FILE}", True, (FILE,))
        if layout in ("all-queues", "mixed"):
            for name in ("all-1", UNTOUCHED):
                self.slots[name] = Slot(name, None, False, DESTINATIONS)
        self.deaths: list[tuple[float, str, int, str]] = []  # (monotonic, slot, status, cause)
        self._killed: set[subprocess.Popen] = set()  # processes the soak SIGKILLed
        self._armed: set[subprocess.Popen] = set()  # processes started with a fault point
        self._reaped: set[subprocess.Popen] = set()
        self.lock = threading.RLock()
        self.stopping = False
        # Reads RQ's worker hashes to see whether a worker is running a job at the moment.
        self._redis = connect(redis, socket_timeout=1, socket_connect_timeout=1)
        self._worker_key = f"{KeyLayout().rq_prefix}:worker:"

    def _spawn(self, *args: str, env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "commands", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_edge(self) -> None:
        self.edge = self._spawn("edge", "--config", str(self.config_file), "--port", str(self.edge_port), env=self.env)
        wait_http(f"http://127.0.0.1:{self.edge_port}/healthz", timeout=30)

    def stop_edge(self) -> None:
        assert self.edge is not None
        self.edge.send_signal(signal.SIGTERM)
        self.edge.wait(timeout=60)

    def start_worker(self, name: str) -> None:
        with self.lock:
            slot = self.slots[name]
            env = dict(self.env)
            if slot.fault:
                env["TRACKPIPE_FAULT"] = slot.fault
            slot.rq_name = f"soak-{name}-{time.monotonic_ns()}"
            args = ["worker", "--config", str(self.config_file), "--name", slot.rq_name]
            if slot.queues is not None:
                args += ["--queues", slot.queues]
            slot.proc = self._spawn(*args, env=env)
            if slot.fault:
                self._armed.add(slot.proc)
                slot.fault = None
            slot.last_start = time.monotonic()
            slot.starts += 1

    def restart(self, name: str) -> None:
        """Start a worker again if its process is gone (for the workers nothing supervises)."""
        with self.lock:
            proc = self.slots[name].proc
            if proc is None or proc.poll() is not None:
                self._reap()
                self.start_worker(name)

    def _reap(self) -> None:
        """Note each worker exit once, with its cause."""
        with self.lock:
            for name, slot in self.slots.items():
                proc = slot.proc
                if proc is None or proc in self._reaped or proc.poll() is None:
                    continue
                self._reaped.add(proc)
                if proc in self._killed:
                    cause = "killed"
                elif proc in self._armed and proc.returncode == -signal.SIGKILL:
                    cause = "fault"
                    slot.fault_kills += 1
                else:
                    cause = "own"
                    slot.own_exits.append(proc.returncode)
                self.deaths.append((time.monotonic(), name, proc.returncode, cause))

    def supervise(self) -> None:
        """Restart exited role workers (a worker also exits when Redis stays unreachable)."""
        while not self.stopping:
            with self.lock:
                self._reap()
                for name, slot in self.slots.items():
                    # At most one restart a second (Redis may still be down).
                    exited = slot.proc is not None and slot.proc.poll() is not None
                    if slot.supervised and exited and time.monotonic() - slot.last_start >= 1.0:
                        self.start_worker(name)
            time.sleep(0.2)

    def replace_with_faulty(self, name: str, fault: str) -> None:
        """Stop the worker gracefully and start one armed to kill itself at `fault`."""
        with self.lock:
            slot = self.slots[name]
            old = slot.proc
            assert old is not None
            slot.fault = fault
            old.send_signal(signal.SIGTERM)
            try:
                old.wait(timeout=60)
            except subprocess.TimeoutExpired:
                old.kill()
                old.wait()
            self._reaped.add(old)  # a stop we asked for, not a death
            self.start_worker(name)

    def killed_by_fault(self, name: str, since: float) -> float | None:
        with self.lock:
            self._reap()
            for at, who, _, cause in self.deaths:
                if who == name and at >= since and cause == "fault":
                    return at
        return None

    def redis_answers(self) -> bool:
        from redis.exceptions import RedisError

        try:
            return bool(self._redis.ping())
        except RedisError:
            return False

    def worker_state(self, slot: Slot) -> str:
        from redis.exceptions import RedisError

        try:
            state = self._redis.hget(self._worker_key + slot.rq_name, "state")
        except RedisError:
            return "unknown (Redis down)"
        return "starting" if state is None else state.decode()

    def _blocked(self, ports: set[int]) -> bool | None:
        """Whether a connection of the worker waits in a blocking command (None: Redis does not answer)."""
        from redis.exceptions import RedisError

        try:
            clients = self._redis.client_list()
        except RedisError:
            return None
        return any("b" in c.get("flags", "") and int(c.get("addr", ":0").rsplit(":", 1)[-1]) in ports for c in clients)

    def _wait_popped(self, slot: Slot, end: float) -> str:
        """Wait until the worker's blocking pop has been answered (its connection was blocked and no
        longer is): the few milliseconds between taking a job off its queue and starting it."""
        assert slot.proc is not None
        ports = _client_ports(slot.proc.pid)
        seen_blocked = False
        while time.monotonic() < end:
            blocked = self._blocked(ports)
            if blocked:
                seen_blocked = True
            elif blocked is False and seen_blocked:
                return "popped"
            time.sleep(0.0005)
        return self.worker_state(slot)

    def kill(self, name: str, want: str, patience: float = 3.0) -> str | None:
        """SIGKILL the worker process (not the scheduler it forked, as `kill -9 <pid>` does) once it
        is in state `want` ("busy": running a job; "idle": waiting for one; "popped": its blocking
        pop just returned, before the job started), or after `patience` seconds whatever it is
        doing. Returns what it was doing; None if it was not running or a scheduled fault holds it."""
        slot = self.slots[name]
        with self.lock:
            proc = slot.proc
            if slot.reserved or proc is None or proc.poll() is not None:
                return None
        end = time.monotonic() + patience
        if want == "popped":
            state = self._wait_popped(slot, end)
        else:
            state = self.worker_state(slot)
            while state != want and time.monotonic() < end:
                time.sleep(0.002)
                state = self.worker_state(slot)
        with self.lock:
            if slot.reserved or slot.proc is not proc or proc.poll() is not None:
                return None
            self._killed.add(proc)
            os.kill(proc.pid, signal.SIGKILL)
            slot.killed += 1
        proc.wait(timeout=30)
        self._reap()
        return state

    def reports(self) -> list[WorkerReport]:
        with self.lock:
            self._reap()
            return [slot.report() for slot in self.slots.values()]

    def stop(self) -> None:
        self.stopping = True
        self._redis.close()
        procs = [p for p in (self.edge, *(s.proc for s in self.slots.values())) if p is not None]
        end_processes(procs, str(self.config_file), timeout=30)

    def start_all(self) -> None:
        """The edge, every worker slot, and the supervisor thread that restarts supervised ones."""
        self.start_edge()
        for name in self.slots:
            self.start_worker(name)
        threading.Thread(target=self.supervise, daemon=True).start()


def end_processes(processes: list[subprocess.Popen], marker: str, timeout: float) -> None:
    """SIGTERM each (a worker supervisor stops its children warmly), SIGKILL what is still there
    after `timeout`; then end whatever else runs with `marker` (the run's config path) on its
    command line: a SIGKILLed RQ worker leaves its forked scheduler process behind."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if marker.encode() in (pid_dir / "cmdline").read_bytes():
                os.kill(int(pid_dir.name), signal.SIGKILL)


def start_load(
    producer: Producer, faults: list[FaultRecord], log: Callable[[str], None]
) -> tuple[threading.Thread, float, Callable[..., None]]:
    """Start the producer on a thread of its own; return that thread, the run's start (monotonic)
    and `note(fault, detail="")`, which records a fault at its time since the start and logs it."""
    thread = threading.Thread(target=lambda: asyncio.run(producer.run()), daemon=True)
    started = time.monotonic()
    thread.start()

    def note(fault: str, detail: str = "") -> None:
        faults.append(FaultRecord(round(time.monotonic() - started, 2), fault, detail))
        log(f"{faults[-1].at:7.2f}s {fault} {detail}")

    return thread, started, note


def _client_ports(pid: int) -> set[int]:
    """Local TCP ports of a process's sockets (Linux /proc): how CLIENT LIST tells its connections
    from those of the scheduler it forked, whatever their names."""
    inodes: set[str] = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


Window = tuple[float, float, tuple[str, ...]]  # (start, end, destinations): see EXPLAIN_BEFORE


class Chaos:
    """SIGKILLs of random workers at random moments of the load, drawn from a seeded generator:
    `kills` single kills (in turn just after the victim took a job, while it runs one and while it
    waits for one), and
    a burst on one worker: killed and restarted three times, ~3 s apart. Any worker but UNTOUCHED
    can be a victim; the workers nothing supervises are restarted here, right after their kill."""

    def __init__(
        self,
        pipeline: Pipeline,
        rng: random.Random,
        started: float,
        duration: float,
        kills: int,
        note: Callable[[str, str], None],
        windows: list[Window],
    ) -> None:
        self.pipeline = pipeline
        self.rng = rng
        self.note = note
        self.windows = windows
        self.states: Counter[str] = Counter()
        self.stop = threading.Event()
        victims = [name for name in pipeline.slots if name != UNTOUCHED]
        burst_victim = "all-1" if "all-1" in pipeline.slots else rng.choice(victims)
        plan: list[tuple[float, str, str]] = [
            (started + duration * rng.uniform(0.03, 0.95), "kill", WANTS[n % 3]) for n in range(kills)
        ]
        plan.append((started + duration * rng.uniform(0.1, 0.7), "burst", burst_victim))
        self.plan = sorted(plan)
        self.victims = victims
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _kill(self, name: str, want: str, what: str) -> None:
        state = self.pipeline.kill(name, want)
        if state is None:
            self.note(f"{what}: skipped", f"{name} not running, or held by a scheduled fault")
            return
        slot = self.pipeline.slots[name]
        now = time.monotonic()
        self.states[state] += 1
        if slot.serves:
            self.windows.append((now - EXPLAIN_BEFORE, now + EXPLAIN_AFTER, slot.serves))
        self.note(what, f"{name} ({state})")
        if not slot.supervised:
            # Restarted even when the chaos is being stopped (a kill can land as the load ends): the
            # report expects every worker alive. Once Redis answers, as an operator would.
            self.stop.wait(0.5)
            _wait_for(self.pipeline.redis_answers, 60)
            self.pipeline.restart(name)
            self.note("worker restarted", name)

    def _run(self) -> None:
        for due, kind, arg in self.plan:
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            if kind == "kill":
                # A victim a scheduled fault is working on is skipped: another one is drawn.
                free = [n for n in self.victims if not self.pipeline.slots[n].reserved]
                if free:
                    self._kill(self.rng.choice(free), arg, f"SIGKILL random worker, wanted {arg}")
            else:
                for n in range(3):
                    if n and self.stop.wait(3.0):
                        return
                    want = self.rng.choice(WANTS)
                    self._kill(arg, want, f"SIGKILL burst #{n + 1}, wanted {want}")


class Tally(msgspec.Struct):
    """What reached each destination, set against the ids answered 200 (see SoakReport)."""

    delivered: dict[str, int]
    lost: dict[str, int]
    duplicates: dict[str, int]
    duplicates_explained: dict[str, int]
    duplicates_unexplained: dict[str, int]
    unexplained_arrivals: dict[str, dict[str, list[float]]]
    unexpected_ids: dict[str, int]


def tally(
    accepted: set[str],
    received: dict[str, Counter[str]],
    arrivals: dict[str, Arrivals],
    windows: list[Window],
    started: float,
) -> Tally:
    """Delivered, lost and repeated ids per destination; a repeat is explained when the id arrived
    within a window around a fault that hit one of its deliveries (see EXPLAIN_BEFORE)."""
    duplicates = {d: sum(n - 1 for n in got.values() if n > 1) for d, got in received.items()}
    resent = {
        d: {i for start, end, dests in windows if d in dests for i in arrived_between(arrivals[d], start, end)}
        for d in received
    }
    explained = {d: sum(n - 1 for i, n in got.items() if n > 1 and i in resent[d]) for d, got in received.items()}
    unexplained = {d: duplicates[d] - explained[d] for d in received}
    return Tally(
        delivered={d: len(accepted & set(got)) for d, got in received.items()},
        lost={d: len(accepted - set(got)) for d, got in received.items()},
        duplicates=duplicates,
        duplicates_explained=explained,
        duplicates_unexplained=unexplained,
        # For a report that explains itself: the first unexplained repeats, each with its arrivals
        # (s from the start), to set against the faults' times.
        unexplained_arrivals={
            d: {
                i: [round(seen - started, 2) for seen, ids in arrivals[d] if i in ids]
                for i in sorted(i for i, n in got.items() if n > 1 and i not in resent[d])[:10]
            }
            for d, got in received.items()
            if unexplained[d]
        },
        unexpected_ids={d: len(set(got) - accepted) for d, got in received.items()},
    )


def drain(
    accepted: set[str],
    sink: Sink,
    tail: FileTail,
    redis: RedisTarget | list[RedisTarget],
    timeout: float,
    note: Callable[[str, str], None],
) -> float:
    """Wait until every accepted id reached both destinations; the seconds waited. `redis`: the
    server, or every shard's.

    Re-runs of killed jobs and retries wait on RQ's maintenance and scheduler. Gives up early once
    ids are missing and Redis has held no job at all for 10 s: nothing can deliver them."""
    load_end = time.monotonic()
    deadline = load_end + timeout
    drained = False
    idle_since: float | None = None
    while time.monotonic() < deadline and not drained:
        tail.poll()
        drained = accepted <= set(sink.ids()) and accepted <= set(tail.ids())
        if not drained:
            if all(pending_work(r) == 0 for r in (redis if isinstance(redis, list) else [redis])):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= 10:
                    break
            else:
                idle_since = None
            time.sleep(0.5)
    seconds = time.monotonic() - load_end
    if drained:
        note("drained", f"after {seconds:.1f} s")
    elif idle_since is not None:
        note("gave up waiting for delivery", f"after {seconds:.1f} s: no job left in Redis")
    else:
        note("gave up waiting for delivery", f"after {seconds:.1f} s")
    return seconds


def pending_work(redis: RedisTarget) -> int:
    """Jobs still waiting or in progress (queued, taken, started, scheduled or claimed); -1 if
    Redis does not answer. 0 while ids are missing means nothing is left to deliver them."""
    from redis.exceptions import RedisError

    from trackpipe.keys import KeyLayout

    layout = KeyLayout()
    try:
        with connect(redis, socket_timeout=5) as connection:
            total = 0
            for pattern in (f"{layout.rq_prefix}:queue:*", f"{layout.prefix}:claims:*"):
                for key in connection.scan_iter(pattern):
                    if connection.type(key) == b"list":
                        total += connection.llen(key)
            for registry in ("wip", "scheduled", "deferred"):
                for key in connection.scan_iter(f"{layout.rq_prefix}:{registry}:*"):
                    if connection.type(key) == b"zset":
                        total += connection.zcard(key)
            return total
    except RedisError:
        return -1


def run_soak(
    duration: float = 60.0,
    rate: float = 100.0,
    webhook_outage: float = 5.0,
    redis_outage: float = 3.0,
    log: Callable[[str], None] = lambda _: None,
    drain_timeout: float = 300.0,
    layout: str = "mixed",
    seed: int | None = None,
    random_kills: int | None = None,
    default_timings: bool = False,
) -> SoakReport:
    """Load for `duration` seconds with the faults spread over it, then wait for delivery."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    if random_kills is None:
        random_kills = max(3, int(duration // 10))
    rng = random.Random(seed)
    log(f"seed {seed} (--seed {seed} repeats these choices), layout {layout}")
    with tempfile.TemporaryDirectory(prefix="trackpipe-soak-") as tmp_name:
        tmp = Path(tmp_name)
        redis_port, edge_port = free_port(), free_port()
        # The product's durability settings, on the first start and after each restart.
        server = start_server(tmp / "valkey", port=redis_port)
        appendfsync = _server_setting(redis_port, "appendfsync")
        sink = Sink()
        tail = FileTail(tmp / "out")
        config_file = tmp / "soak.toml"
        config_file.write_text(soak_config(f"redis://127.0.0.1:{redis_port}/0", sink.url, tmp / "out", default_timings))
        pipeline = Pipeline(config_file, edge_port, redis_port, {**os.environ}, layout)
        faults: list[FaultRecord] = []
        outage: list[tuple[float, float]] = []
        windows: list[Window] = []
        producer = Producer(edge_port, rate)
        try:
            pipeline.start_all()
            loop_thread, started, note = start_load(producer, faults, log)

            def server_outage(server: Any, kill: bool) -> Any:
                """Stop the server (SIGKILL: no shutdown, no final AOF flush beyond what the setting
                did; else a clean stop), keep it down for `redis_outage` s, start it on its AOF."""
                if kill:
                    server.terminate()
                else:
                    server.stop()
                down = time.monotonic()
                note("redis SIGKILLed" if kill else "redis stopped")
                time.sleep(redis_outage)
                up = time.monotonic()
                server = start_server(tmp / "valkey", port=redis_port)
                outage.append((down, up))
                windows.append((down - EXPLAIN_BEFORE, time.monotonic() + EXPLAIN_BEFORE, DESTINATIONS))
                note("redis started again after SIGKILL (AOF)" if kill else "redis started again (AOF)")
                return server

            def at(fraction: float) -> None:
                wait = started + duration * fraction - time.monotonic()
                if wait > 0:
                    time.sleep(wait)

            chaos = Chaos(pipeline, rng, started, duration, random_kills, note, windows)
            chaos.thread.start()

            def fault_point_kill(name: str, fault: str, what: str, detail: str) -> None:
                slot = pipeline.slots[name]
                slot.reserved = True
                try:
                    since = time.monotonic()
                    pipeline.replace_with_faulty(name, fault)
                    dead = _wait_for(lambda: pipeline.killed_by_fault(name, since), 30)
                    if fault.startswith("deliver:"):
                        # What the killed worker had sent: delivered then, and sent again by the re-run.
                        windows.append((since, time.monotonic() + EXPLAIN_AFTER, slot.serves))
                    if not slot.supervised:
                        pipeline.restart(name)
                finally:
                    slot.reserved = False
                note(what, detail + ("" if dead else " (never took a job)"))

            roles = "ingest" in pipeline.slots
            at(0.05)
            for n in range(3):
                fault_point_kill(
                    "ingest" if roles else "all-1", "ingest:mid_fanout", "SIGKILL ingest worker mid-job", f"#{n + 1}"
                )
            at(0.2)
            for n, (name, destination) in enumerate((("hook", HOOK), ("file", FILE), ("hook", HOOK))):
                fault_point_kill(
                    name if roles else "all-1",
                    "deliver:after_send",
                    "SIGKILL delivery worker after its send",
                    f"{destination if roles else 'all-1'} #{n + 1}",
                )
            at(0.4)
            sink.failing = True
            note("webhook answers 500", f"for {webhook_outage:g} s")
            time.sleep(webhook_outage)
            sink.failing = False
            note("webhook recovered")
            at(0.6)
            # A delivery in flight when Redis goes away reaches its destination but cannot be
            # settled: its re-run sends it again.
            server = server_outage(server, kill=False)
            at(0.7)
            server = server_outage(server, kill=True)
            at(0.8)
            pipeline.stop_edge()
            note("edge stopped (SIGTERM)")
            pipeline.start_edge()
            note("edge started again")
            at(1.0)
            chaos.stop.set()
            chaos.thread.join(timeout=60)
            last_fault = max(f.at for f in faults)
            producer.stop = True
            loop_thread.join(timeout=60)
            note("load stopped")
            load_stopped = faults[-1].at
            seconds = time.monotonic() - started
            accepted = producer.accepted
            drain_seconds = drain(accepted, sink, tail, redis_port, drain_timeout, note)
            workers = pipeline.reports()
            tail.poll()
            arrivals = {HOOK: sink.arrivals(), FILE: tail.arrivals()}
            received = {HOOK: sink.ids(), FILE: file_ids(tmp / "out")}
            errors = delivery_errors(redis_port, received)
            missing = {d: locate(redis_port, accepted - set(got)) for d, got in received.items() if accepted - set(got)}
        finally:
            pipeline.stop()
            sink.close()
            tail.close()
            server.stop()
    # A 200 read just after the stop may have been written just before it: allow 0.2 s.
    ok_in_outage = sum(1 for t in producer.ok_times for down, up in outage if down + 0.2 <= t <= up)
    counts = tally(accepted, received, arrivals, windows, started)
    lost = counts.lost
    unexplained = counts.duplicates_unexplained
    recovery: dict[str, float | None] = {}
    last_delivery: dict[str, float | None] = {}
    fault_time = started + last_fault
    for destination, seen in arrivals.items():
        first = first_arrivals(seen)
        if lost[destination] or not accepted or not accepted <= first.keys():
            recovery[destination] = last_delivery[destination] = None
            continue
        waits = (first[i] - max(producer.accepted_at[i], fault_time) for i in accepted)
        recovery[destination] = round(max(0.0, *waits), 1)
        last_delivery[destination] = round(max(0.0, max(first[i] for i in accepted) - fault_time), 1)
    report = SoakReport(
        seed=seed,
        layout=layout,
        timings="default" if default_timings else "fast",
        server_appendfsync=appendfsync,
        seconds=round(seconds, 1),
        requests=sum(producer.statuses.values()),
        statuses=dict(producer.statuses),
        events_sent=producer.sent,
        events_accepted=len(accepted),
        delivered=counts.delivered,
        lost=lost,
        duplicates=counts.duplicates,
        duplicates_explained=counts.duplicates_explained,
        duplicates_unexplained=unexplained,
        unexplained_arrivals=counts.unexplained_arrivals,
        delivery_errors=errors,
        missing=missing,
        unexpected_ids=counts.unexpected_ids,
        ok_during_redis_outage=ok_in_outage,
        kills_by_state=dict(chaos.states),
        workers=workers,
        last_fault_at=last_fault,
        load_stopped_at=load_stopped,
        recovery_seconds=recovery,
        last_delivery_after_last_fault=last_delivery,
        recovery_target_seconds=RECOVERY_TARGET_SECONDS,
        drain_seconds=round(drain_seconds, 1),
        faults=sorted(faults, key=lambda f: f.at),
        ok=False,
    )
    report.ok = not any(lost.values()) and ok_in_outage == 0 and len(accepted) > 0 and not any(unexplained.values())
    return report


def _server_setting(redis: RedisTarget, name: str) -> str:
    with connect(redis, socket_timeout=5) as connection:
        return str(connection.config_get(name).get(name, "?"))


def delivery_errors(redis: RedisTarget, destinations: dict[str, Any]) -> dict[str, dict[str, int]]:
    from trackpipe.keys import KeyLayout

    layout = KeyLayout()
    with connect(redis, socket_timeout=5) as connection:
        return {
            d: {k.decode(): int(v) for k, v in connection.hgetall(layout.destination_errors(d)).items()}
            for d in destinations
        }


RedisTarget = int | str  # a local server's port, or a redis_url (redis+sentinel:// follows the primary)


def connect(redis: RedisTarget, **options: Any) -> Any:
    """A redis-py client of a local port or of a URL (through the product's connection factory)."""
    from redis import Redis

    from trackpipe.connection import sync_client

    return sync_client(redis, **options) if isinstance(redis, str) else Redis(port=redis, **options)


def _wait_for(check: Callable[[], Any], timeout: float) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    return None


def locate(redis: RedisTarget, ids: set[str], limit: int = 20) -> dict[str, list[str]]:
    """Where undelivered ids sit in Redis (job parts, job arguments, DLQs), with each holding job's
    status and RQ registries: the diagnosis when the soak finds events not delivered."""
    import zlib

    from trackpipe.jobs import MsgpackSerializer
    from trackpipe.keys import KeyLayout
    from trackpipe.messages import decode_batch, decode_delivery

    layout = KeyLayout()
    wanted = set(sorted(ids)[:limit])
    found: dict[str, list[str]] = {i: [] for i in wanted}

    def payload_ids(payload: bytes) -> list[str]:
        try:
            return [e.event_id for e in decode_delivery(payload).events]
        except msgspec.DecodeError:
            batch = decode_batch(payload)
            return [
                msgspec.json.decode(raw).get("context", {}).get("event_id") or ""
                for r in batch.records
                for raw in r.events
            ]

    with connect(redis, socket_timeout=10) as connection:
        registries = {
            key.decode(): {m.decode() for m in connection.zrange(key, 0, -1)}
            for key in connection.scan_iter(f"{layout.rq_prefix}:*")
            if connection.type(key) == b"zset"
        }
        queues = {
            key.decode(): {m.decode() for m in connection.lrange(key, 0, -1)}
            for key in connection.scan_iter(f"{layout.rq_prefix}:queue:*")
            if connection.type(key) == b"list"  # not RQ's other keys under that name
        }

        def where_job(job_id: str) -> str:
            status = connection.hget(f"{layout.rq_prefix}:job:{job_id}", "status")
            places = [k.split(":", 2)[-1] for k, members in {**registries, **queues}.items() if job_id in members]
            return f"job {job_id} status={status!r} in {places}"

        for key in connection.scan_iter(f"{layout.job_parts_prefix}*"):
            job_id = key.decode().removeprefix(layout.job_parts_prefix)
            for part in connection.lrange(key, 0, -1):
                for event_id in set(payload_ids(part)) & wanted:
                    found[event_id].append(f"part of {where_job(job_id)}")
        for key in connection.scan_iter(f"{layout.rq_prefix}:job:*"):
            data = connection.hget(key, "data")
            if not data:
                continue
            try:
                _, _, args, _ = MsgpackSerializer.loads(zlib.decompress(data))
            except Exception:
                continue
            if args and args[0]:
                job_id = key.decode().rsplit(":", 1)[-1]
                for event_id in set(payload_ids(args[0])) & wanted:
                    found[event_id].append(f"argument of {where_job(job_id)}")
        for key in connection.scan_iter(f"{layout.prefix}:dlq:*"):
            if connection.type(key) == b"list":
                for record in connection.lrange(key, 0, -1):
                    event_id = msgspec.json.decode(record).get("event_id")
                    if event_id in wanted:
                        found[event_id].append(f"dead letter in {key.decode()}")
        scheduler_locks = {
            k.decode(): connection.get(k) for k in connection.scan_iter(f"{layout.rq_prefix}:scheduler-lock:*")
        }
    found["_scheduler_locks"] = [f"{k} = {v!r}" for k, v in scheduler_locks.items()]
    return found
