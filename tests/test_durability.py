"""What a 200 promises: the accepted events are on the server's disk, so they survive a crash of the
server process (SIGKILL), not only a clean restart. Real valkey-server, real edge process."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import pytest
import redis

from tests.support import TEST_KEY, config_text, free_port, poll_until, running_edge, stored_events
from tooling.embedded import DURABLE_SETTINGS, forget_dead_server, server_exit_code, start_server

EVENTS = 400
CLIENTS = 16  # concurrent producers, so that writes are group-committed as in production


def test_embedded_server_runs_with_appendfsync_always(tmp_path: Path) -> None:
    server = start_server(tmp_path / "valkey", port=free_port())
    try:
        client = redis.Redis(port=server.port)
        try:
            settings = client.config_get("append*") | client.config_get("maxmemory-policy")
        finally:
            client.close()
    finally:
        server.stop()
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "always"
    assert settings["maxmemory-policy"] == "noeviction"
    assert DURABLE_SETTINGS["appendfsync"] == "always"


def post_events(base: str, count: int) -> list[str]:
    """Post `count` single v2 events from CLIENTS threads; the ids of those answered 200."""
    url = f"{base}/events?tc_s=29&token={TEST_KEY}"

    def send(client: httpx.Client, i: int) -> str | None:
        event_id = f"durable-{i}"
        body = {"event_name": "page_view", "context": {"event_id": event_id}}
        answer = client.post(url, json=body, timeout=30)
        return event_id if answer.status_code == 200 else None

    with httpx.Client() as client, ThreadPoolExecutor(CLIENTS) as pool:
        return [i for i in pool.map(lambda n: send(client, n), range(count)) if i is not None]


def crash_and_count(tmp_path: Path, **settings: str) -> tuple[list[str], set[str]]:
    """Events answered 200, then SIGKILL of valkey-server right after the last answer, a restart on
    the same data dir and port: (ids answered 200, ids the restarted server holds)."""
    data_dir, port = tmp_path / "valkey", free_port()
    server = start_server(data_dir, port=port, **settings)
    restarted = None
    try:
        config_file = tmp_path / "trackpipe.toml"
        config_file.write_text(config_text(f"redis://127.0.0.1:{port}/0"))
        with running_edge(config_file) as base:
            accepted = post_events(base, EVENTS)
            client = redis.Redis(port=port)
            try:
                pid = int(client.info("server")["process_id"])
            finally:
                client.close()
            os.kill(pid, signal.SIGKILL)
            poll_until(lambda: server_exit_code(server) is not None, 10, f"valkey-server {pid} still running")
            assert server_exit_code(server) == -signal.SIGKILL
            forget_dead_server(server)
            restarted = start_server(data_dir, port=port, **settings)
            client = redis.Redis(port=port)
            try:
                assert int(client.info("server")["process_id"]) != pid
                held = {msgspec.json.decode(raw)["context"]["event_id"] for _, _, raw in stored_events(client)}
            finally:
                client.close()
    finally:
        forget_dead_server(server)
        if restarted is not None:
            restarted.stop()
    return accepted, held


@pytest.mark.slow
def test_every_event_answered_200_survives_a_server_kill(tmp_path: Path) -> None:
    accepted, held = crash_and_count(tmp_path)
    assert len(accepted) == EVENTS, "every request should have been answered 200 before the kill"
    missing = sorted(set(accepted) - held)
    assert not missing, f"{len(missing)} of {len(accepted)} events answered 200 lost by the crash: {missing[:10]}"
    assert held == set(accepted)


@pytest.mark.parametrize("settings", [{"appendonly": "no"}], ids=["no-aof"])
@pytest.mark.slow
def test_without_aof_a_kill_loses_what_was_answered(tmp_path: Path, settings: dict[str, str]) -> None:
    """The check above can fail: with no AOF the same crash loses every answered event."""
    accepted, held = crash_and_count(tmp_path, **settings)
    assert len(accepted) == EVENTS
    assert held == set()
