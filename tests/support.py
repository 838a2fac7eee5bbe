"""Helpers for tests that run real processes: the embedded server, the edge under uvicorn."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def running_edge(config_path: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`trackpipe edge` as a real process; yields its base URL; SIGTERM at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "trackpipe.cli", "edge", "--config", str(config_path), "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
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
