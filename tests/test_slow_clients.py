"""Slow and idle clients against the real edge (`trackpipe edge` under uvicorn) and a real valkey.

README, "Operating the edge": a body that has not fully arrived `edge.body_timeout_seconds` after the
headers gets 408 and only ever holds a coroutine, never the event loop; a connection whose request
headers are not complete `edge.header_timeout_seconds` after it opened (or after a new request began
on a kept-alive connection) is closed (ingest/protocol.py); above `edge.max_connections` open
connections new ones get 503 at once (uvicorn's `limit_concurrency`); idle keep-alive connections
close after 5 s (`timeout_keep_alive` in ingest/protocol.py).

Clients here are raw sockets, so that they can be as slow, as idle or as rude as they like.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from tests.support import TEST_KEY, config_text, poll_until, running_edge, stored_events

QUERY = f"tc_s=29&token={TEST_KEY}"
AUTH = {"tc_s": "29", "token": TEST_KEY}
JSON = {"content-type": "application/json"}
# seconds: what "answered quickly" means here. A request held up by a slow client would wait for the
# 1.5-2 s timeouts below; 1 s still tells the two apart and leaves room for a loaded machine.
FAST = 1.0
# Room past a timeout before "not closed" counts as a failure: the bugs these catch keep a
# connection open forever, so a generous margin loses nothing and a busy machine does not fail.
MARGIN = 5.0
KEEP_ALIVE = 5.0  # UVICORN_SETTINGS["timeout_keep_alive"] in ingest/protocol.py
HEADER_TIMEOUT = 5.0  # the default of edge.header_timeout_seconds


def event(marker: str) -> bytes:
    return json.dumps({"event_name": "page_view", "context": {"event_id": marker}}, separators=(",", ":")).encode()


def write_config(
    tmp_path: Path,
    redis_url: str,
    *,
    body_timeout: float,
    max_connections: int | None = None,
    mode: str = "compat",
    header_timeout: float | None = None,
) -> Path:
    settings = f"body_timeout_seconds = {body_timeout}\n"
    if max_connections is not None:
        settings += f"max_connections = {max_connections}\n"
    if header_timeout is not None:
        settings += f"header_timeout_seconds = {header_timeout}\n"
    text = config_text(redis_url, mode=mode).replace("[edge]\n", "[edge]\n" + settings)
    assert settings in text
    path = tmp_path / "trackpipe.toml"
    path.write_text(text)
    return path


def port_of(base: str) -> int:
    port = urlsplit(base).port
    assert port is not None
    return port


def head(
    content_length: int,
    *,
    close: bool = False,
    path: str = "/events",
    query: str = QUERY,
    content_type: str = "application/json",
) -> bytes:
    lines = [
        f"POST {path}?{query} HTTP/1.1",
        "Host: edge",
        f"Content-Type: {content_type}",
        f"Content-Length: {content_length}",
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def pending(sock: socket.socket) -> bytes | None:
    """What the server has sent that is waiting to be read (b"" once it closed), None if nothing."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # a socket with a timeout would wait for data before peeking
    try:
        return sock.recv(65_536, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""
    finally:
        sock.settimeout(timeout)


class Answer:
    """One HTTP/1.1 response read off a raw socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket, timeout: float) -> Answer:
    """Reads exactly one response (headers and a Content-Length body) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        header_end = data.find(b"\r\n\r\n")
        if header_end >= 0:
            lines = data[:header_end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(data) >= header_end + 4 + length:
                body = data[header_end + 4 : header_end + 4 + length]
                return Answer(int(lines[0].split()[1]), headers, body)
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no complete answer within {timeout}s (got {data!r})")
        sock.settimeout(left)
        chunk = sock.recv(65_536)
        if not chunk:
            raise AssertionError(f"connection closed before a complete answer (got {data!r})")
        data += chunk


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closes the connection (reading and dropping what it sends), else None."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(65_536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - start
        if not chunk:
            return time.monotonic() - start


def timed_post(base: str, marker: str) -> tuple[int, float]:
    """A normal client: its own connection, one event; (status, seconds taken)."""
    start = time.monotonic()
    response = httpx.post(f"{base}/events", params=AUTH, headers=JSON, content=event(marker), timeout=10)
    return response.status_code, time.monotonic() - start


def edge_pid(port: int) -> int:
    """The pid of the edge child process listening on `port` (found in /proc: a child of this process
    whose command line is `... commands.main edge ... --port <port>`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"edge" in argv and b"--port" in argv and str(port).encode() in argv:
            found.append(int(entry.name))
    assert len(found) == 1, f"edge processes on port {port}: {found}"
    return found[0]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


class Dripper(threading.Thread):
    """Sends a request's headers, then its body one byte every `interval` seconds, until the server
    answers (or closes). `answer`, `answered_at` and `headers_sent_at` say what happened, when."""

    def __init__(self, port: int, body: bytes, interval: float = 0.2, keep_dripping: bool = False) -> None:
        super().__init__(daemon=True)
        self.sock = connect(port)
        self.body = body
        self.interval = interval
        self.keep_dripping = keep_dripping  # go on after the answer, as a client that does not read would
        self.answer: Answer | None = None
        self.error: BaseException | None = None
        self.headers_sent_at = 0.0
        self.answered_at = 0.0
        self.bytes_sent = 0
        self.server_closed_at: float | None = None

    def run(self) -> None:
        try:
            self.sock.sendall(head(len(self.body)))
            self.headers_sent_at = time.monotonic()
            for byte in self.body:
                try:
                    self.sock.sendall(bytes([byte]))
                except OSError:  # the server closed the connection
                    self.server_closed_at = time.monotonic()
                    # Its answer may have come with the close, before this byte (a server that
                    # closes with unread bytes resets the connection; what it sent stays readable).
                    if self.answer is None and pending(self.sock):
                        self._read_answer()
                    return
                self.bytes_sent += 1
                if self.answer is None and pending(self.sock):
                    self._read_answer()
                    if not self.keep_dripping:
                        return
                elif self.answer is not None and pending(self.sock) == b"":
                    self.server_closed_at = time.monotonic()
                    return
                time.sleep(self.interval)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _read_answer(self) -> None:
        self.answer = read_answer(self.sock, 5)
        self.answered_at = time.monotonic()


# -- a dripping body ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_dripping_body_gets_408_while_other_clients_are_served(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    config = write_config(tmp_path, valkey_url, body_timeout=2.0)
    with running_edge(config) as base:
        dripping = event("dripped")  # 1 byte every 0.2 s: ~9 s for the whole body, far past the timeout
        dripper = Dripper(port_of(base), dripping)
        dripper.start()
        poll_until(lambda: dripper.bytes_sent >= 2, 5, "the dripper did not start")
        served = []
        for i in range(6):
            status, took = timed_post(base, f"fast-{i}")
            served.append((status, took, time.monotonic()))
        dripper.join(timeout=10)
        assert dripper.error is None, dripper.error
        assert dripper.answer is not None, "the dripping client got no answer"

        # The dripping request was answered 408, about body_timeout_seconds after its headers.
        assert dripper.answer.status == 408
        assert dripper.answer.headers["content-type"] == "application/json"
        assert dripper.answer.json() == {"status": "error", "error": "body not received within 2 s"}
        waited = dripper.answered_at - dripper.headers_sent_at
        # Well before the ~9 s the whole body would take: the timeout ended it, not the body.
        assert 1.9 <= waited <= 2.0 + MARGIN, f"408 after {waited:.2f}s, body_timeout_seconds is 2.0"
        assert dripper.bytes_sent < len(dripping), "the whole body arrived: no timeout was needed"

        # Meanwhile every other client was answered at once: the drip held a coroutine, not the loop.
        for status, took, done_at in served:
            assert status == 200
            assert took < FAST, f"a normal request took {took:.3f}s while a client dripped"
            assert done_at < dripper.answered_at, "normal requests were only served once the drip was over"
        assert timed_post(base, "after")[0] == 200
        dripper.sock.close()

    markers = [json.loads(raw)["context"]["event_id"] for _, _, raw in stored_events(valkey_client)]
    assert sorted(markers) == sorted([*(f"fast-{i}" for i in range(6)), "after"])  # the dripped one is not stored


def test_a_408_frees_the_connection_of_a_client_that_keeps_dripping(tmp_path: Path, valkey_url: str) -> None:
    config = write_config(tmp_path, valkey_url, body_timeout=1.0)
    with running_edge(config) as base:
        dripper = Dripper(port_of(base), event("still-dripping") + b" " * 40, keep_dripping=True)
        dripper.start()
        dripper.join(timeout=4.0)  # 1 s to the 408, then up to 3 s for the server to let go
        try:
            assert dripper.error is None, dripper.error
            assert dripper.answer is not None and dripper.answer.status == 408
            assert dripper.answer.headers.get("connection") == "close" or dripper.server_closed_at is not None, (
                f"3 s after the 408 the client still holds its connection ({dripper.bytes_sent} bytes dripped)"
            )
        finally:
            dripper.sock.close()
            dripper.join(timeout=5)


# -- many slow connections at once -------------------------------------------------------------


@pytest.mark.slow
def test_200_stalled_bodies_do_not_stop_a_normal_client(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    # A body timeout long enough to open 200 connections and time 5 requests before it, even on a busy
    # machine (max_connections: the default 4096).
    config = write_config(tmp_path, valkey_url, body_timeout=4.0)
    with running_edge(config) as base, sockets() as stalled:
        port = port_of(base)
        opened_at = time.monotonic()
        for _ in range(200):
            sock = connect(port)
            stalled.append(sock)
            sock.sendall(head(100))  # headers, then nothing: the body never comes
        for i in range(5):
            status, took = timed_post(base, f"normal-{i}")
            assert status == 200
            assert took < FAST, f"a normal request took {took:.3f}s beside 200 stalled ones"
        still_waiting = [sock for sock in stalled if pending(sock) is None]
        assert len(still_waiting) == 200, "stalled requests were answered before their body timeout"
        assert time.monotonic() - opened_at < 4.0, "too slow to check while the stalled requests were held"

        answers = [read_answer(sock, 4.0 + MARGIN) for sock in stalled]
        assert {a.status for a in answers} == {408}
        assert {a.json()["error"] for a in answers} == {"body not received within 4 s"}
        assert time.monotonic() - opened_at < 4.0 + MARGIN
        assert timed_post(base, "normal-after")[0] == 200
    markers = sorted(json.loads(raw)["context"]["event_id"] for _, _, raw in stored_events(valkey_client))
    assert markers == sorted([*(f"normal-{i}" for i in range(5)), "normal-after"])


@pytest.mark.slow
def test_connections_over_max_connections_get_503_at_once(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    limit = 32
    config = write_config(tmp_path, valkey_url, body_timeout=2.0, max_connections=limit)
    with running_edge(config) as base, sockets() as held, sockets() as extra:
        port = port_of(base)
        # uvicorn counts the connection being decided: limit - 1 requests in flight fill it up.
        for _ in range(limit - 1):
            sock = connect(port)
            held.append(sock)
            sock.sendall(head(100))
            time.sleep(0.005)
        time.sleep(0.3)  # room for a wrong early answer to arrive
        assert [pending(sock) for sock in held] == [None] * len(held), "a held request was answered early"

        for i in range(20):
            sock = connect(port)
            extra.append(sock)
            started = time.monotonic()
            sock.sendall(head(len(event(f"extra-{i}"))) + event(f"extra-{i}"))
            answer = read_answer(sock, FAST)
            assert answer.status == 503, (i, answer.status, answer.body)
            assert time.monotonic() - started < FAST
            # Kept open, it would stay for the 5 s keep-alive timeout.
            assert closed_within(sock, 3.0) is not None, "a refused connection was kept open"
        status, took = timed_post(base, "refused")
        assert status == 503 and took < FAST

        # The held requests end with 408; once their clients go, the slots are free again.
        assert {read_answer(sock, 4.0).status for sock in held} == {408}
        for sock in held:
            sock.close()
        poll_until(lambda: timed_post(base, "served")[0] == 200, 3.0, "no slot came free after the 408s")
    markers = {json.loads(raw)["context"]["event_id"] for _, _, raw in stored_events(valkey_client)}
    assert markers == {"served"}  # nothing refused with 503 was stored


@pytest.mark.slow
def test_connections_that_never_send_a_request_are_let_go(tmp_path: Path, valkey_url: str) -> None:
    # uvicorn alone arms no timer before a request's headers are complete: these connections were
    # kept forever and, at edge.max_connections, starved everyone. Default header timeout (5 s).
    limit = 16
    config = write_config(tmp_path, valkey_url, body_timeout=1.0, max_connections=limit)
    with running_edge(config) as base, sockets() as idle:
        port = port_of(base)
        for i in range(limit):
            sock = connect(port)
            idle.append(sock)
            if i % 2:
                sock.sendall(b"POST /events?tc_s=29 HTTP/1.1\r\nHost: ed")  # a request that never ends
        assert timed_post(base, "starved")[0] == 503
        # Give the server its header timeout (5 s by default) and the margin.
        deadline = time.monotonic() + HEADER_TIMEOUT + MARGIN
        while timed_post(base, "served")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert timed_post(base, "served")[0] == 200, f"{limit} silent connections still starve the edge"


def test_a_request_answered_before_its_body_was_read_does_not_keep_its_connection(
    tmp_path: Path, valkey_url: str
) -> None:
    config = write_config(tmp_path, valkey_url, body_timeout=1.0, mode="strict")
    early = {
        401: head(10_000_000, query="tc_s=29&token=wrong-key-0123456789"),
        413: head(10_000_000),
        415: head(1_000, content_type="text/plain"),
    }
    with running_edge(config) as base, sockets() as opened:
        port = port_of(base)
        answered_at = {}
        for status, request in early.items():
            sock = connect(port)
            opened.append(sock)
            sock.sendall(request)
            answer = read_answer(sock, FAST)
            assert answer.status == status, (answer.status, answer.body)
            answered_at[status] = time.monotonic()
            if answer.headers.get("connection") != "close":
                sock.sendall(b"x")  # one byte of the announced body, then nothing
        kept = {}
        for sock, (status, since) in zip(opened, answered_at.items(), strict=True):
            if closed_within(sock, since + KEEP_ALIVE + MARGIN - time.monotonic()) is None:
                kept[status] = round(time.monotonic() - since, 1)
        assert kept == {}, f"connections still open (status: seconds since the answer): {kept}"


# -- memory over many connections ---------------------------------------------------------------


def one_wave(port: int, size: int, wave: int) -> list[str]:
    """`size` connections at once, of four kinds: a whole request (its marker is returned once it got
    200), headers and half a body then a reset, headers then a close, a connect then a close."""
    stored: list[str] = []
    with sockets() as opened:
        kinds = []
        for i in range(size):
            sock = connect(port)
            opened.append(sock)
            kind = i % 4
            kinds.append(kind)
            marker = f"w{wave}-{i}"
            body = event(marker)
            if kind == 0:
                sock.sendall(head(len(body), close=True) + body)
            elif kind == 1:
                sock.sendall(head(len(body)) + body[: len(body) // 2])
            elif kind == 2:
                sock.sendall(head(len(body)))
        for i, (sock, kind) in enumerate(zip(opened, kinds, strict=True)):
            if kind == 0:
                answer = read_answer(sock, 5.0)
                assert answer.status == 200, (answer.status, answer.body)
                stored.append(f"w{wave}-{i}")
            elif kind == 1:  # an abortive close: the server sees a reset mid-body
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return stored


@pytest.mark.slow
def test_memory_and_connection_slots_stay_bounded_over_1000_connections(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    # A low limit makes leaked connections visible: 64 of them and every request would get 503.
    config = write_config(tmp_path, valkey_url, body_timeout=1.0, max_connections=64)
    with running_edge(config) as base:
        port = port_of(base)
        pid = edge_pid(port)
        stored = []
        for wave in range(4):  # warm-up: imports, allocator pools, the Redis connection
            stored += one_wave(port, 25, wave)
        time.sleep(0.3)
        before = rss_bytes(pid)
        for wave in range(4, 4 + 40):  # 40 x 25 = 1,000 connections
            stored += one_wave(port, 25, wave)
        time.sleep(0.5)
        after = rss_bytes(pid)
        grown = after - before
        assert grown < 10 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB ({before} -> {after} bytes)"
        # No connection slot leaked: with limit - 2 requests held, one more is still served.
        with sockets() as held:
            for _ in range(62):
                sock = connect(port)
                held.append(sock)
                sock.sendall(head(100))
            time.sleep(0.2)
            status, took = timed_post(base, "end")
            assert status == 200 and took < FAST, "connections of the 1,000 above still count against max_connections"
            stored.append("end")
            assert [pending(sock) for sock in held] == [None] * len(held)
    assert len(stored) == 4 * 7 + 40 * 7 + 1  # 7 whole requests per wave of 25
    markers = sorted(json.loads(raw)["context"]["event_id"] for _, _, raw in stored_events(valkey_client))
    assert markers == sorted(stored), "an aborted body was stored, or an answered one was not"


# -- keep-alive ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_idle_keep_alive_connections_are_closed_after_5_s_and_a_408_at_once(tmp_path: Path, valkey_url: str) -> None:
    config = write_config(tmp_path, valkey_url, body_timeout=1.0)
    with running_edge(config) as base, sockets() as opened:
        port = port_of(base)
        served, timed_out = connect(port), connect(port)
        opened += [served, timed_out]
        body = event("keep-alive")
        served.sendall(head(len(body)) + body)  # HTTP/1.1: keep-alive unless told otherwise
        answer = read_answer(served, FAST)
        served_at = time.monotonic()
        assert answer.status == 200 and "close" not in answer.headers.get("connection", "")

        # Meanwhile: a request whose body never comes gets its 408 and its connection closed with it.
        timed_out.sendall(head(100))
        late = read_answer(timed_out, 3.0)
        assert late.status == 408 and late.headers.get("connection") == "close"
        assert closed_within(timed_out, 3.0) is not None, "the connection of a 408 stayed open"

        # The served connection, idle since its answer, is closed by uvicorn's keep-alive timeout.
        assert pending(served) is None, "the idle connection was closed early"
        closed = closed_within(served, served_at + KEEP_ALIVE + MARGIN - time.monotonic())
        assert closed is not None, "an idle keep-alive connection was not closed"
        idle_for = time.monotonic() - served_at
        assert KEEP_ALIVE - 0.5 <= idle_for <= KEEP_ALIVE + MARGIN, f"closed after {idle_for:.2f}s idle"


# -- request headers that never complete ------------------------------------------------------------


def whole_request(marker: str) -> bytes:
    body = event(marker)
    return head(len(body)) + body


def drip_until_closed(sock: socket.socket, data: bytes, interval: float, limit: float) -> tuple[int, float | None]:
    """Sends `data` one byte every `interval` seconds for at most `limit` seconds; (bytes sent, seconds
    until the server closed the connection or None). Raises if the server answers instead."""
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < limit:
        seen = pending(sock)
        if seen == b"":
            return sent, time.monotonic() - start
        assert seen is None, f"the server answered a request whose headers never completed: {seen!r}"
        if sent < len(data):
            try:
                sock.sendall(data[sent : sent + 1])
            except OSError:  # reset by the server
                return sent, time.monotonic() - start
            sent += 1
        time.sleep(interval)
    return sent, None


def header_timeouts(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith("trackpipe_edge_header_timeouts_total "):
            return float(line.split()[1])
    raise AssertionError("trackpipe_edge_header_timeouts_total is not on /metrics")


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(tmp_path: Path, valkey_url: str) -> None:
    config = write_config(tmp_path, valkey_url, body_timeout=5.0, header_timeout=1.5)
    with running_edge(config) as base, sockets() as opened:
        before = header_timeouts(base)
        started = time.monotonic()
        sock = connect(port_of(base))
        opened.append(sock)
        closed = closed_within(sock, 1.5 + 4.0)
        assert closed is not None, "a connection that sent nothing is still open 5.5 s later"
        took = time.monotonic() - started
        assert took >= 1.4, f"closed after {took:.2f}s, before the 1.5 s header timeout"
        assert header_timeouts(base) == before + 1
        assert timed_post(base, "after")[0] == 200


@pytest.mark.slow
def test_half_sent_headers_are_closed_after_the_header_timeout(tmp_path: Path, valkey_url: str) -> None:
    config = write_config(tmp_path, valkey_url, body_timeout=5.0, header_timeout=1.5)
    with running_edge(config) as base, sockets() as opened:
        request = whole_request("half")
        started = time.monotonic()
        sock = connect(port_of(base))
        opened.append(sock)
        sock.sendall(request[: request.index(b"Content-Type")])  # the request line and the Host header
        closed = closed_within(sock, 1.5 + 4.0)
        assert closed is not None, "a connection with half its headers is still open 5.5 s later"
        assert time.monotonic() - started >= 1.4


@pytest.mark.slow
def test_headers_dripped_byte_by_byte_past_the_timeout_are_closed(tmp_path: Path, valkey_url: str) -> None:
    config = write_config(tmp_path, valkey_url, body_timeout=5.0, header_timeout=1.5)
    with running_edge(config) as base, sockets() as opened:
        request = whole_request("dripped")
        sock = connect(port_of(base))
        opened.append(sock)
        # One byte every 0.1 s: the headers alone would take ~15 s; each byte shows the server data.
        sent, closed = drip_until_closed(sock, request, 0.1, 1.5 + 4.0)
        assert closed is not None, f"still open after {sent} bytes dripped over 5.5 s"
        assert closed >= 1.4, f"closed after {closed:.2f}s, before the 1.5 s header timeout"
        assert sent < request.index(b"\r\n\r\n"), "the headers were complete: no timeout was needed"


@pytest.mark.slow
def test_a_kept_alive_connection_dripping_its_next_request_is_closed(tmp_path: Path, valkey_url: str) -> None:
    # uvicorn's keep-alive timer stops at the first byte of the next request; the header timer takes over.
    config = write_config(tmp_path, valkey_url, body_timeout=5.0, header_timeout=1.5)
    with running_edge(config) as base, sockets() as opened:
        sock = connect(port_of(base))
        opened.append(sock)
        sock.sendall(whole_request("first"))
        answer = read_answer(sock, 5.0)
        assert answer.status == 200 and "close" not in answer.headers.get("connection", "")
        second = whole_request("second")
        sent, closed = drip_until_closed(sock, second, 0.1, 1.5 + 4.0)
        assert closed is not None, f"still open after {sent} bytes of a second request dripped over 5.5 s"
        assert closed >= 1.4
        assert sent < second.index(b"\r\n\r\n"), "the second request's headers were complete"


@pytest.mark.slow
def test_a_keep_alive_client_with_pauses_is_not_affected(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    # Pauses longer than the header timeout but shorter than the keep-alive timeout: the connection
    # is idle between requests, which is keep-alive's business, not the header timer's.
    config = write_config(tmp_path, valkey_url, body_timeout=5.0, header_timeout=1.5)
    with running_edge(config) as base, sockets() as opened:
        sock = connect(port_of(base))
        opened.append(sock)
        markers = [f"kept-{i}" for i in range(4)]
        for i, marker in enumerate(markers):
            if i:
                time.sleep(2.5)  # > header timeout (1.5 s), < keep-alive timeout (5 s)
                assert pending(sock) is None, f"the connection was closed in the pause before request {i}"
            request = whole_request(marker)
            if i == 2:  # headers in two parts, well within the header timeout
                split = request.index(b"Content-Type")
                sock.sendall(request[:split])
                time.sleep(0.3)
                sock.sendall(request[split:])
            else:
                sock.sendall(request)
            answer = read_answer(sock, 5.0)
            assert answer.status == 200, (i, answer.status, answer.body)
            assert "close" not in answer.headers.get("connection", "")
        # Two pipelined requests in one write: the second waits behind the first, whole.
        time.sleep(2.5)
        markers += ["piped-0", "piped-1"]
        sock.sendall(whole_request("piped-0") + whole_request("piped-1"))
        data, deadline = b"", time.monotonic() + 5.0
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):  # both answers, whole (JSON bodies)
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65_536)
            assert chunk, f"closed before both pipelined answers: {data!r}"
            data += chunk
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 2, data
    stored = sorted(json.loads(raw)["context"]["event_id"] for _, _, raw in stored_events(valkey_client))
    assert stored == sorted(markers)


@pytest.mark.slow
def test_the_header_timeout_does_not_cut_a_body_wait_or_a_response(tmp_path: Path, valkey_url: str) -> None:
    # Complete headers stop the header timer: a missing body gets its 408 at the body timeout.
    config = write_config(tmp_path, valkey_url, body_timeout=2.5, header_timeout=1.0)
    with running_edge(config) as base, sockets() as opened:
        sock = connect(port_of(base))
        opened.append(sock)
        sent_at = time.monotonic()
        sock.sendall(head(100))
        answer = read_answer(sock, 2.5 + 4.0)
        assert answer.status == 408, (answer.status, answer.body)
        assert answer.json() == {"status": "error", "error": "body not received within 2.5 s"}
        assert time.monotonic() - sent_at >= 2.4


@pytest.mark.slow
def test_200_stalled_headers_do_not_stop_a_normal_client(tmp_path: Path, valkey_url: str) -> None:
    config = write_config(tmp_path, valkey_url, body_timeout=5.0, header_timeout=2.0)
    with running_edge(config) as base, sockets() as stalled:
        port = port_of(base)
        for i in range(200):
            sock = connect(port)
            stalled.append(sock)
            if i % 2:
                sock.sendall(b"POST /events?tc_s=29 HTTP/1.1\r\nHost: ed")
        for i in range(5):
            status, took = timed_post(base, f"beside-stalled-{i}")
            assert status == 200
            assert took < 2.0, f"a normal request took {took:.3f}s beside 200 stalled connections"
        deadline = time.monotonic() + 2.0 + 6.0  # one deadline for all: each one closes by itself
        closed = [closed_within(sock, deadline - time.monotonic()) for sock in stalled]
        assert None not in closed, f"{closed.count(None)} of 200 stalled connections still open"
        assert timed_post(base, "after-stalled")[0] == 200


@pytest.mark.slow
def test_the_header_timeout_holds_with_several_edge_processes(tmp_path: Path, valkey_url: str) -> None:
    # `--workers N` goes through uvicorn's process supervisor and `ingest.app:create_app_from_env`.
    config = write_config(tmp_path, valkey_url, body_timeout=5.0, header_timeout=1.5)
    with running_edge(config, "--workers", "2") as base, sockets() as opened:
        port = port_of(base)
        for _ in range(4):  # the kernel spreads them over both processes
            opened.append(connect(port))
        started = time.monotonic()
        for sock in opened:
            assert closed_within(sock, started + 1.5 + 5.0 - time.monotonic()) is not None
        assert timed_post(base, "workers")[0] == 200
