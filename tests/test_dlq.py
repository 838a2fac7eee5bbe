"""`trackpipe dlq`: select, show, export, purge and replay dead letters (real valkey, real CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import redis

from tests.support import ROOT, TEST_KEY
from trackpipe.config import parse
from trackpipe.dlq import DlqError, Selection, parse_time
from trackpipe.jobs import delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import decode_delivery
from workers.context import WorkerContext
from workers.deadletter import DeadLetter, encode_dead_letter
from workers.deliver import process_delivery

LAYOUT = KeyLayout()
T0 = 1_780_000_000_000


def config_text(redis_url: str, tmp_path: Path) -> str:
    return f"""
redis_url = "{redis_url}"
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]
[[destinations]]
id = "crm"
type = "webhook"
url = "http://127.0.0.1:9/hook"
[[destinations]]
id = "lake"
type = "file"
path = "{tmp_path / "lake"}"
"""


def letter(n: int, name: str = "purchase", reason: str = "HTTP 500: down", at: int = T0) -> DeadLetter:
    event = {"event_name": name, "context": {"event_id": f"d-{n}", "received_at": at}}
    return DeadLetter(f"d-{n}", name, "crm", reason, 6, at - 1000, at, msgspec.Raw(msgspec.json.encode(event)))


@pytest.fixture
def setup(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> tuple[Path, redis.Redis]:
    config_file = tmp_path / "trackpipe.toml"
    config_file.write_text(config_text(valkey_url, tmp_path))
    letters = [
        letter(0, "purchase", "HTTP 500: down", T0),
        letter(1, "sign_up", "HTTP 422: bad schema", T0 + 60_000),
        letter(2, "purchase", "timeout: ReadTimeout", T0 + 120_000),
    ]
    valkey_client.lpush(LAYOUT.dlq("crm"), *(encode_dead_letter(x) for x in letters))
    return config_file, valkey_client


def dlq(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trackpipe.cli", "dlq", *args, "--config", str(config_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def ids_in(conn: redis.Redis, destination: str = "crm") -> list[str]:
    return [json.loads(raw)["event_id"] for raw in conn.lrange(LAYOUT.dlq(destination), 0, -1)]


def test_list_filters_by_event_reason_and_time(setup: tuple[Path, redis.Redis]) -> None:
    config_file, _ = setup
    everything = dlq(config_file, "list", "--destination", "crm", "--json")
    assert everything.returncode == 0, everything.stderr
    assert [json.loads(line)["event_id"] for line in everything.stdout.splitlines()] == ["d-2", "d-1", "d-0"]
    by_event = dlq(config_file, "list", "--destination", "crm", "--event", "purchase", "--json")
    assert [json.loads(line)["event_id"] for line in by_event.stdout.splitlines()] == ["d-2", "d-0"]
    by_reason = dlq(config_file, "list", "--destination", "crm", "--reason", "schema")
    assert by_reason.stdout.startswith("d-1\tsign_up") and len(by_reason.stdout.splitlines()) == 1
    window = dlq(config_file, "list", "--destination", "crm", "--since", str(T0 + 1), "--until", str(T0 + 60_000))
    assert [line.split("\t")[0] for line in window.stdout.splitlines()] == ["d-1"]


def test_show_and_export_include_the_event(setup: tuple[Path, redis.Redis], tmp_path: Path) -> None:
    config_file, _ = setup
    shown = dlq(config_file, "show", "--destination", "crm", "--event-id", "d-1")
    (record,) = [json.loads(line) for line in shown.stdout.splitlines()]
    assert record["event"] == {"event_name": "sign_up", "context": {"event_id": "d-1", "received_at": T0 + 60_000}}
    assert record["reason"] == "HTTP 422: bad schema" and record["attempts"] == 6
    out = tmp_path / "export.jsonl"
    exported = dlq(config_file, "export", "--destination", "crm", "--output", str(out))
    assert exported.returncode == 0
    assert [json.loads(line)["event_id"] for line in out.read_text().splitlines()] == ["d-2", "d-1", "d-0"]


def test_purge_is_a_dry_run_without_yes(setup: tuple[Path, redis.Redis]) -> None:
    config_file, conn = setup
    dry = dlq(config_file, "purge", "--destination", "crm", "--event", "purchase")
    assert "would delete 2" in dry.stdout and ids_in(conn) == ["d-2", "d-1", "d-0"]
    real = dlq(config_file, "purge", "--destination", "crm", "--event", "purchase", "--yes")
    assert "deleted 2" in real.stdout and ids_in(conn) == ["d-1"]


def test_replay_moves_records_to_a_delivery_job_that_delivers_them(setup: tuple[Path, redis.Redis]) -> None:
    config_file, conn = setup
    dry = dlq(config_file, "replay", "--destination", "crm", "--to", "lake", "--dry-run")
    assert "would replay 3" in dry.stdout and ids_in(conn) == ["d-2", "d-1", "d-0"]
    assert delivery_queue("lake", conn).count == 0

    done = dlq(config_file, "replay", "--destination", "crm", "--to", "lake", "--reason", "HTTP")
    assert done.returncode == 0, done.stderr
    assert "replayed 2" in done.stdout
    assert ids_in(conn) == ["d-2"]  # the timeout one was not selected
    (job,) = delivery_queue("lake", conn).jobs
    batch = decode_delivery(job.args[0])
    assert batch.destination_id == "lake" and batch.origin == "replay"
    assert sorted(e.event_id for e in batch.events) == ["d-0", "d-1"]
    assert all(e.attempts == 0 for e in batch.events)

    # The replayed job delivers like any other: the events reach the file, ids kept.
    config = parse(config_file.read_text())
    process_delivery(WorkerContext(config, conn), conn, job.key, job.args[0])
    lines = [json.loads(x) for f in (config_file.parent / "lake").glob("*.jsonl") for x in f.read_text().split()]
    assert sorted(e["context"]["event_id"] for e in lines) == ["d-0", "d-1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--destination", "nosuch"], "--destination: no destination 'nosuch'"),
        (["replay", "--destination", "crm", "--to", "nosuch"], "--to: no destination 'nosuch'"),
        (["list", "--destination", "crm", "--since", "yesterday"], "--since: 'yesterday' is not a time"),
    ],
)
def test_bad_arguments_are_named(setup: tuple[Path, redis.Redis], args: list[str], message: str) -> None:
    config_file, conn = setup
    result = dlq(config_file, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert ids_in(conn) == ["d-2", "d-1", "d-0"]


def test_selection_and_time_parsing_are_pure() -> None:
    record = letter(7, "purchase", "HTTP 500: Down", T0)
    assert Selection(reason_contains="down").matches(record)
    assert not Selection(event_name="sign_up").matches(record)
    assert not Selection(since_ms=T0 + 1).matches(record)
    assert Selection(until_ms=T0).matches(record)
    assert parse_time("1780000000", "--since") == 1_780_000_000_000
    assert parse_time("2026-01-01T00:00:00", "--since") == 1_767_225_600_000
    with pytest.raises(DlqError, match="--until"):
        parse_time("soon", "--until")
