"""ingest.protocol: each response leaves in one transport write (the head waits for the body).

The edge's protocol is driven here with a recording transport: what it writes, in how many writes,
and that nothing is held back (HEAD, 100-continue, streaming, a failing app, a close).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from ingest.protocol import UVICORN_SETTINGS, HeaderTimeoutProtocol

App = Callable[[dict[str, Any], Callable, Callable], Any]


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def serve(app: App, *requests: bytes) -> RecordingTransport:
    """Feeds the requests to one connection of the edge's protocol; returns what it wrote."""

    async def main() -> RecordingTransport:
        settings = {k: v for k, v in UVICORN_SETTINGS.items() if k not in ("http", "loop")}
        config = Config(app, log_level="warning", **settings)
        config.load()
        protocol = HeaderTimeoutProtocol(config=config, server_state=ServerState(), app_state={}, header_timeout=5.0)
        transport = RecordingTransport()
        protocol.connection_made(transport)
        for request in requests:
            protocol.data_received(request)
            for _ in range(50):  # let the request's task run to its end
                await asyncio.sleep(0)
        protocol.connection_lost(None)
        return transport

    return asyncio.run(main())


def answer(body: bytes = b'{"status":"ok"}', **start: Any) -> App:
    async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        await receive()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers, **start})
        await send({"type": "http.response.body", "body": body})

    return app


POST = b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def test_a_response_is_one_write_with_head_and_body() -> None:
    transport = serve(answer(), POST)
    assert len(transport.writes) == 1
    response = transport.writes[0]
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 15\r\n" in response
    assert response.endswith(b'\r\n\r\n{"status":"ok"}')


def test_keep_alive_requests_get_one_write_each() -> None:
    transport = serve(answer(), POST, POST, POST)
    assert len(transport.writes) == 3
    assert all(w.startswith(b"HTTP/1.1 200 OK") and w.endswith(b'{"status":"ok"}') for w in transport.writes)


def test_head_request_gets_its_head_although_no_body_is_written() -> None:
    transport = serve(answer(), b"HEAD /events HTTP/1.1\r\nhost: x\r\n\r\n")
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and transport.writes[0].endswith(b"\r\n\r\n")


def test_a_streamed_body_goes_out_chunk_by_chunk_the_head_with_the_first() -> None:
    async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    transport = serve(app, POST)
    assert len(transport.writes) == 2
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and transport.writes[0].endswith(b"3\r\none\r\n")
    assert transport.writes[1] == b"3\r\ntwo\r\n0\r\n\r\n"


def test_100_continue_is_written_at_once() -> None:
    written_before_answer: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        await receive()
        written_before_answer.extend(transport_of[0].writes)
        await answer()(scope, _done, send)

    async def _done() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    transport_of: list[RecordingTransport] = []
    original = RecordingTransport.__init__

    def init(self: RecordingTransport) -> None:
        original(self)
        transport_of.append(self)

    request = POST.replace(b"content-length: 2\r\n", b"content-length: 2\r\nexpect: 100-continue\r\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RecordingTransport, "__init__", init)
        transport = serve(app, request[:-2], request[-2:])
    assert written_before_answer == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert transport.writes[1].startswith(b"HTTP/1.1 200 OK")


def test_a_head_held_when_the_app_fails_goes_out_before_the_close(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        raise RuntimeError("boom")

    with caplog.at_level(logging.CRITICAL, logger="uvicorn.error"):
        transport = serve(app, POST)
    assert transport.closed
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK")
