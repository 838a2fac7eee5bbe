"""The harness shared by the tests, `trackpipe bench` and `trackpipe soak`: free ports, waiting for
a server or a condition, stopping the processes one started, and a scripted webhook receiver."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import httpx
import msgspec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


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
    at: float = 0.0  # time.monotonic() when it arrived
    method: str = "POST"


class LocalServer:
    """A real HTTP/1.1 server (keep-alive) on a free loopback port, in a thread: each request whose
    method is in `METHODS` goes to `_handle`; those in `REFUSED` get an empty 405. The scaffolding
    of the webhook receiver below and of the vendor servers (tooling/vendors)."""

    METHODS: tuple[str, ...] = ("POST",)
    REFUSED: tuple[str, ...] = ()

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

        def handle(handler: BaseHTTPRequestHandler) -> None:
            owner._handle(handler)

        def refuse(handler: BaseHTTPRequestHandler) -> None:
            send_reply(handler, 405, b"")

        for method in self.METHODS:
            setattr(Handler, f"do_{method}", handle)
        for method in self.REFUSED:
            setattr(Handler, f"do_{method}", refuse)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_body(handler: BaseHTTPRequestHandler) -> bytes | None:
    """The request's body; None when the client went away before sending all of it (a sender
    killed mid-request): an incomplete request is dropped unanswered, as a real server does, and
    its connection closed."""
    expected = int(handler.headers.get("Content-Length", "0") or 0)
    body = handler.rfile.read(expected)
    if len(body) < expected:
        handler.close_connection = True
        return None
    return body


def send_reply(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: Iterable[tuple[str, str]] = (),
    *,
    content_length: bool = True,
) -> None:
    """Write one answer; a client that already gave up (timeout) only gets its connection closed."""
    try:
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        if content_length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
    except OSError:
        handler.close_connection = True


class HookServer(LocalServer):
    """A real HTTP/1.1 server (keep-alive) on a free port in a thread. Each POST (PUT, PATCH) gets the next reply of
    the script, the last reply repeating; every request is recorded in `received`. With `secret`, the
    server checks X-Trackpipe-Signature itself (hmac) and answers 401 "bad signature" when it is wrong.

        with HookServer(Reply(500), Reply(200)) as server:
            ... post to server.url ...
    """

    METHODS = ("POST", "PUT", "PATCH")

    def __init__(self, *replies: Reply, secret: str | None = None) -> None:
        self.secret = secret
        self.received: list[Received] = []
        self._script = list(replies) or [Reply()]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/hook"

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
        body = read_body(handler)
        if body is None:
            return
        reply = self._next_reply()
        if self.secret is not None and not self._signed(handler, body):
            reply = Reply(401, b"bad signature")
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.received.append(
                Received(
                    handler.path,
                    headers,
                    body,
                    handler.client_address[1],
                    reply.status,
                    time.monotonic(),
                    handler.command,
                )
            )
        if reply.delay:
            self._stopping.wait(reply.delay)
        send_reply(handler, reply.status, reply.body, reply.headers)

    def stop(self) -> None:
        self._stopping.set()
        super().stop()


def line_event_id(line: bytes) -> str | None:
    """The event id of one line of the file destination's output; None for a torn or blank line."""
    try:
        return msgspec.json.decode(line)["context"]["event_id"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return None


def file_ids(out_dir: Path) -> Counter[str]:
    """Every event id in a file destination's output, with how often it was written."""
    found: Counter[str] = Counter()
    for path in sorted(out_dir.glob("*.jsonl")) if out_dir.exists() else []:
        for line in path.read_bytes().splitlines():
            event_id = line_event_id(line)
            if event_id is not None:
                found[event_id] += 1
    return found
