"""Logs are JSON lines with the ids that matter, and never carry a source key or the admin token."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import ROOT, TEST_KEY, config_text, free_port, wait_for_http
from trackpipe.logs import JsonFormatter, masked_url, redact


def test_a_record_becomes_one_json_line_with_its_ids() -> None:
    record = logging.LogRecord("trackpipe.deliver", logging.WARNING, __file__, 1, "to %s: %d failed", ("crm", 3), None)
    record.destination = "crm"
    record.job = "j-1"
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "trackpipe.deliver"
    assert entry["msg"] == "to crm: 3 failed"
    assert (entry["destination"], entry["job"]) == ("crm", "j-1")
    assert "\n" not in line


def test_secrets_are_masked() -> None:
    assert redact("GET /events?tc_s=29&token=abc123secret HTTP/1.1") == "GET /events?tc_s=29&token=*** HTTP/1.1"
    assert redact("Authorization: Bearer abc123secret") == "Authorization: Bearer ***"
    assert "abc123" not in redact("admin_token = 'abc123secret'")


def test_the_edge_logs_json_and_no_key(tmp_path: Path, valkey_url: str) -> None:
    config = tmp_path / "trackpipe.toml"
    config.write_text(config_text(valkey_url, mode="strict"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "commands", "edge", "--config", str(config), "--port", str(port)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/healthz", proc=proc)
        for token in (TEST_KEY, "wrong-key-0123456789"):
            httpx.post(f"{base}/events", params={"tc_s": "29", "token": token}, json={"event_name": "x"})
        time.sleep(0.2)  # room for the edge to log both requests (their lines are searched below)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "the edge logged nothing"
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "msg"} <= set(entry)
    assert TEST_KEY not in stderr and "wrong-key-0123456789" not in stderr
    assert "admin-token-0123456789" not in stderr


def test_a_redis_password_is_masked_in_urls() -> None:
    assert masked_url("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert masked_url("rediss://app:s3cret@db/1") == "rediss://app:***@db/1"
    assert masked_url("redis://s3cret@db/1") == "redis://***@db/1"
    assert masked_url("redis://db:6379/0") == "redis://db:6379/0"
    assert masked_url("unix:///run/valkey.sock") == "unix:///run/valkey.sock"


def test_status_and_dlq_never_print_the_redis_password(tmp_path: Path) -> None:
    config = tmp_path / "trackpipe.toml"
    config.write_text(
        f'redis_url = "redis://app:pa55-word-xyz@127.0.0.1:{free_port()}/0"\n'
        '[[destinations]]\nid = "crm"\ntype = "file"\npath = "out"\n'
    )
    for command in (["status"], ["dlq", "list", "--destination", "crm"]):
        done = subprocess.run(
            [sys.executable, "-m", "commands", *command, "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert "pa55-word-xyz" not in done.stdout + done.stderr
        assert "app:***@127.0.0.1" in done.stderr, done.stderr
