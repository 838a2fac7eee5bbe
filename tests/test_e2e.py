"""End to end with real processes: the edge (uvicorn), RQ workers, a real webhook server and a file
destination. Events posted to the edge must arrive, normalized, exactly where the config says."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support import ROOT, TEST_KEY, free_port, running_edge
from tooling.examples import V2_EXAMPLE
from trackpipe.keys import KeyLayout
from trackpipe.messages import decode_dead_letter

AUTH = {"tc_s": "29", "token": TEST_KEY}
JSON = {"Content-Type": "application/json"}
DEADLINE = 40.0


class Receiver:
    """A webhook receiver whose answer can be changed while it runs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.mode = "ok"  # ok | down | refuse | slow
        self.slow_seconds = 0.0
        self.release = threading.Event()  # set: a "slow" answer is sent at once
        self.in_flight = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.mode == "slow":
                    receiver.in_flight += 1
                    receiver.release.wait(receiver.slow_seconds)
                    receiver.in_flight -= 1
                if receiver.mode == "down":
                    self.send_response(503)
                    self.end_headers()
                    return
                if receiver.mode == "refuse":
                    self.send_response(422)
                    self.end_headers()
                    self.wfile.write(b"unknown event schema")
                    return
                with receiver.lock:
                    receiver.events += json.loads(body)["batch"]
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # a sleeping handler must not hold up the test's end
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        with self.lock:
            return [e["context"]["event_id"] for e in self.events]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def receivers(n: int) -> Iterator[list[Receiver]]:
    made = [Receiver() for _ in range(n)]
    try:
        yield made
    finally:
        for receiver in made:
            receiver.close()


