"""Serving an ASGI app under uvicorn: the signal handling and socket binding the edge and the console share."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable

import uvicorn

log = logging.getLogger("trackpipe")


class _Stopped(Exception):
    pass


def serve(
    config: uvicorn.Config, on_hangup: Callable[[], None] | None = None, sockets: list[socket.socket] | None = None
) -> None:
    """Run uvicorn until SIGINT or SIGTERM (or SIGHUP without `on_hangup`), then return normally so
    callers can clean up. With `on_hangup`, SIGHUP calls it instead (config reload).

    uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal against the handlers
    that were in place before it started: ours turn that into a normal return instead of a
    KeyboardInterrupt traceback or an abrupt death that would skip `finally` blocks.
    """
    server = uvicorn.Server(config)

    def stopped(signum: int, frame: object) -> None:
        raise _Stopped()

    def hangup(signum: int, frame: object) -> None:
        if on_hangup is None:
            server.should_exit = True
        else:
            on_hangup()

    handled = {signal.SIGINT: stopped, signal.SIGTERM: stopped, signal.SIGHUP: hangup}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handled.items()}
    try:
        server.run(sockets=sockets)
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the server starts so that a taken port is an error the
    command can name (uvicorn alone only logs it and exits 1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
