"""`trackpipe soak`: real load through the real pipeline while faults are injected; then proves that
every event answered 200 reached every destination it matches.

Runs on one machine: an embedded valkey (AOF, `appendfsync always`), one edge, an ingest worker,
one worker per destination (a webhook receiver in this process and a `file` destination), and a
supervisor that restarts any worker that exits (as compose or systemd would). A producer posts
unique event ids at a steady rate: single and batched, v1 and v2. Faults, in turn:

- an ingest worker is SIGKILLed in the middle of an ingest job, three times;
- a delivery worker is SIGKILLed in the middle of a delivery job (after the destination took the
  batch, before the worker settled it), three times: the re-run sends that batch again, so those
  events arrive twice and the report names them;
- the Redis server is stopped, then started again on its AOF, while the edge keeps receiving:
  meanwhile the edge must answer 503, never 200;
- the webhook answers 500 for a while, then recovers;
- the edge is stopped with SIGTERM and started again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec

from trackpipe.bench import free_port, wait_http
from trackpipe.embedded import start_server

SITE = "7"
KEY = "soak-key-0123456789abcdef"
SOAK_CONFIG = """
redis_url = "redis://127.0.0.1:{redis_port}/0"
[edge]
retry_after_seconds = 1
[worker]
ingest_timeout_seconds = 3
delivery_timeout_seconds = 4
abandoned_grace_seconds = 1
maintenance_interval_seconds = 1
[[sources]]
id = "soak-web"
site_id = "{site}"
keys = ["{key}"]
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


class FaultRecord(msgspec.Struct):
    at: float  # seconds since the load started
    fault: str
    detail: str = ""


class SoakReport(msgspec.Struct):
    seconds: float
    requests: int
    statuses: dict[str, int]  # HTTP status, or "connection error"
    events_sent: int
    events_accepted: int  # answered 200
    delivered: dict[str, int]  # destination -> distinct accepted ids delivered
    lost: dict[str, int]  # destination -> accepted ids never delivered
    duplicates: dict[str, int]  # destination -> extra deliveries
    # Of those, ids that reached the destination while a fault hit their delivery job: a delivery
    # worker killed after its send, or Redis stopping before the job could settle.
    duplicates_explained: dict[str, int]
    duplicates_unexplained: dict[str, int]
    # Failed sends per destination by kind: a timeout or dropped connection may also have reached
    # the destination (its answer was lost), which explains any further repeats.
    delivery_errors: dict[str, dict[str, int]]
    # Where undelivered ids sit in Redis (only when some are missing), to diagnose a loss.
    missing: dict[str, dict[str, list[str]]]
    unexpected_ids: dict[str, int]  # destination -> delivered ids nobody was answered 200 for
    ok_during_redis_outage: int  # 200s answered while the server was down (must be 0)
    drain_seconds: float  # from the end of the load until everything accepted was delivered
    faults: list[FaultRecord]
    ok: bool


