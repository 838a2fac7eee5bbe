"""`trackpipe dev` end to end, as a user runs it: a real process in a fresh working directory.

Each run is the real console script in its own session (so Ctrl-C can be sent to the whole
process group, as a terminal does), with stdout read line by line while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from tests.support import free_port, poll_until, wait_for_http
from trackpipe.keys import KeyLayout

TRACKPIPE = Path(sys.executable).parent / "trackpipe"
READY_LINE = "Ctrl-C stops everything."
# Variables that would change what `trackpipe dev` does; a user trying it out has none of them.
SCRUBBED_ENV = ("TRACKPIPE_CONFIG", "TRACKPIPE_REDIS_URL", "RQ_KEY_PREFIX", "PROMETHEUS_MULTIPROC_DIR")


def dev_env(*, unbuffered: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def pid_alive(pid: int) -> bool:
    """True while `pid` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} (waited {timeout}s)")


class DevRun:
    """One `trackpipe dev` process; stdout collected line by line by a reader thread."""

    def __init__(self, cwd: Path, port: int, *extra: str, unbuffered: bool = True) -> None:
        self.port = port
        self.console_port = free_port()  # not the default 8081: tests (and other runs) share the machine
        self.stderr_path = cwd.parent / f"dev-stderr-{port}.txt"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [str(TRACKPIPE), "dev", "--port", str(port), "--console-port", str(self.console_port), *extra],
            cwd=cwd,
            env=dev_env(unbuffered=unbuffered),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.valkey_pid: int | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(
                    f"trackpipe dev exited with {self.proc.returncode} before printing {text!r}\n"
                    f"stdout:\n{self.stdout}\nstderr:\n{self.stderr()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout}s\nstdout:\n{self.stdout}\nstderr:\n{self.stderr()}")

    def wait_ready(self) -> None:
        self.wait_for_line(READY_LINE)
        wait_for_http(f"http://127.0.0.1:{self.port}/healthz", timeout=20, proc=self.proc)

    @property
    def redis_url(self) -> str:
        match = re.search(r"^embedded server: (redis://\S+)", self.stdout, re.MULTILINE)
        assert match, f"no embedded server URL in:\n{self.stdout}"
        return match.group(1)

    @property
    def redis_port(self) -> int:
        port = urlsplit(self.redis_url).port
        assert port is not None
        return port

    @property
    def console(self) -> str:
        match = re.search(r"^console: +(http://\S+)", self.stdout, re.MULTILINE)
        assert match, f"no console line in:\n{self.stdout}"
        return match.group(1)

    @property
    def inspector_curl(self) -> str:
        match = re.search(r"^inspector: +(curl .+)$", self.stdout, re.MULTILINE)
        assert match, f"no inspector line in:\n{self.stdout}"
        return match.group(1).strip()

    @property
    def curl(self) -> str:
        for previous, line in zip(self.lines, self.lines[1:], strict=False):
            if previous.strip() == "try:" and line.strip().startswith("curl "):
                return line.strip()
        raise AssertionError(f"no ready curl line after 'try:' in:\n{self.stdout}")

    def remember_valkey_pid(self) -> int:
        client = redis.Redis.from_url(self.redis_url)
        try:
            self.valkey_pid = int(client.info("server")["process_id"])
        finally:
            client.close()
        assert self.valkey_pid != self.proc.pid
        return self.valkey_pid

    def interrupt(self, *, whole_group: bool) -> int:
        """Ctrl-C: SIGINT to the process group (as a terminal does) or to the dev process alone."""
        if whole_group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"trackpipe dev did not exit after SIGINT\nstderr:\n{self.stderr()}") from None

    def kill(self) -> None:
        """Cleanup: nothing this run started may outlive the test."""
        if self.valkey_pid is None and re.search(r"^embedded server: ", self.stdout, re.MULTILINE):
            # The server may live outside the dev process group: find it before the group goes.
            with contextlib.suppress(redis.RedisError, AssertionError):
                self.remember_valkey_pid()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.valkey_pid is not None and pid_alive(self.valkey_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.valkey_pid, signal.SIGKILL)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@contextlib.contextmanager