@contextlib.contextmanager
def running_workers(config_path: Path, *queue_sets: str) -> Iterator[list[subprocess.Popen]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "commands", "worker", "--config", str(config_path), "--queues", queues],
            cwd=ROOT,
            env={**os.environ},
        )
        for queues in queue_sets
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def until(check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {deadline}s")


def write_config(tmp_path: Path, redis_url: str, hooks: dict[str, Receiver], lake: Path, **extra: str) -> Path:
    lines = [
        f'redis_url = "{redis_url}"',
        "[worker]",
        "ingest_timeout_seconds = 5",
        "abandoned_grace_seconds = 1",
        "maintenance_interval_seconds = 1",
        "[[sources]]",
        'id = "shop-web"',
        'site_id = "29"',
        f'keys = ["{TEST_KEY}"]',
        "[[destinations]]",
        'id = "lake"',
        'type = "file"',
        f'path = "{lake}"',
    ]
    for dest_id, receiver in hooks.items():
        lines += [
            "[[destinations]]",
            f'id = "{dest_id}"',
            'type = "webhook"',
            f'url = "{receiver.url}"',
            "read_timeout_seconds = 1.0",
            extra.get(dest_id, "retry = { max_attempts = 20, backoff_seconds = [0.5, 1] }"),
        ]
    path = tmp_path / "trackpipe.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def lake_events(lake: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(lake.glob("*.jsonl")) for line in f.read_text().splitlines() if line]


V1 = {
    "event_name": "add_to_cart",
    "event_id": "e2e-v1",
    "event_timestamp": 1700000000000,
    "properties": {"value": 20, "currency": "EUR", "user": {"id": "7"}},
    "page": {"location": "https://x/p"},
    "device": {"ip": "198.51.100.4"},
}
# The contract's v2 example, with an event id of this test's own.
V2 = {**V2_EXAMPLE, "context": {**V2_EXAMPLE["context"], "event_id": "e2e-v2"}}


def post(base: str, event: dict[str, Any]) -> None:
    response = httpx.post(f"{base}/events", params=AUTH, headers=JSON, content=json.dumps(event))
    assert response.status_code == 200, response.text


@pytest.mark.slow
def test_v1_and_v2_arrive_normalized_once_each(tmp_path: Path, valkey_url: str) -> None:
    lake = tmp_path / "lake"
    with receivers(1) as (hook,):
        config = write_config(tmp_path, valkey_url, {"crm": hook}, lake)
        with (
            running_edge(config) as base,
            running_workers(config, "ingest", "deliver:crm,retry:crm", "deliver:lake,retry:lake"),
        ):
            post(base, V1)
            post(base, V2)
            post(base, V2)  # the same event_id again: delivered once
            until(lambda: len(hook.ids()) >= 2 and len(lake_events(lake)) >= 2)
            time.sleep(1.0)  # room for a wrongly delivered duplicate to show up
        assert sorted(hook.ids()) == ["e2e-v1", "e2e-v2"]
        assert sorted(e["context"]["event_id"] for e in lake_events(lake)) == ["e2e-v1", "e2e-v2"]
        by_id = {e["context"]["event_id"]: e for e in hook.events}
        v1 = by_id["e2e-v1"]
        assert "properties" not in v1 and v1["value"] == 20 and v1["user"] == {"id": "7"}
        assert v1["context"]["page"] == {"url": "https://x/p"}
        # The event's own IP is kept; the user agent it lacked is the request's (contract §3, rule 7).
        assert v1["context"]["device"] == {"ip": "198.51.100.4", "user_agent": f"python-httpx/{httpx.__version__}"}
        assert v1["context"]["source_id"] == "shop-web" and isinstance(v1["context"]["received_at"], int)
        v2 = by_id["e2e-v2"]
        assert {k: v for k, v in v2.items() if k != "context"} == {k: v for k, v in V2.items() if k != "context"}
        assert {k: v for k, v in v2["context"].items() if k not in ("received_at", "source_id")} == V2["context"]


@pytest.mark.slow
def test_a_destination_down_for_a_while_gets_every_event_once_back(tmp_path: Path, valkey_url: str) -> None:
    lake = tmp_path / "lake"
    with receivers(1) as (hook,):
        hook.mode = "down"
        config = write_config(tmp_path, valkey_url, {"crm": hook}, lake)
        ids = [f"down-{i}" for i in range(20)]
        with (
            running_edge(config) as base,
            running_workers(config, "ingest", "deliver:crm,retry:crm", "deliver:lake,retry:lake"),
        ):
            for event_id in ids:
                post(base, {**V2, "context": {**V2["context"], "event_id": event_id}})
            until(lambda: len(lake_events(lake)) == len(ids))
            conn = redis.Redis.from_url(valkey_url)
            until(lambda: conn.zcard("trackpipe:rq:scheduled:retry:crm") > 0)  # waiting to retry
            assert hook.ids() == []
            hook.mode = "ok"
            until(lambda: len(hook.ids()) >= len(ids))
            time.sleep(1.0)  # room for a wrongly repeated delivery to show up
        assert sorted(hook.ids()) == sorted(ids)
        assert conn.llen(KeyLayout().dlq("crm")) == 0


@pytest.mark.slow
def test_refused_events_are_in_the_dlq_with_the_reason(tmp_path: Path, valkey_url: str) -> None:
    lake = tmp_path / "lake"
    with receivers(1) as (hook,):
        hook.mode = "refuse"
        config = write_config(tmp_path, valkey_url, {"crm": hook}, lake)
        with running_edge(config) as base, running_workers(config, "ingest", "deliver:crm,retry:crm"):
            post(base, V2)
            conn = redis.Redis.from_url(valkey_url)
            until(lambda: conn.llen(KeyLayout().dlq("crm")) == 1)
        record = decode_dead_letter(conn.lindex(KeyLayout().dlq("crm"), 0))
        assert record.event_id == "e2e-v2" and record.destination_id == "crm"
        assert record.reason.startswith("HTTP 422") and "unknown event schema" in record.reason
        assert json.loads(bytes(record.event))["context"]["event_id"] == "e2e-v2"
        assert hook.ids() == []


@pytest.mark.slow
def test_a_hanging_destination_does_not_slow_another(tmp_path: Path, valkey_url: str) -> None:
    """Isolation: each destination has its own queues and workers, so one whose receiver hangs holds
    up only its own deliveries. Every healthy delivery below completes while the hanging
    destination's first request is still stuck in its receiver."""
    lake = tmp_path / "lake"
    with receivers(2) as (healthy, hanging):
        hanging.mode = "slow"
        # The 11 healthy deliveries below must all finish within this hold: ample even on a busy machine.
        hanging.slow_seconds = 15.0
        slow_settings = "read_timeout_seconds = 20.0"
        config = write_config(tmp_path, valkey_url, {"healthy": healthy, "hanging": hanging}, lake)
        text = config.read_text().replace(
            f'url = "{hanging.url}"\nread_timeout_seconds = 1.0', f'url = "{hanging.url}"\n{slow_settings}'
        )
        assert slow_settings in text
        config.write_text(text)
        with (
            running_edge(config) as base,
            running_workers(config, "ingest", "deliver:healthy,retry:healthy", "deliver:hanging,retry:hanging"),
        ):
            post(base, {**V2, "context": {**V2["context"], "event_id": "iso-first"}})
            until(lambda: hanging.in_flight == 1)
            for i in range(10):
                event_id = f"iso-{i}"
                post(base, {**V2, "context": {**V2["context"], "event_id": event_id}})
                until(lambda event_id=event_id: event_id in healthy.ids())
                assert hanging.in_flight == 1, "the healthy delivery waited for the hanging one"
            assert hanging.ids() == []
            hanging.release.set()  # proven: its worker need not sit out the rest of the hold before it stops
        assert sorted(healthy.ids()) == sorted(["iso-first", *(f"iso-{i}" for i in range(10))])
