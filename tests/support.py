"""Helpers for tests that run real processes: the embedded server, the edge under uvicorn."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from trackpipe.keys import KeyLayout

ROOT = Path(__file__).resolve().parent.parent

TEST_KEY = "test-key-0123456789"
OTHER_KEY = "other-key-0123456789"

BASE_CONFIG = """\
redis_url = "{redis_url}"
admin_token = "admin-token-0123456789"

[edge]
status_mode = "{mode}"
max_backlog = {max_backlog}

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{key}"]

[[sources]]
id = "other-site"
site_id = "30"
keys = ["{other_key}"]
"""


def config_text(redis_url: str, mode: str = "compat", max_backlog: int = 20_000) -> str:
    return BASE_CONFIG.format(
        redis_url=redis_url, mode=mode, max_backlog=max_backlog, key=TEST_KEY, other_key=OTHER_KEY
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def running_edge(config_path: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`trackpipe edge` as a real process; yields its base URL; SIGTERM at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "trackpipe.cli", "edge", "--config", str(config_path), "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", proc=proc)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- reading what the edge stored (shared by the edge tests) ---------------------------------


def stored_job_ids(conn, prefix: str = "trackpipe") -> list[str]:
    """Ids of the RQ jobs waiting on the ingest queue, oldest first."""

    return [raw.decode() for raw in conn.lrange(KeyLayout(prefix).queue("ingest"), 0, -1)]


def stored_records(conn, prefix: str = "trackpipe") -> list:
    """Every IngestRecord held by the jobs on the ingest queue (each job must be a real ingest job)."""
    from ingest.store import held_batches
    from trackpipe.jobs import INGEST_FUNCTION, MsgpackSerializer, SafeJob

    records = []
    for job_id in stored_job_ids(conn, prefix):
        job = SafeJob.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
        assert job.func_name == INGEST_FUNCTION, job.func_name
        for batch in held_batches(conn, KeyLayout(prefix), job):
            records.extend(batch.records)
    return records


def stored_events(conn, prefix: str = "trackpipe") -> list[tuple[str, str, bytes]]:
    """(source_id, site_id, raw event) for every event on the ingest queue, in queue order."""
    return [(r.source_id, r.site_id, event) for r in stored_records(conn, prefix) for event in r.events]


def job_keys(conn, prefix: str = "trackpipe") -> list[bytes]:
    return list(conn.scan_iter(f"{prefix}:rq:job:*"))


def sized_event(size: int, marker: str = "m") -> bytes:
    """A v2 JSON object of exactly `size` bytes."""
    head = b'{"event_name":"page_view","context":{"event_id":"' + marker.encode() + b'"},"pad":"'
    tail = b'"}'
    pad = size - len(head) - len(tail)
    if pad < 0:
        raise ValueError(f"{size} bytes is too small for an event")
    return head + b"a" * pad + tail


def batch_body(events: list[bytes]) -> bytes:
    return b'{"batch":[' + b",".join(events) + b"]}"


def sized_batch(size: int, count: int = 16, marker: str = "b") -> tuple[bytes, list[bytes]]:
    """A batch body of exactly `size` bytes made of `count` events (each must stay within 32 KB)."""
    overhead = len(batch_body([b""] * count))
    each, extra = divmod(size - overhead, count)
    events = [sized_event(each + (extra if i == count - 1 else 0), f"{marker}{i}") for i in range(count)]
    body = batch_body(events)
    assert len(body) == size
    return body, events


# -- running workers (appended for the worker tests) ------------------------------------------


def poll_until(predicate, timeout: float, what, interval: float = 0.05):
    """Call `predicate` until it returns something truthy (returned) or `timeout` seconds pass.

    `what` is the failure message, or a function making it (called only on failure, so that it
    can describe the state at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = what() if callable(what) else what
            raise AssertionError(f"{message} (waited {timeout}s)")
        time.sleep(interval)


def start_worker(
    config_path: Path, *extra: str, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen:
    """`python -m trackpipe.cli worker` as a real process, in its own session (RQ forks a scheduler
    child: `kill_group` reaches it too, even once the worker itself is gone)."""
    cmd = [sys.executable, "-m", "trackpipe.cli", "worker", "--config", str(config_path), *extra]
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=out, start_new_session=True
        )
    finally:
        if log is not None:
            out.close()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (the worker and any scheduler it forked), then reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def stop_worker(proc: subprocess.Popen, timeout: float = 15) -> int | None:
    """SIGTERM (a warm shutdown), then SIGKILL of the whole group; returns the exit status on SIGTERM."""
    returncode = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            returncode = proc.wait(timeout=timeout)
    else:
        returncode = proc.returncode
    kill_group(proc)
    return returncode


# -- scripted webhook receivers (appended for the destination and delivery tests) --------------

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Reply:
    """One scripted answer of a HookServer."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # seconds to wait before answering (cut short when the server stops)


@dataclasses.dataclass(frozen=True)
class Received:
    """One request a HookServer got, and the status it answered (or was about to, after a delay)."""

    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    client_port: int
    status: int


class HookServer:
    """A real HTTP/1.1 server (keep-alive) on a free port in a thread. Each POST gets the next reply of
    the script, the last reply repeating; every request is recorded in `received`. With `secret`, the
    server checks X-Trackpipe-Signature itself (hmac) and answers 401 "bad signature" when it is wrong.

        with HookServer(Reply(500), Reply(200)) as server:
            ... post to server.url ...
    """

    def __init__(self, *replies: Reply, secret: str | None = None) -> None:
        self.secret = secret
        self.received: list[Received] = []
        self._script = list(replies) or [Reply()]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script = list(replies)

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]

    def _signed(self, handler: BaseHTTPRequestHandler, body: bytes) -> bool:
        assert self.secret is not None
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(handler.headers.get("X-Trackpipe-Signature", ""), expected)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        reply = self._next_reply()
        if self.secret is not None and not self._signed(handler, body):
            reply = Reply(401, b"bad signature")
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.received.append(Received(handler.path, headers, body, handler.client_address[1], reply.status))
        if reply.delay:
            self._stopping.wait(reply.delay)
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers:
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(reply.body)))
            handler.end_headers()
            handler.wfile.write(reply.body)
            handler.wfile.flush()
        except OSError:  # the client gave up (timeout) and closed the connection
            handler.close_connection = True

    def start(self) -> HookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> HookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def closed_url() -> str:
    """A URL on a free port nobody listens on: connecting is refused."""
    return f"http://127.0.0.1:{free_port()}/hook"


def delivery_batches_of(conn, job, prefix: str = "trackpipe") -> list:
    """Every DeliveryBatch a delivery job holds: its argument (retry, replay) and its parts (fan-outs)."""
    from trackpipe.messages import decode_delivery
    from trackpipe.openjob import held_payloads

    return [decode_delivery(p) for p in held_payloads(conn, KeyLayout(prefix), job)]
