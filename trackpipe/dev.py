"""`trackpipe dev`: the whole pipeline on one machine, on the embedded server."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import msgspec

from trackpipe.auth import new_key
from trackpipe.config import REDIS_URL_ENV, Config, config_path, load
from trackpipe.embedded import die_with_parent, start_server
from trackpipe.examples import V2_EXAMPLE
from trackpipe.keys import INGEST_QUEUE, bind_rq_prefix, deliver_queue, retry_queue, rq_prefix_for
from trackpipe.logs import setup_logging
from trackpipe.serve import edge_server_config, serve

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
    command = [sys.executable, "-m", "trackpipe.cli", "worker", "--config", str(config_file)]
    command += ["--queues", ",".join(queues)]
    return subprocess.Popen(
        command, env={**os.environ, REDIS_URL_ENV: redis_url}, preexec_fn=die_with_parent, start_new_session=True
    )


def worker_layout(config: Config) -> list[list[str]]:
    """One worker for ingest and one per destination, so a slow destination never holds up another."""
    return [[INGEST_QUEUE]] + [[deliver_queue(d.id), retry_queue(d.id)] for d in config.destinations]


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM (RQ finishes the job in hand), then SIGKILL if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    bind_rq_prefix(config.key_prefix)
    try:
        server = start_server(data_dir / "valkey", port=args.redis_port or DEV_REDIS_PORT)
    except OSError as exc:
        if args.redis_port:
            print(f"trackpipe dev: --redis-port {args.redis_port}: {exc}", file=sys.stderr)
            return 2
        # 6399 is taken (another dev running?): any free port; the printed commands name it.
        server = start_server(data_dir / "valkey", port=None)
    try:
        redis_url = f"redis://127.0.0.1:{server.port}/0"
        config = msgspec.structs.replace(config, redis_url=redis_url)
        os.environ[REDIS_URL_ENV] = redis_url
        print(f"embedded server: {redis_url} (data in {data_dir / 'valkey'})")
        print(f"edge:            http://{args.host}:{args.port}  (config {path})")
        curl = demo_curl(config, args.host, args.port)
        if curl:
            print(f"try:\n  {curl}")
        rq_tool = Path(sys.executable).parent / "rq"
        print(f"queues:          RQ_KEY_PREFIX={rq_prefix_for(config.key_prefix)} {rq_tool} info -u {redis_url}")
        workers = [start_worker(path, redis_url, queues) for queues in worker_layout(config)]
        for worker, queues in zip(workers, worker_layout(config), strict=True):
            print(f"worker:          pid {worker.pid} on {', '.join(queues)}")
        for destination in config.destinations:
            where = getattr(destination, "path", None) or getattr(destination, "url", "")
            print(f"destination:     {destination.id} -> {where}")
        if config.admin_token and config.sources:
            inspector = f"http://{args.host}:{args.port}/admin/sources/{config.sources[0].id}/events"
            print(f"inspector:       curl -sS -H 'Authorization: Bearer {config.admin_token}' {inspector}")
        tool = Path(sys.executable).parent / "trackpipe"
        print(f"status:          {REDIS_URL_ENV}={redis_url} {tool} status --config {path}")
        print("Ctrl-C stops everything.")
        try:
            serve(edge_server_config(config, args.host, args.port))
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                stop_process(worker)
    finally:
        server.stop()
    return 0
