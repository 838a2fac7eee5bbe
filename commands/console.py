"""`trackpipe console`: the admin API in its own process."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from commands.serving import bind_socket, serve
from trackpipe.config import Config, load_from
from trackpipe.logs import setup_logging

log = logging.getLogger("trackpipe")


def console_server_config(config: Config, log_level: str = "info") -> uvicorn.Config:
    """uvicorn settings of the console; it listens on a socket the caller binds (see bind_socket)."""
    from console.app import create_app

    # Plain settings: the console is an operator's tool, not a hot path. No access log (kept off
    # everywhere), and log_config=None: uvicorn logs through trackpipe.logs' JSON handler.
    return uvicorn.Config(
        create_app(config),
        log_level=log_level,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )


def run_console(config_arg: str | None, *, host: str, port: int) -> int:
    """`trackpipe console`: the admin API in a process of its own."""
    config = load_from(config_arg)
    setup_logging()
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        print(f"trackpipe console: --host {host} --port {port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    server_config = console_server_config(config)
    log.info("console on http://%s:%d", host, sock.getsockname()[1])

    def hangup() -> None:
        log.warning("SIGHUP: the console reads its config at start; restart it to apply changes")

    try:
        serve(server_config, on_hangup=hangup, sockets=[sock])
    finally:
        sock.close()
    return 0


def run_console_command(args: argparse.Namespace) -> int:
    return run_console(args.config, host=args.host, port=args.port)
