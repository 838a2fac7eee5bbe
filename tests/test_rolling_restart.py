"""Nothing accepted is lost across a rolling restart: edges and workers are stopped with SIGTERM and
replaced while producers keep sending; every event that got 200 ends in the destination once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, TEST_KEY, free_port, poll_until, wait_for_http

pytestmark = pytest.mark.slow  # processes rolled one after another under load: seconds each

AUTH = {"tc_s": "29", "token": TEST_KEY}


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "commands", *args], cwd=ROOT)


def start_edge(config: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = start("edge", "--config", str(config), "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", proc=proc)
    return proc, base


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_rolling_restart_loses_nothing(tmp_path: Path, valkey_url: str) -> None:
    lake = tmp_path / "lake"
    config = tmp_path / "trackpipe.toml"
    config.write_text(
        f"""
redis_url = "{valkey_url}"
[worker]
ingest_timeout_seconds = 5
abandoned_grace_seconds = 1
maintenance_interval_seconds = 1
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]
[[destinations]]
id = "lake"
type = "file"
path = "{lake}"
"""
    )
    accepted: list[str] = []
    current = {"base": ""}
    stop_sending = threading.Event()

    def producer() -> None:
        n = 0
        with httpx.Client(timeout=5) as client:
            while not stop_sending.is_set():
                event_id = f"roll-{n}"
                n += 1
                body = {"event_name": "page_view", "context": {"event_id": event_id}}
                try:
                    response = client.post(f"{current['base']}/events", params=AUTH, json=body)
                except httpx.HTTPError:
                    continue  # not answered: the producer's to resend, not ours to keep
                if response.status_code == 200:
                    accepted.append(event_id)

    edge, current["base"] = start_edge(config)
    ingest = start("worker", "--config", str(config), "--queues", "ingest")
    delivery = start("worker", "--config", str(config), "--queues", "deliveries")
    procs = [edge, ingest, delivery]
    sender = threading.Thread(target=producer, daemon=True)
    sender.start()

    def traffic(more: int) -> None:
        """Let the producer run between two steps of the roll: a second of traffic, and at least `more`
        accepted events however slow the machine (the count asserted below is then always reached)."""
        target = len(accepted) + more
        time.sleep(1.0)
        poll_until(lambda: len(accepted) >= target, 60, lambda: f"the producer got {len(accepted)} answers")

    try:
        traffic(50)
        # Roll the edge: the new one first, then SIGTERM the old one while requests are in flight.
        new_edge, new_base = start_edge(config)
        procs.append(new_edge)
        current["base"] = new_base
        assert stop(edge) == 0
        traffic(50)
        # Roll the workers: SIGTERM lets each finish the job in hand.
        stop(ingest)
        ingest = start("worker", "--config", str(config), "--queues", "ingest")
        procs.append(ingest)
        stop(delivery)
        delivery = start("worker", "--config", str(config), "--queues", "deliveries")
        procs.append(delivery)
        traffic(50)
        stop_sending.set()
        sender.join(timeout=10)
        assert len(accepted) > 100, "the producer got too few answers to prove anything"

        def delivered() -> list[str]:
            return [
                json.loads(line)["context"]["event_id"]
                for f in sorted(lake.glob("*.jsonl"))
                for line in f.read_text().splitlines()
                if line
            ]

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not set(accepted) <= set(delivered()):
            time.sleep(0.2)
        got = delivered()
        assert set(accepted) <= set(got), f"lost: {sorted(set(accepted) - set(got))[:10]}"
        assert len(got) == len(set(got)), "an event was delivered twice"
    finally:
        stop_sending.set()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