class Sink:
    """The webhook receiver: records every delivered id (with repeats); can be told to fail."""

    def __init__(self) -> None:
        self.failing = False
        self.requests: list[tuple[float, list[str]]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if sink.failing:
                    self.send_response(500)
                else:
                    ids = [e["context"]["event_id"] for e in msgspec.json.decode(body)["batch"]]
                    with sink.lock:
                        sink.requests.append((time.monotonic(), ids))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> Counter[str]:
        with self.lock:
            return Counter(i for _, ids in self.requests for i in ids)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def file_ids(out_dir: Path) -> Counter[str]:
    found: Counter[str] = Counter()
    for path in sorted(out_dir.glob("*.jsonl")) if out_dir.exists() else []:
        for line in path.read_bytes().splitlines():
            if line.strip():
                found[msgspec.json.decode(line)["context"]["event_id"]] += 1
    return found


def v2_event(event_id: str) -> bytes:
    return msgspec.json.encode({"event_name": "page_view", "context": {"event_id": event_id}, "page": "soak"})


def v1_event(event_id: str) -> bytes:
    return msgspec.json.encode({"event_name": "page_view", "event_id": event_id, "properties": {"page": "soak"}})


class Producer:
    """Posts unique ids at a steady rate; remembers which ids were answered 200, and when."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.rate = rate
        self.sent = 0
        self.accepted: set[str] = set()
        self.statuses: Counter[str] = Counter()
        self.ok_times: list[float] = []  # monotonic time of each 200
        self.stop = False
        self._n = 0

    def _request(self) -> tuple[str, bytes, list[str]]:
        """Every fourth request is a batch of 5; v1 and v2 alternate."""
        n = self._n
        self._n += 1
        make = v1_event if n % 2 else v2_event
        if n % 4 == 3:
            ids = [f"soak-{n}-{i}" for i in range(5)]
            return "/events/batch", b'{"batch":[' + b",".join(make(i) for i in ids) + b"]}", ids
        return "/events", make(f"soak-{n}"), [f"soak-{n}"]

    async def _one(self, route: str, body: bytes, ids: list[str]) -> None:
        head = (
            f"POST {route}?tc_s={SITE}&token={KEY} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.sent += len(ids)
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
            return
        self.statuses[str(status)] += 1
        if status == 200:
            self.accepted.update(ids)
            self.ok_times.append(time.monotonic())

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


class Pipeline:
    """The processes, with a supervisor that restarts workers that exit."""

    def __init__(self, config_file: Path, edge_port: int, env: dict[str, str]) -> None:
        self.config_file = config_file
        self.edge_port = edge_port
        self.env = env
        self.edge: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.faults: dict[str, str] = {}  # worker name -> fault to arm at its next start
        self.deaths: list[tuple[float, str, int]] = []  # (monotonic, worker, return code)
        self.queues = {
            "ingest": "ingest",
            "hook": "deliver:soak-hook,retry:soak-hook",
            "file": "deliver:soak-file,retry:soak-file",
        }
        self.lock = threading.Lock()
        self.stopping = False
        self._last_start: dict[str, float] = {}
        self._seen_dead: list[tuple[str, subprocess.Popen]] = []

    def _spawn(self, *args: str, env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "trackpipe.cli", *args],
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
        env = dict(self.env)
        fault = self.faults.pop(name, None)
        if fault:
            env["TRACKPIPE_FAULT"] = fault
        self._last_start[name] = time.monotonic()
        self.workers[name] = self._spawn(
            "worker",
            "--config",
            str(self.config_file),
            "--queues",
            self.queues[name],
            "--name",
            f"soak-{name}-{time.monotonic_ns()}",
            env=env,
        )

    def supervise(self) -> None:
        """Restart exited workers (a worker also exits when Redis stays unreachable)."""
        while not self.stopping:
            with self.lock:
                for name, proc in list(self.workers.items()):
                    code = proc.poll()
                    if code is not None and not any(p is proc for _, p in self._seen_dead):
                        self._seen_dead.append((name, proc))
                        self.deaths.append((time.monotonic(), name, code))
                    # At most one restart a second (Redis may still be down).
                    if code is not None and time.monotonic() - self._last_start.get(name, 0) >= 1.0:
                        self.start_worker(name)
            time.sleep(0.2)

    def replace_with_faulty(self, name: str, fault: str) -> None:
        """Stop the worker gracefully and start one armed to kill itself at `fault`."""
        with self.lock:
            old = self.workers[name]
            self.faults[name] = fault
            old.send_signal(signal.SIGTERM)
            try:
                old.wait(timeout=30)
            except subprocess.TimeoutExpired:
                old.kill()
                old.wait()
            self.start_worker(name)

    def killed_by_fault(self, name: str, since: float) -> float | None:
        with self.lock:
            for at, who, code in self.deaths:
                if who == name and at >= since and code == -signal.SIGKILL:
                    return at
        return None

    def stop(self) -> None:
        self.stopping = True
        procs = [p for p in (self.edge, *self.workers.values()) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        # A SIGKILLed RQ worker leaves its forked scheduler process behind: end those too.
        marker = str(self.config_file).encode()
        for pid_dir in Path("/proc").glob("[0-9]*"):
            try:
                if marker in (pid_dir / "cmdline").read_bytes():
                    os.kill(int(pid_dir.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def run_soak(
    duration: float = 60.0,
    rate: float = 100.0,
    webhook_outage: float = 5.0,
    redis_outage: float = 3.0,
    log: Callable[[str], None] = lambda _: None,
    drain_timeout: float = 300.0,
) -> SoakReport:
    """Load for `duration` seconds with the faults spread over it, then wait for delivery."""
    with tempfile.TemporaryDirectory(prefix="trackpipe-soak-") as tmp_name:
        tmp = Path(tmp_name)
        redis_port, edge_port = free_port(), free_port()
        server = start_server(tmp / "valkey", port=redis_port, appendfsync="always")
        sink = Sink()
        config_file = tmp / "soak.toml"
        config_file.write_text(
            SOAK_CONFIG.format(redis_port=redis_port, site=SITE, key=KEY, hook_url=sink.url, out_dir=tmp / "out")
        )
        pipeline = Pipeline(config_file, edge_port, {**os.environ})
        faults: list[FaultRecord] = []
        outage: list[tuple[float, float]] = []
        producer = Producer(edge_port, rate)
        try:
            pipeline.start_edge()
            for name in pipeline.queues:
                pipeline.start_worker(name)
            threading.Thread(target=pipeline.supervise, daemon=True).start()
            loop_thread = threading.Thread(target=lambda: asyncio.run(producer.run()), daemon=True)
            started = time.monotonic()
            loop_thread.start()

            def note(fault: str, detail: str = "") -> None:
                faults.append(FaultRecord(round(time.monotonic() - started, 2), fault, detail))
                log(f"{faults[-1].at:7.2f}s {fault} {detail}")

            def at(fraction: float) -> None:
                wait = started + duration * fraction - time.monotonic()
                if wait > 0:
                    time.sleep(wait)

            resent_ids: dict[str, set[str]] = {"soak-hook": set(), "soak-file": set()}

            def received_now() -> dict[str, Counter[str]]:
                return {"soak-hook": sink.ids(), "soak-file": file_ids(tmp / "out")}

            def note_arrivals_since(before: dict[str, Counter[str]], only: str | None = None) -> None:
                """Ids that reached a destination since `before`: in flight when a fault hit."""
                for destination, counts in received_now().items():
                    if only is not None and destination != only:
                        continue
                    earlier = before[destination]
                    resent_ids[destination].update(i for i in counts if counts[i] > earlier.get(i, 0))

            at(0.05)
            for n in range(3):
                since = time.monotonic()
                pipeline.replace_with_faulty("ingest", "ingest:mid_fanout")
                dead = _wait_for(lambda s=since: pipeline.killed_by_fault("ingest", s), 30)
                note("SIGKILL ingest worker mid-job", f"#{n + 1}" + ("" if dead else " (never took a job)"))
            at(0.2)
            for n, (name, destination) in enumerate(
                (("hook", "soak-hook"), ("file", "soak-file"), ("hook", "soak-hook"))
            ):
                since = time.monotonic()
                before = received_now()
                pipeline.replace_with_faulty(name, "deliver:after_send")
                dead = _wait_for(lambda s=since, w=name: pipeline.killed_by_fault(w, s), 30)
                # What the killed worker had sent: delivered then, and sent again by the re-run.
                note_arrivals_since(before, only=destination)
                note(
                    "SIGKILL delivery worker after its send",
                    f"{destination} #{n + 1}" + ("" if dead else " (never took a job)"),
                )
            at(0.4)
            sink.failing = True
            note("webhook answers 500", f"for {webhook_outage:g} s")
            time.sleep(webhook_outage)
            sink.failing = False
            note("webhook recovered")
            at(0.6)
            # A delivery in flight when Redis stops reaches its destination but cannot be settled:
            # its re-run sends it again. Note what arrives from 2 s before the stop until 2 s after.
            before = received_now()
            time.sleep(2)
            server.stop()
            down = time.monotonic()
            note("redis stopped")
            time.sleep(redis_outage)
            up = time.monotonic()
            server = start_server(tmp / "valkey", port=redis_port, appendfsync="always")
            outage.append((down, up))
            note("redis started again (AOF)")
            time.sleep(2)
            note_arrivals_since(before)
            at(0.8)
            pipeline.stop_edge()
            note("edge stopped (SIGTERM)")
            pipeline.start_edge()
            note("edge started again")
            at(1.0)
            producer.stop = True
            loop_thread.join(timeout=60)
            note("load stopped")
            seconds = time.monotonic() - started
            accepted = producer.accepted
            # Re-runs of killed jobs and retries wait on RQ's scheduler; when the worker holding the
            # scheduler lock was killed, another takes over only once the lock expires (61 s).
            load_end = time.monotonic()
            deadline = load_end + drain_timeout
            drained = False
            while time.monotonic() < deadline and not drained:
                drained = accepted <= set(sink.ids()) and accepted <= set(file_ids(tmp / "out"))
                if not drained:
                    time.sleep(0.5)
            drain_seconds = time.monotonic() - load_end
            note("drained" if drained else "gave up waiting for delivery", f"after {drain_seconds:.1f} s")
            received = received_now()
            errors = _delivery_errors(redis_port, received)
            missing = {d: locate(redis_port, accepted - set(got)) for d, got in received.items() if accepted - set(got)}
        finally:
            pipeline.stop()
            sink.close()
            server.stop()
    # A 200 read just after the stop may have been written just before it: allow 0.2 s.
    ok_in_outage = sum(1 for t in producer.ok_times for down, up in outage if down + 0.2 <= t <= up)
    delivered = {d: len(accepted & set(got)) for d, got in received.items()}
    lost = {d: len(accepted - set(got)) for d, got in received.items()}
    duplicates = {d: sum(n - 1 for n in got.values() if n > 1) for d, got in received.items()}
    explained = {d: sum(n - 1 for i, n in got.items() if n > 1 and i in resent_ids[d]) for d, got in received.items()}
    unexpected = {d: len(set(got) - accepted) for d, got in received.items()}
    unexplained = {d: duplicates[d] - explained[d] for d in received}
    report = SoakReport(
        seconds=round(seconds, 1),
        requests=sum(producer.statuses.values()),
        statuses=dict(producer.statuses),
        events_sent=producer.sent,
        events_accepted=len(accepted),
        delivered=delivered,
        lost=lost,
        duplicates=duplicates,
        duplicates_explained=explained,
        duplicates_unexplained=unexplained,
        delivery_errors=errors,
        missing=missing,
        unexpected_ids=unexpected,
        ok_during_redis_outage=ok_in_outage,
        drain_seconds=round(drain_seconds, 1),
        faults=faults,
        ok=False,
    )
    report.ok = not any(lost.values()) and ok_in_outage == 0 and len(accepted) > 0 and duplicates == explained
    return report


def _delivery_errors(redis_port: int, destinations: dict[str, Any]) -> dict[str, dict[str, int]]:
    from redis import Redis

    from trackpipe.keys import KeyLayout

    layout = KeyLayout()
    with Redis(port=redis_port, socket_timeout=5) as connection:
        return {
            d: {k.decode(): int(v) for k, v in connection.hgetall(layout.destination_errors(d)).items()}
            for d in destinations
        }


def _wait_for(check: Callable[[], Any], timeout: float) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    return None


def locate(redis_port: int, ids: set[str], limit: int = 20) -> dict[str, list[str]]:
    """Where undelivered ids sit in Redis (job parts, job arguments, DLQs), with each holding job's
    status and RQ registries: the diagnosis when the soak finds events not delivered."""
    import zlib

    from redis import Redis

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

    with Redis(port=redis_port, socket_timeout=10) as connection:
        registries = {
            key.decode(): {m.decode() for m in connection.zrange(key, 0, -1)}
            for key in connection.scan_iter(f"{layout.rq_prefix}:*")
            if connection.type(key) == b"zset"
        }
        queues = {
            key.decode(): {m.decode() for m in connection.lrange(key, 0, -1)}
            for key in connection.scan_iter(f"{layout.rq_prefix}:queue:*")
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
