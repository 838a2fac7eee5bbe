"""Running the edge under uvicorn, one process or several."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from pathlib import Path

import uvicorn

from trackpipe.config import CONFIG_ENV, Config, config_path, load_from
from trackpipe.keys import bind_rq_prefix

# uvicorn settings of the edge (see README, "Operating the edge").
UVICORN_SETTINGS = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",
    "timeout_keep_alive": 5,
    "backlog": 2048,
    "access_log": False,
    "timeout_graceful_shutdown": 30,
}


class _Stopped(Exception):
    pass


def serve(config: uvicorn.Config) -> None:
    """Run uvicorn until SIGINT, SIGTERM or SIGHUP, then return normally so callers can clean up.

    uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal against the handlers
    that were in place before it started: ours turn that into a normal return instead of a
    KeyboardInterrupt traceback or an abrupt death that would skip `finally` blocks.
    """
    server = uvicorn.Server(config)

    def stopped(signum: int, frame: object) -> None:
        raise _Stopped()

    def hangup(signum: int, frame: object) -> None:
        server.should_exit = True

    handled = {signal.SIGINT: stopped, signal.SIGTERM: stopped, signal.SIGHUP: hangup}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handled.items()}
    try:
        server.run()
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def edge_server_config(config: Config, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    bind_rq_prefix(config.key_prefix)
    from ingest.app import create_app

    return uvicorn.Config(create_app(config), host=host, port=port, log_level=log_level, **UVICORN_SETTINGS)


def run_edge(config_arg: str | None, *, host: str, port: int, workers: int) -> int:
    config = load_from(config_arg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if workers == 1:
        serve(edge_server_config(config, host, port))
        return 0
    # Several processes: each loads the config itself; metrics are summed across them.
    bind_rq_prefix(config.key_prefix)
    path = config_path(config_arg)
    assert path is not None
    os.environ[CONFIG_ENV] = str(Path(path).resolve())
    metrics_dir = tempfile.mkdtemp(prefix="trackpipe-metrics-")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
    uvicorn.run(
        "ingest.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        **UVICORN_SETTINGS,
    )
    return 0
