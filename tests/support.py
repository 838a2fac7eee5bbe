"""Helpers for tests that run real processes: the embedded server, the edge under uvicorn."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tooling.harness import (  # noqa: F401  (the tests import these from here)
    HookServer,
    Received,
    Reply,
    free_port,
    kill_group,
    poll_until,
    stop_worker,
)
from tooling.harness import wait_http as wait_for_http
from trackpipe.keys import KeyLayout

ROOT = Path(__file__).resolve().parent.parent

TEST_KEY = "test-key-0123456789"
OTHER_KEY = "other-key-0123456789"

BASE_CONFIG = """\
redis_url = "{redis_url}"
admin_token = "admin-token-0123456789"

[edge]
status_mode = "{mode}"
max_backlog = {max_backlog}

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{key}"]

[[sources]]
id = "other-site"
site_id = "30"
keys = ["{other_key}"]
"""


def config_text(redis_url: str, mode: str = "compat", max_backlog: int = 20_000) -> str:
    return BASE_CONFIG.format(
        redis_url=redis_url, mode=mode, max_backlog=max_backlog, key=TEST_KEY, other_key=OTHER_KEY
    )


@contextlib.contextmanager
def _running(
    command: str, config_path: Path, *extra: str, env: dict[str, str] | None, log: Path | None
) -> Iterator[str]:
    """`trackpipe <command>` serving HTTP as a real process; yields its base URL; SIGTERM at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "commands", command, "--config", str(config_path), "--port", str(port), *extra]
    out = log.open("ab") if log is not None else None
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", proc=proc)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out is not None:
            out.close()


def running_edge(
    config_path: Path, *extra: str, env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[str]:
    """`trackpipe edge` as a real process; yields its base URL; SIGTERM at the end."""
    return _running("edge", config_path, *extra, env=env, log=None)


def running_console(config_path: Path, *, log: Path | None = None) -> contextlib.AbstractContextManager[str]:
    """`trackpipe console` (the admin API) as a real process; yields its base URL; SIGTERM at the end."""
    return _running("console", config_path, env=None, log=log)


def stored_job_ids(conn, prefix: str = "trackpipe") -> list[str]:
    """Ids of the RQ jobs waiting on the ingest queue, oldest first."""

    return [raw.decode() for raw in conn.lrange(KeyLayout(prefix).queue("ingest"), 0, -1)]


def stored_records(conn, prefix: str = "trackpipe") -> list:
    """Every IngestRecord held by the jobs on the ingest queue (each job must be a real ingest job)."""
    from ingest.store import held_batches
    from trackpipe.jobs import INGEST_FUNCTION, MsgpackSerializer, SafeJob

    records = []
    for job_id in stored_job_ids(conn, prefix):
        job = SafeJob.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
        assert job.func_name == INGEST_FUNCTION, job.func_name
        for batch in held_batches(conn, KeyLayout(prefix), job):
            records.extend(batch.records)
    return records


def stored_events(conn, prefix: str = "trackpipe") -> list[tuple[str, str, bytes]]:
    """(source_id, site_id, raw event) for every event on the ingest queue, in queue order."""
    return [(r.source_id, r.site_id, event) for r in stored_records(conn, prefix) for event in r.events]


def job_keys(conn, prefix: str = "trackpipe") -> list[bytes]:
    return list(conn.scan_iter(f"{prefix}:rq:job:*"))


def sized_event(size: int, marker: str = "m") -> bytes:
    """A v2 JSON object of exactly `size` bytes."""
    head = b'{"event_name":"page_view","context":{"event_id":"' + marker.encode() + b'"},"pad":"'
    tail = b'"}'
    pad = size - len(head) - len(tail)
    if pad < 0:
        raise ValueError(f"{size} bytes is too small for an event")
    return head + b"a" * pad + tail


def batch_body(events: list[bytes]) -> bytes:
    return b'{"batch":[' + b",".join(events) + b"]}"


def sized_batch(size: int, count: int = 16, marker: str = "b") -> tuple[bytes, list[bytes]]:
    """A batch body of exactly `size` bytes made of `count` events (each must stay within 32 KB)."""
    overhead = len(batch_body([b""] * count))
    each, extra = divmod(size - overhead, count)
    events = [sized_event(each + (extra if i == count - 1 else 0), f"{marker}{i}") for i in range(count)]
    body = batch_body(events)
    assert len(body) == size
    return body, events


# -- running workers (appended for the worker tests) ------------------------------------------


def start_worker(
    config_path: Path, *extra: str, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen:
    """`python -m commands worker` as a real process, in its own session (RQ forks a scheduler
    child: `kill_group` reaches it too, even once the worker itself is gone)."""
    cmd = [sys.executable, "-m", "commands", "worker", "--config", str(config_path), *extra]
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=out, start_new_session=True
        )
    finally:
        if log is not None:
            out.close()


# -- scripted webhook receivers (appended for the destination and delivery tests) --------------



def closed_url() -> str:
    """A URL on a free port nobody listens on: connecting is refused."""
    return f"http://127.0.0.1:{free_port()}/hook"


def delivery_batches_of(conn, job, prefix: str = "trackpipe") -> list:
    """Every DeliveryBatch a delivery job holds: its argument (retry, replay) and its parts (fan-outs)."""
    from trackpipe.messages import decode_delivery
    from trackpipe.openjob import held_payloads

    return [decode_delivery(p) for p in held_payloads(conn, KeyLayout(prefix), job)]
