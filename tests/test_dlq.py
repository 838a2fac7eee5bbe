"""`trackpipe dlq`: select, show, export, purge and replay dead letters (real valkey, real CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest
import redis

from tests.support import ROOT, TEST_KEY
from trackpipe.config import parse
from trackpipe.dlq import FIRST_PAGE, DlqError, Selection, parse_time, records, select
from trackpipe.jobs import delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import DeadLetter, decode_delivery, encode_dead_letter
from workers.context import WorkerContext
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
        [sys.executable, "-m", "commands", "dlq", *args, "--config", str(config_file)],
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


# -- reading a DLQ page by page ---------------------------------------------------------------


def full_read(conn: redis.Redis, selection: Selection, limit: int | None) -> list[bytes]:
    """What the DLQ holds, read in one LRANGE: the reference the paged reader must match."""
    chosen = []
    for raw in conn.lrange(LAYOUT.dlq("crm"), 0, -1):
        try:
            record = msgspec.json.decode(raw, type=DeadLetter)
        except msgspec.DecodeError:
            continue
        if selection.matches(record) and (limit is None or len(chosen) < limit):
            chosen.append(raw)
    return chosen


@pytest.fixture
def many(valkey_client: redis.Redis) -> redis.Redis:
    """2,500 dead letters of crm (several pages), of three names, two reasons, rising times, with a
    few records that are not dead letters in between, and one record stored twice."""
    names = ("purchase", "sign_up", "page_view")
    letters = [
        encode_dead_letter(letter(n, names[n % 3], "HTTP 500: down" if n % 7 else "timeout", T0 + n * 1000))
        for n in range(2_500)
    ]
    letters[1_234] = b"not a dead letter"
    letters[101] = b"{broken"
    letters[2_000] = letters[1_999]
    valkey_client.rpush(LAYOUT.dlq("crm"), *letters)  # index n holds letter n: newest first is d-0 first here
    return valkey_client


SELECTIONS = [
    Selection(),
    Selection(event_name="sign_up"),
    Selection(reason_contains="TIMEOUT"),
    Selection(since_ms=T0 + 2_200_000),
    Selection(until_ms=T0 + 50_000, event_name="purchase"),
    Selection(event_id="d-2499"),
    Selection(event_id="d-1999"),
    Selection(event_name="nosuch"),
]


@pytest.mark.parametrize("limit", [None, 1, 7, 100, 101, 999, 5_000])
def test_paged_selection_matches_a_full_read(many: redis.Redis, limit: int | None) -> None:
    for selection in SELECTIONS:
        expected = full_read(many, selection, limit)
        got = select(many, LAYOUT, "crm", selection, limit)
        assert [raw for raw, _ in got] == expected, (selection, limit)
        assert all(record == msgspec.json.decode(raw, type=DeadLetter) for raw, record in got)


@pytest.mark.parametrize(("first_page", "max_page"), [(1, 1), (3, 7), (100, 1_000), (5_000, 5_000)])
def test_every_page_size_reads_every_record_once_in_order(many: redis.Redis, first_page: int, max_page: int) -> None:
    paged = [raw for raw, _ in records(many, LAYOUT, "crm", first_page=first_page, max_page=max_page)]
    assert paged == full_read(many, Selection(), None)
    assert len(paged) == 2_500 - 2  # the two that are not dead letters are skipped; the twins both kept


def test_stopping_early_reads_only_the_pages_needed(many: redis.Redis) -> None:
    reads: list[tuple[int, int]] = []
    real_lrange = many.lrange

    def counting(key: str, start: int, end: int) -> list[bytes]:
        reads.append((start, end))
        return real_lrange(key, start, end)

    many.lrange = counting  # type: ignore[method-assign]
    try:
        assert [r.event_id for _, r in select(many, LAYOUT, "crm", Selection(), 3)] == ["d-0", "d-1", "d-2"]
    finally:
        del many.lrange
    assert reads == [(0, FIRST_PAGE - 1)]


def test_records_pushed_while_reading_are_neither_repeated_nor_make_others_missed(many: redis.Redis) -> None:
    """New dead letters land at the head between two pages and push the unread ones back: every
    record that was there at the start is still read exactly once, in order."""
    many.delete(LAYOUT.dlq("crm"))
    many.rpush(LAYOUT.dlq("crm"), *(encode_dead_letter(letter(n)) for n in range(300)))
    before = full_read(many, Selection(), None)
    seen = []
    for n, (raw, _) in enumerate(records(many, LAYOUT, "crm", first_page=10, max_page=40)):
        seen.append(raw)
        if n % 25 == 0 or n == 150:  # mid-page, at page ends, and once more than a page
            pushed = 3 if n != 150 else 95
            many.lpush(LAYOUT.dlq("crm"), *(encode_dead_letter(letter(10_000 + n * 100 + i)) for i in range(pushed)))
    assert len(before) == 300 and seen == before


# -- the count of dropped dead letters has a key of its own -------------------------------------


def dead_letter_everything(conn: redis.Redis, config_file: Path, destination: str, count: int, max_events: int) -> int:
    """Dead-letter `count` events of `destination` through a real delivery job (the destination is
    not in the config, so every event is refused); returns how many the full DLQ dropped."""
    from trackpipe.messages import DeliveryBatch, DeliveryEvent, encode_delivery

    text = config_file.read_text() + f"\n[dlq]\nmax_events = {max_events}\n"
    ctx = WorkerContext(parse(text), conn)
    try:
        events = [DeliveryEvent(f"{destination}-{n}", "purchase", b'{"n":%d}' % n) for n in range(count)]
        payload = encode_delivery(DeliveryBatch(destination, events, T0, "fanout"))
        before = int(conn.hget(LAYOUT.dlq_dropped, destination) or 0)
        process_delivery(ctx, conn, f"trackpipe:rq:job:{uuid.uuid4()}", payload, now=T0 / 1000)
        return int(conn.hget(LAYOUT.dlq_dropped, destination) or 0) - before
    finally:
        ctx.close()


def test_a_destination_named_dropped_keeps_its_dead_letters(setup: tuple[Path, redis.Redis]) -> None:
    """`dropped` is a valid destination id; its DLQ and the dropped counts must not share a key
    (they did: P:dlq:dropped, a hash for one and a list for the other, WRONGTYPE for the second)."""
    config_file, conn = setup
    assert dead_letter_everything(conn, config_file, "gone", 5, max_events=4) == 1
    assert ids_in(conn, "dropped") == []
    assert dead_letter_everything(conn, config_file, "dropped", 3, max_events=4) == 0
    assert ids_in(conn, "dropped") == ["dropped-2", "dropped-1", "dropped-0"]
    assert dead_letter_everything(conn, config_file, "dropped", 3, max_events=4) == 2
    assert ids_in(conn, "dropped") == ["dropped-2", "dropped-1", "dropped-0", "dropped-2"]
    assert conn.hgetall(LAYOUT.dlq_dropped) == {b"gone": b"1", b"dropped": b"2"}
    assert LAYOUT.dlq_dropped != LAYOUT.dlq("dropped")


def test_counts_left_at_the_old_key_are_kept_and_moved(setup: tuple[Path, redis.Redis]) -> None:
    """An earlier version counted drops in P:dlq:dropped: status reads them until a worker starts and
    folds them into the new hash, and a destination named `dropped` gets its DLQ back."""
    from trackpipe.queries import collect

    config_file, conn = setup
    old = LAYOUT.dlq("dropped")
    conn.hset(old, mapping={"crm": 7, "lake": 2})
    config = parse(config_file.read_text())
    assert {d.id: d.dlq_dropped for d in collect(config, conn).destinations} == {"crm": 7, "lake": 2}

    assert dead_letter_everything(conn, config_file, "gone", 5, max_events=3) == 2
    assert conn.exists(old) == 0
    assert conn.hgetall(LAYOUT.dlq_dropped) == {b"crm": b"7", b"lake": b"2", b"gone": b"2"}
    assert {d.id: d.dlq_dropped for d in collect(config, conn).destinations} == {"crm": 7, "lake": 2}

    conn.delete(LAYOUT.dlq_dropped)
    conn.hset(old, mapping={"lake": 5})
    assert dead_letter_everything(conn, config_file, "dropped", 2, max_events=3) == 0
    assert ids_in(conn, "dropped") == ["dropped-1", "dropped-0"]  # the old hash was moved out of its way
    assert conn.hgetall(LAYOUT.dlq_dropped) == {b"lake": b"5"}
    assert {d.id: d.dlq_dropped for d in collect(config, conn).destinations} == {"crm": 0, "lake": 5}
