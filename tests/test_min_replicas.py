"""`edge.min_replicas`: a write is answered 200 only once WAITAOF says the primary and N replicas
have it on disk; otherwise every request of that write gets 503 saying why. Unit tests of the
command list and of reading its replies, the config bounds, and the real edge against a primary, a
replica and three sentinels from the embedded wheel."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ingest.commit import StorageUnavailable
from ingest.store import NotReplicated, WriteBuilder
from tests.support import TEST_KEY, config_text, poll_until, running_edge, stored_events
from tooling.replicated import replicated
from trackpipe.config import Config, ConfigError, parse
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord
from trackpipe.replication import WAIT_SLICE_MS

JSON = {"content-type": "application/json"}
AUTH = {"tc_s": "29", "token": TEST_KEY}
LAYOUT = KeyLayout("trackpipe")


def _batch() -> IngestBatch:
    return IngestBatch([IngestRecord("shop-web", "29", 1, [b'{"event_name":"page_view"}'])])


def _edge_config(url: str, min_replicas: int, timeout_ms: int) -> str:
    return config_text(url).replace(
        "[edge]\n", f"[edge]\nmin_replicas = {min_replicas}\nreplica_timeout_ms = {timeout_ms}\n", 1
    )


# -- the commands of one write ---------------------------------------------------------------------


def test_waitaof_ends_a_write_only_when_replicas_are_required() -> None:
    plain = WriteBuilder(LAYOUT, 0).build(_batch(), [])
    assert len(plain) == 1 and plain[0][0] != "WAITAOF"

    commands = WriteBuilder(LAYOUT, 0, min_replicas=2, replica_timeout_ms=750).build(_batch(), [])
    assert commands[0][0] == plain[0][0]  # the same script call, then the wait
    # WAIT (its question to the replicas comes after they applied the write), then the first slice
    # of WAITAOF; more slices follow in the store while it falls short.
    assert commands[1:] == [("WAIT", 2, 750), ("WAITAOF", 1, 2, WAIT_SLICE_MS)]
    assert len(commands) == 3

    # A write of refused-key samples only: nobody waits for it, so it waits for no replica.
    samples_only = WriteBuilder(LAYOUT, 0, min_replicas=2).build(None, [])
    assert samples_only == [("LLEN", LAYOUT.queue("ingest"))]


def test_the_waitaof_reply_decides_whether_the_write_is_stored() -> None:
    builder = WriteBuilder(LAYOUT, 0, min_replicas=2, replica_timeout_ms=300)
    commands = builder.build(_batch(), [])
    # The script's reply ends with the ingest queue length; WAIT answers a count (not what decides);
    # WAITAOF answers [local, replicas].
    assert builder.outcome(commands, [[b"job", 7], 2, [1, 2]]) == 7
    assert builder.outcome(commands, [[b"job", 7], 0, [1, 3]]) == 7
    with pytest.raises(NotReplicated) as short:
        builder.outcome(commands, [[b"job", 7], 2, [1, 1]])
    assert isinstance(short.value, StorageUnavailable)  # every request of the write gets 503
    assert "reached 1 of 2 required replicas within 300 ms" in str(short.value)
    assert "replicas" in short.value.public_reason()
    with pytest.raises(NotReplicated, match="not the primary disk"):
        builder.outcome(commands, [[b"job", 7], 2, [0, 2]])
    plain = WriteBuilder(LAYOUT, 0)
    assert plain.outcome(plain.build(_batch(), []), [[b"job", 4]]) == 4


# -- config -----------------------------------------------------------------------------------------


def test_the_defaults_keep_todays_write() -> None:
    assert Config().edge.min_replicas == 0
    assert Config().edge.replica_timeout_ms == 1_000
    edge = parse("[edge]\nmin_replicas = 16\nreplica_timeout_ms = 1\n", env={}).edge
    assert (edge.min_replicas, edge.replica_timeout_ms) == (16, 1)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("min_replicas", "17"),
        ("min_replicas", "-1"),
        ("min_replicas", "1.5"),
        ("replica_timeout_ms", "0"),  # WAITAOF's 0 means wait forever
        ("replica_timeout_ms", "60001"),
        ("replica_timeout_ms", '"1s"'),
    ],
)
def test_a_bad_replica_setting_is_named(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"edge\.{setting}"):
        parse(f"[edge]\n{setting} = {value}\n", env={})


# -- the real edge, a primary, a replica and three sentinels --------------------------------------


def _post(base: str, marker: str) -> httpx.Response:
    body = json.dumps({"event_name": "page_view", "context": {"event_id": marker}}).encode()
    return httpx.post(f"{base}/events", params=AUTH, headers=JSON, content=body, timeout=30)


def _markers(conn) -> list[str]:
    return [json.loads(raw)["context"]["event_id"] for _, _, raw in stored_events(conn)]


@pytest.mark.slow
def test_with_one_replica_required_what_is_answered_200_is_on_the_replica(tmp_path: Path) -> None:
    with replicated(tmp_path / "replicated", appendonly=True) as layout:
        config_path = tmp_path / "trackpipe.toml"
        config_path.write_text(_edge_config(layout.url(), 1, 5_000))
        with running_edge(config_path) as base:
            markers = [f"m-{i}" for i in range(40)]
            with ThreadPoolExecutor(8) as pool:  # concurrent: several requests share a write
                responses = list(pool.map(lambda m: _post(base, m), markers))
            assert [r.status_code for r in responses] == [200] * len(markers), [r.text for r in responses][:3]
            # Read the replica at once, without waiting for it: the 200 promised it is there.
            with layout.client(layout.replica_port) as replica:
                assert set(markers) <= set(_markers(replica))

            # A replica that stops answering: the write times out, 503, and says why.
            stopped = layout.servers[layout.replica_port]
            stopped.send_signal(signal.SIGSTOP)
            try:
                timed_out = _post(base, "while-stopped")
            finally:
                stopped.send_signal(signal.SIGCONT)
            assert timed_out.status_code == 503
            assert "reached 0 of 1 required replicas" in timed_out.json()["error"]
            assert timed_out.headers["retry-after"]
            # Back in step: writes are answered 200 again.
            poll_until(lambda: _post(base, "after").status_code == 200, 60, "no 200 after the replica came back")


@pytest.mark.slow
def test_more_replicas_required_than_exist_answers_every_write_503(tmp_path: Path) -> None:
    with replicated(tmp_path / "replicated", appendonly=True) as layout:
        config_path = tmp_path / "trackpipe.toml"
        config_path.write_text(_edge_config(layout.url(), 2, 300))
        with running_edge(config_path) as base, ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda i: _post(base, f"n-{i}"), range(18)))
        assert {r.status_code for r in responses} == {503}
        for response in responses:
            error = response.json()["error"]
            assert "required replicas" in error and "of 2" in error, error
            assert "127.0.0.1" not in error  # says why, names no server
        # The primary did store the events (WAITAOF cannot undo that); they were never acknowledged.
        with layout.client(layout.primary_port) as primary:
            assert len(_markers(primary)) >= 18
