"""The webhook receiver of `trackpipe bench e2e`, in its own process so that decoding what it
receives never competes with the load generator for a GIL.

`python -m tooling.benchsink --port P --out FILE`: answers every POST with 200 and, when
stopped (SIGTERM), writes one line per received event: `<event_id> <unix time of receipt>`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec


class _Context(msgspec.Struct):
    event_id: str | None = None


class _Event(msgspec.Struct):
    context: _Context = msgspec.field(default_factory=_Context)


class _Body(msgspec.Struct):
    batch: list[_Event]


_decoder = msgspec.json.Decoder(_Body)
_OK = [(b"content-type", b"application/json"), (b"content-length", b"2")]


class Sink:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.arrivals: list[tuple[str, float]] = []

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.dump()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        now = time.time()
        body = b"".join(chunks)
        if scope["path"] != "/healthz":
            for event in _decoder.decode(body).batch:
                self.arrivals.append((event.context.event_id or "-", now))
        await send({"type": "http.response.start", "status": 200, "headers": _OK})
        await send({"type": "http.response.body", "body": b"{}"})

    def dump(self) -> None:
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text("".join(f"{event_id} {at:.6f}\n" for event_id, at in self.arrivals))
        tmp.replace(self.out)


def read_arrivals(path: Path) -> tuple[dict[str, float], int]:
    """First receipt time per event id, and how many receipts were repeats."""
    arrivals: dict[str, float] = {}
    duplicates = 0
    for line in path.read_text().splitlines():
        event_id, _, at = line.rpartition(" ")
        if event_id in arrivals:
            duplicates += 1
        else:
            arrivals[event_id] = float(at)
    return arrivals, duplicates


def main() -> None:
    import uvicorn

    from ingest.protocol import UVICORN_SETTINGS

    parser = argparse.ArgumentParser(description="webhook receiver for `trackpipe bench e2e`")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(Sink(args.out), host="127.0.0.1", port=args.port, log_level="warning", **UVICORN_SETTINGS)


if __name__ == "__main__":
    main()