def dev_run(cwd: Path, *extra: str, unbuffered: bool = True) -> Iterator[DevRun]:
    run = DevRun(cwd, free_port(), *extra, unbuffered=unbuffered)
    try:
        yield run
    finally:
        run.kill()


def run_curl(command: str) -> tuple[int, str]:
    """Run the printed curl command exactly as a user would paste it, plus `-w` to report the status."""
    done = subprocess.run(
        command + " -w '\\n%{http_code}'", shell=True, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr}"
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def curl_token(command: str) -> str:
    url = next(arg for arg in shlex.split(command) if arg.startswith("http://"))
    return parse_qs(urlsplit(url).query)["token"][0]


def ingest_job_ids(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [i.decode() for i in client.lrange(KeyLayout().queue("ingest"), 0, -1)]
    finally:
        client.close()


def inspector_records(redis_url: str, source: str = "demo-web") -> list[dict]:
    """The inspector's records of a source, oldest first."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(raw) for raw in reversed(client.lrange(KeyLayout().inspector(source), 0, -1))]
    finally:
        client.close()


def ingest_drained(redis_url: str) -> bool:
    """Nothing waits on the ingest queue or runs: every stored job was processed."""
    client = redis.Redis.from_url(redis_url)
    try:
        layout = KeyLayout()
        return client.llen(layout.queue("ingest")) == 0 and client.zcard(f"{layout.rq_prefix}:wip:ingest") == 0
    finally:
        client.close()


def delivery_of(redis_url: str, out_dir: Path, event_id: str) -> str | None:
    """Where the demo-file delivery of the event is: written out, or a delivery job still on its way
    (waiting, running, scheduled for a retry, or failed). None if there is no trace of it."""
    for path in sorted(out_dir.glob("*.jsonl")) if out_dir.is_dir() else []:
        for line in path.read_text(errors="replace").splitlines():
            if f'"{event_id}"' in line:
                return f"written to {path.name}"
    client = redis.Redis.from_url(redis_url)
    try:
        prefix = KeyLayout().rq_prefix
        for queue in ("deliver:demo-file", "retry:demo-file"):
            if client.llen(f"{prefix}:queue:{queue}"):
                return f"queued on {queue}"
            for registry in ("wip", "scheduled", "failed"):
                if client.zcard(f"{prefix}:{registry}:{queue}"):
                    return f"in the {registry} registry of {queue}"
        return None
    finally:
        client.close()


def worker_pids(run: DevRun) -> list[int]:
    """The worker processes `trackpipe dev` says it started."""
    return [int(pid) for pid in re.findall(r"^worker:\s+pid (\d+)", run.stdout, re.MULTILINE)]


def worker_processes(marker: str) -> list[int]:
    """Live `python -m commands worker` processes (and the schedulers they fork) whose command line holds
    `marker` (this test's project directory: other tests' workers are not ours)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ours = b"-m commands worker" in cmdline and marker.encode() in cmdline
        if ours and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def running_worker_pids(redis_url: str) -> set[int]:
    """Pids of the RQ workers registered on the server (a worker registers once it has started up)."""
    client = redis.Redis.from_url(redis_url)
    try:
        pids = set()
        for key in client.smembers(f"{KeyLayout().rq_prefix}:workers"):
            pid = client.hget(key, "pid")
            if pid:
                pids.add(int(pid))
        return pids
    finally:
        client.close()


def wait_workers_up(run: DevRun) -> None:
    """Every worker `trackpipe dev` started is up and waiting for jobs."""
    pids = set(worker_pids(run))
    assert pids, f"no worker pid printed:\n{run.stdout}"
    wait_until(lambda: pids <= running_worker_pids(run.redis_url), 30, f"workers {pids} not all registered")


def assert_workers_stopped(run: DevRun, project: Path) -> None:
    """Ctrl-C stops the workers too: none of them, nor any scheduler they forked, is left running."""
    pids = worker_pids(run)
    assert pids, f"no worker pid printed:\n{run.stdout}"
    wait_until(lambda: not any(pid_alive(p) for p in pids), 20, f"worker still running: {pids}")
    marker = str(project.resolve())
    wait_until(lambda: not worker_processes(marker), 20, f"worker processes left: {worker_processes(marker)}")


def assert_server_stopped(run: DevRun) -> None:
    """The embedded valkey-server is gone: its process has exited and its port refuses connections."""
    assert run.valkey_pid is not None
    wait_until(lambda: not pid_alive(run.valkey_pid), 10, f"valkey-server {run.valkey_pid} still running")
    wait_until(lambda: not accepts_connections(run.redis_port), 10, f"port {run.redis_port} still accepts")


def exit_problems(run: DevRun, returncode: int) -> list[str]:
    """What was wrong with how `trackpipe dev` ended on Ctrl-C (it should exit 0, quietly)."""
    stderr = run.stderr()
    problems = []
    if returncode != 0:
        problems.append(f"exit status {returncode} (expected 0)")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr:\n" + stderr[stderr.index("Traceback") :])
    return problems


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.mark.slow
def test_dev_end_to_end_curl_job_ctrl_c_and_restart(project: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    config_file = project / ".trackpipe" / "dev.toml"

    # First run: writes the demo config and prints a curl line that works as printed.
    with dev_run(project) as first:
        first.wait_ready()
        assert config_file.is_file()
        assert f"wrote a demo config to {config_file.resolve()}" in first.stdout
        config_text = config_file.read_text()
        curl = first.curl
        token = curl_token(curl)
        assert token in config_text
        assert f"http://127.0.0.1:{first.port}/events?" in curl
        first.remember_valkey_pid()

        status, body = run_curl(curl)
        assert status == 200, body
        assert json.loads(body) == {"status": "ok"}

        # 200 means stored; the dev worker then processes the job: the ingest queue drains, the
        # inspector shows the event, and the demo `file` destination gets a delivery job (or has
        # already written the event out).
        out_dir = project / ".trackpipe" / "out"
        assert worker_pids(first), first.stdout
        assert worker_processes(str(project.resolve())), "no worker process running"
        wait_until(
            lambda: ingest_drained(first.redis_url) and inspector_records(first.redis_url),
            30,
            f"the ingest job was not processed\nstderr:\n{first.stderr()}",
        )
        [record] = inspector_records(first.redis_url)
        assert record["event_id"] == "c0ffee-1"
        assert record["event_name"] == "purchase"
        assert record["status"] in ("VALID", "INVALID_ACCEPTED"), record
        assert record["payload"]["context"]["source_id"] == "demo-web"
        assert record["destinations"] == {"demo-file": "queued"}

        # The console (admin API) is printed and serves the inspector line exactly as printed;
        # the edge does not serve the admin API.
        assert first.console == f"http://127.0.0.1:{first.console_port}"
        wait_for_http(f"{first.console}/healthz", timeout=20, proc=first.proc)
        inspector = first.inspector_curl
        assert f"{first.console}/admin/sources/demo-web/events" in inspector
        status, body = run_curl(inspector)
        assert status == 200, body
        assert [e["event_id"] for e in json.loads(body)["events"]] == ["c0ffee-1"]
        status, _ = run_curl(inspector.replace(first.console, f"http://127.0.0.1:{first.port}"))
        assert status == 404
        wait_until(
            lambda: delivery_of(first.redis_url, out_dir, "c0ffee-1"),
            30,
            f"no delivery to demo-file for the event\nstderr:\n{first.stderr()}",
        )

        # SIGINT to the dev process alone: it must stop its workers and its own valkey-server, and exit 0.
        wait_workers_up(first)
        problems = exit_problems(first, first.interrupt(whole_group=False))
        assert_workers_stopped(first, project)
        assert_server_stopped(first)

    # Second run in the same directory: same config and key, and what the first run stored survived
    # (AOF): the inspector's record, and the dedup state (the same event again is a duplicate).
    with dev_run(project) as second:
        second.wait_ready()
        assert "wrote a demo config" not in second.stdout
        assert config_file.read_text() == config_text
        assert curl_token(second.curl) == token
        assert second.curl == curl.replace(f":{first.port}/", f":{second.port}/")
        second.remember_valkey_pid()
        assert [r["event_id"] for r in inspector_records(second.redis_url)] == ["c0ffee-1"]
        assert ingest_job_ids(second.redis_url) == []

        status, body = run_curl(second.curl)
        assert status == 200, body
        wait_until(
            lambda: ingest_drained(second.redis_url) and len(inspector_records(second.redis_url)) == 2,
            30,
            f"the second ingest job was not processed\nstderr:\n{second.stderr()}",
        )
        again = inspector_records(second.redis_url)[-1]
        assert (again["event_id"], again["status"]) == ("c0ffee-1", "DUPLICATE")

        # A real Ctrl-C: SIGINT to the whole foreground process group (once everything is up).
        wait_workers_up(second)
        problems += exit_problems(second, second.interrupt(whole_group=True))
        assert_workers_stopped(second, project)
        assert_server_stopped(second)

    # Checked last, so that the restart and persistence above are checked whatever this says.
    assert not problems, "trackpipe dev on Ctrl-C: " + "\n".join(problems)


@pytest.mark.slow
def test_dev_prints_curl_line_while_running_with_stdout_a_pipe(project: Path) -> None:
    """Under a process manager, `| tee`, or docker logs, stdout is not a terminal: the ready
    curl line must still show up while the server runs, not only once it has stopped."""
    with dev_run(project, unbuffered=False) as run:
        wait_for_http(f"http://127.0.0.1:{run.port}/healthz", timeout=20, proc=run.proc)
        # The lines are printed before the edge starts listening, so they are due by now.
        run.wait_for_line(READY_LINE, timeout=5)
        assert run.curl.startswith("curl ")


@pytest.mark.slow
def test_dev_stopped_with_sigterm_takes_its_server_down(project: Path) -> None:
    """`kill <pid>` or a process manager sends SIGTERM to `trackpipe dev` alone: the embedded
    valkey-server must not be left running, orphaned, holding its port and data directory."""
    with dev_run(project) as run:
        run.wait_ready()
        run.remember_valkey_pid()
        run.proc.send_signal(signal.SIGTERM)
        run.proc.wait(timeout=20)
        assert "Traceback" not in run.stderr(), run.stderr()
        assert_workers_stopped(run, project)
        assert_server_stopped(run)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such config file"),
        ('redis_url = "redis://127.0.0.1:6379/0"\n[edge]\nstatus_mod = "strict"\n', "edge.status_mod: unknown key"),
        ('redis_url = "redis://127.0.0.1:6379/0\n', "not valid TOML"),
        (
            '[[shards]]\nname = "a"\nredis_url = "redis://127.0.0.1:1/0"\n'
            '[[shards]]\nname = "b"\nredis_url = "redis://127.0.0.1:2/0"\n',
            "has [[shards]] (a, b); dev runs one embedded server",
        ),
    ],
    ids=["missing", "misspelt-key", "invalid-toml", "shards"],
)
def test_dev_with_bad_config_exits_2_without_starting_a_server(
    project: Path, content: str | None, expected: str
) -> None:
    bad = project.parent / "bad.toml"
    if content is not None:
        bad.write_text(content)
    done = subprocess.run(
        [str(TRACKPIPE), "dev", "--config", str(bad), "--port", str(free_port())],
        cwd=project,
        env=dev_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert str(bad) in done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert "embedded server" not in done.stdout
    # Nothing started, nothing written: no data directory, no demo config.
    assert not (project / ".trackpipe").exists()


# -- supervision: dev restarts what dies while it runs -----------------------------------------


def printed_worker_pid(run: DevRun, queue: str) -> int:
    """The pid dev last printed for the worker on `queue` (the first start, or its latest restart)."""
    pids = re.findall(rf"^worker:\s+pid (\d+) on {re.escape(queue)}\b", run.stdout, re.MULTILINE)
    assert pids, f"no worker printed for {queue}:\n{run.stdout}"
    return int(pids[-1])


def event_curl(run: DevRun, event_id: str) -> str:
    """The printed curl, for an event of its own."""
    assert "c0ffee-1" in run.curl
    return run.curl.replace("c0ffee-1", event_id)


def send_until_accepted(run: DevRun, event_id: str, timeout: float) -> None:
    """Post the event as a producer would: resend while the edge answers 503 (its storage is back soon)."""
    answers: list[int] = []

    def accepted() -> bool:
        status, _ = run_curl(event_curl(run, event_id))
        answers.append(status)
        return status == 200

    poll_until(accepted, timeout, lambda: f"never answered 200 for {event_id}: {answers[-5:]}", interval=0.5)


def wait_written(run: DevRun, project: Path, event_id: str, timeout: float) -> None:
    """The demo `file` destination has the event: the whole pipeline works."""
    out_dir = project / ".trackpipe" / "out"
    poll_until(
        lambda: (delivery_of(run.redis_url, out_dir, event_id) or "").startswith("written to"),
        timeout,
        lambda: (
            f"{event_id} not delivered to demo-file ({delivery_of(run.redis_url, out_dir, event_id)})\n"
            f"stdout:\n{run.stdout}\nstderr:\n{run.stderr()[-3000:]}"
        ),
        interval=0.2,
    )


def stop_and_check_nothing_left(run: DevRun, project: Path) -> None:
    """Ctrl-C; then no worker dev ever started (first or restarted), no scheduler they forked, and no
    valkey-server of this run is left, and dev exited 0 without a traceback. (Only what was logged
    from the Ctrl-C on counts: during a server outage RQ's scheduler processes log tracebacks of
    their own, and the worker starts a new one.)"""
    before = len(run.stderr())
    returncode = run.interrupt(whole_group=True)
    assert_workers_stopped(run, project)
    assert_server_stopped(run)
    assert returncode == 0, f"exit status {returncode}\nstderr:\n{run.stderr()[before:]}"
    assert "Traceback" not in run.stderr()[before:], run.stderr()[before:]
    assert "supervising the dev processes failed" not in run.stderr(), run.stderr()


@pytest.mark.slow
def test_dev_restarts_a_worker_killed_with_sigkill(project: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with dev_run(project) as run:
        run.wait_ready()
        run.remember_valkey_pid()
        wait_workers_up(run)
        old = printed_worker_pid(run, "ingest")
        os.kill(old, signal.SIGKILL)

        run.wait_for_line(f"worker died:     pid {old} killed by SIGKILL on ingest", timeout=30)
        run.wait_for_line(f"on ingest (restarted; pid {old} killed by SIGKILL)", timeout=30)
        new = printed_worker_pid(run, "ingest")
        assert new != old
        assert pid_alive(new), f"the restarted worker {new} is not running\nstderr:\n{run.stderr()}"
        assert not pid_alive(old)
        wait_until(lambda: new in running_worker_pids(run.redis_url), 30, f"restarted worker {new} not registered")

        # The restarted worker takes the next event through to the destination.
        status, body = run_curl(event_curl(run, "after-worker-kill"))
        assert status == 200, body
        wait_written(run, project, "after-worker-kill", timeout=60)
        stop_and_check_nothing_left(run, project)


@pytest.mark.slow
def test_dev_restarts_its_embedded_server_killed_with_sigkill(project: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with dev_run(project) as run:
        run.wait_ready()
        old = run.remember_valkey_pid()
        wait_workers_up(run)
        status, body = run_curl(event_curl(run, "before-server-kill"))
        assert status == 200, body
        wait_written(run, project, "before-server-kill", timeout=60)

        os.kill(old, signal.SIGKILL)
        run.wait_for_line(f"EMBEDDED SERVER DIED: pid {old} killed by SIGKILL", timeout=30)
        run.wait_for_line("restarted, pid", timeout=60)
        assert re.search(
            rf"^embedded server: {re.escape(run.redis_url)} restarted, pid \d+ \(pid {old} killed by SIGKILL\)$",
            run.stdout,
            re.MULTILINE,
        ), run.stdout
        new = run.remember_valkey_pid()  # the same port answers, from a new process
        assert new != old and not pid_alive(old)

        # Same data dir: what was stored before the crash is still there (AOF, fsynced).
        assert [r["event_id"] for r in inspector_records(run.redis_url)] == ["before-server-kill"]
        # The edge answers 503 until it reconnects; then an event goes all the way through again
        # (the workers reconnect, or dev restarts them).
        send_until_accepted(run, "after-server-kill", timeout=90)
        wait_written(run, project, "after-server-kill", timeout=120)
        stop_and_check_nothing_left(run, project)


# -- `--replicas N`: a primary, replicas and three sentinels ------------------------------------


def test_dev_replicas_out_of_range_is_an_error_naming_the_flag(project: Path) -> None:
    for value in ("3", "-1", "one"):
        done = subprocess.run(
            [str(TRACKPIPE), "dev", "--replicas", value, "--port", str(free_port())],
            cwd=project,
            env=dev_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "--replicas" in done.stderr and "Traceback" not in done.stderr
        assert not (project / ".trackpipe").exists()


@pytest.mark.slow
def test_dev_with_a_replica_survives_a_primary_killed_with_sigkill(project: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    from commands.dev import write_demo_config
    from tooling.harness import file_ids

    config = project / "replicated.toml"
    out_dir = project / "out"
    write_demo_config(config, out_dir)
    # Acknowledged means replicated: what got a 200 survives the kill of the primary.
    config.write_text(config.read_text().replace("[edge]\n", "[edge]\nmin_replicas = 1\nreplica_timeout_ms = 2000\n"))
    with dev_run(project, "--config", str(config), "--replicas", "1") as run:
        run.wait_ready()
        url = re.search(r"^sentinel URL: +(redis\+sentinel://\S+)", run.stdout, re.MULTILINE)
        primary = re.search(r"^primary: +127\.0\.0\.1:(\d+), pid (\d+)", run.stdout, re.MULTILINE)
        replica = re.search(r"^replica: +127\.0\.0\.1:(\d+), pid (\d+)", run.stdout, re.MULTILINE)
        assert url and primary and replica, run.stdout
        primary_port, primary_pid = int(primary.group(1)), int(primary.group(2))
        assert re.search(rf"^failover: +kill -9 {primary_pid}\b", run.stdout, re.MULTILINE), run.stdout
        assert f"TRACKPIPE_REDIS_URL={url.group(1)}" in run.stdout  # the status line uses the sentinels
        with redis.Redis(port=primary_port) as conn:
            assert conn.config_get("appendonly")["appendonly"] == "yes"
            assert conn.info("replication")["connected_slaves"] == 1

        accepted: list[str] = []
        for i in range(5):
            status, body = run_curl(event_curl(run, f"before-{i}"))
            assert status == 200, body
            accepted.append(f"before-{i}")
        poll_until(lambda: set(accepted) <= set(file_ids(out_dir)), 60, "not delivered before the kill")

        os.kill(primary_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        run.wait_for_line("PRIMARY DIED:", timeout=30)
        send_until_accepted(run, "after-kill", timeout=60)
        accepted.append("after-kill")
        recovered = time.monotonic() - killed_at
        assert recovered < 30, f"posting worked again only after {recovered:.1f} s"
        run.wait_for_line("FAILOVER:", timeout=30)
        run.wait_for_line(f"port {primary_port} restarted as a replica of port", timeout=60)
        for i in range(5):
            send_until_accepted(run, f"after-{i}", timeout=30)
            accepted.append(f"after-{i}")
        poll_until(
            lambda: set(accepted) <= set(file_ids(out_dir)),
            90,
            lambda: f"accepted but not delivered: {sorted(set(accepted) - set(file_ids(out_dir)))}\n{run.stdout}",
        )
        with redis.Redis(port=primary_port) as old:
            # A replica, never a primary of its own (stale data clients could write to) — unless the
            # sentinels promoted it again later (a second failover, seen on a loaded machine), which
            # the dev command then says.
            poll_until(
                lambda: old.info("replication")["role"] == "slave"
                or f"the sentinels promoted port {primary_port} " in run.stdout,
                30,
                lambda: f"the old primary is no replica, and was not promoted again:\n{run.stdout}",
            )
        returncode = run.interrupt(whole_group=True)
        assert returncode == 0, run.stderr()[-3000:]
        assert "supervising the dev processes failed" not in run.stderr(), run.stderr()[-3000:]
        assert not accepts_connections(primary_port) and not accepts_connections(int(replica.group(1)))
