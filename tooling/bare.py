"""The baseline the edge is measured against: an ASGI app that reads the body and answers 200."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_OK = b'{"status":"ok"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_OK)).encode())]


async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _OK})


def main() -> None:
    """`python -m tooling.bare --port P`: served with exactly the edge's uvicorn settings."""
    import argparse

    import uvicorn

    from ingest.protocol import UVICORN_SETTINGS

    parser = argparse.ArgumentParser(description="the bare ASGI baseline for `trackpipe bench`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **UVICORN_SETTINGS)


if __name__ == "__main__":
    main()
