"""`trackpipe dlq`: select, show, export, purge and replay dead letters (real valkey, real CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
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


ONE_SOURCE = 'redis_url = "redis://127.0.0.1:1"\n[[sources]]\nid = "s"\nsite_id = "1"\nkeys = ["k-0123456789abcdef"]\n'


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


# -- the console's operations: pages, identities, background replays, purge ---------------------


def test_a_letter_is_known_by_the_hash_of_its_bytes() -> None:
    from trackpipe.dlq import LETTER_ID_CHARS, check_ids, letter_id

    one, other = encode_dead_letter(letter(1)), encode_dead_letter(letter(2))
    assert letter_id(one) == letter_id(bytes(one)) != letter_id(other)
    assert len(letter_id(one)) == LETTER_ID_CHARS
    assert check_ids([letter_id(one).upper(), " ", letter_id(other)]) == {letter_id(one), letter_id(other)}
    with pytest.raises(DlqError, match="id: 'nope' is not a dead letter's id"):
        check_ids(["nope"])
    with pytest.raises(DlqError, match="at most 1000 letters"):
        check_ids([f"{n:024x}" for n in range(1_001)])


@pytest.mark.parametrize(("text", "message"), [("fast", "not a number"), ("0", "from 0.1"), ("nan", "from 0.1")])
def test_a_bad_rate_is_named(text: str, message: str) -> None:
    from trackpipe.dlq import check_rate

    assert check_rate("") is None and check_rate("2.5") == 2.5
    with pytest.raises(DlqError, match=f"rate: .*{message}"):
        check_rate(text)


def test_pages_follow_the_last_letter_shown_not_a_position(many: redis.Redis) -> None:
    from trackpipe.dlq import letter_id, matching, page_of

    def page(*args, after=None, size=50):  # one DLQ's pages
        return page_of(matching(*args), after=after, size=size)

    selection = Selection(event_name="sign_up")
    expected = full_read(many, selection, None)
    seen: list[bytes] = []
    after = None
    pushed = 0
    while True:
        got = page(many, LAYOUT, "crm", selection, after=after, size=70)
        assert not got.lost and len(got.letters) <= 70
        seen.extend(encode_dead_letter(record) for _, record in got.letters)
        assert [ident for ident, _ in got.letters] == [letter_id(raw) for raw in seen[-len(got.letters) :]]
        if got.next_after is None:
            break
        assert got.next_after == got.letters[-1][0]
        after = got.next_after
        # New letters (that match too) land at the head between pages: the next page is not moved by them.
        many.lpush(LAYOUT.dlq("crm"), encode_dead_letter(letter(50_000 + pushed, "sign_up")))
        pushed += 1
    assert seen == expected and pushed > 5

    first = page(many, LAYOUT, "crm", selection, size=3)
    assert [r.event_id for _, r in first.letters] == [f"d-{50_000 + pushed - 1 - n}" for n in range(3)]
    gone = page(many, LAYOUT, "crm", selection, after="0" * 24)
    assert gone.letters == [] and gone.lost and gone.next_after is None


def test_letters_chosen_by_identity_are_exported_and_purged_and_no_others(many: redis.Redis) -> None:
    from trackpipe.dlq import count, export_lines_union, letter_id, matching, purge
    from trackpipe.sharded import connect

    twin = many.lindex(LAYOUT.dlq("crm"), 1_999)
    picked = frozenset({letter_id(many.lindex(LAYOUT.dlq("crm"), 5)), letter_id(twin)})
    assert count(many, LAYOUT, "crm", Selection(), picked) == 3  # the twins share their identity
    assert count(many, LAYOUT, "crm", Selection(event_name="sign_up"), picked) == 2  # filters still apply
    one_shard = connect(parse(ONE_SOURCE), many)  # the export over one shard: `many`
    lines = b"".join(export_lines_union(one_shard, LAYOUT, "crm", Selection(), picked)).splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == ["d-5", "d-1999", "d-1999"]
    assert msgspec.json.decode(lines[0], type=DeadLetter) == letter(5, "page_view", "HTTP 500: down", T0 + 5_000)

    chosen = [(raw, record) for _, raw, record in matching(many, LAYOUT, "crm", Selection(), picked)]
    assert purge(many, LAYOUT, "crm", chosen) == 3
    assert many.llen(LAYOUT.dlq("crm")) == 2_497
    assert count(many, LAYOUT, "crm", Selection(), picked) == 0
    assert count(many, LAYOUT, "crm", Selection(event_id="d-6")) == 1


class FakeTime:
    """A clock that moves only when slept on: pacing is checked without waiting for it."""

    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.now = 1_000.0
        self.pauses: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)


def test_a_paced_replay_records_its_progress_and_moves_only_what_it_counted(
    setup: tuple[Path, redis.Redis],
) -> None:
    from trackpipe.dlq import read_progress, run_replay, running_replay, start_replay

    config_file, conn = setup
    config = parse(config_file.read_text())
    conn.delete(LAYOUT.dlq("crm"))
    conn.lpush(LAYOUT.dlq("crm"), *(encode_dead_letter(letter(n, at=T0 + n)) for n in range(7)))
    conn.lpush(LAYOUT.dlq("crm"), encode_dead_letter(letter(99, "sign_up")))

    job = start_replay(conn, config, "crm", Selection(event_name="purchase"), "lake", rate=2)
    assert (job.total, job.done, job.state, job.target) == (7, 0, "running", "lake")
    assert running_replay(conn, LAYOUT, "crm") == job.job_id
    with pytest.raises(DlqError, match="a replay of crm's dead letters is already running"):
        start_replay(conn, config, "crm", Selection(), "crm")

    seen: list[tuple[int, int, str]] = []

    def at_each_pause(_: float) -> None:
        stored = read_progress(conn, LAYOUT, job.job_id)
        assert stored is not None
        seen.append((stored.done, stored.total, stored.state))
        # A letter that fails (again) while the replay runs is newer than the replay: not replayed.
        conn.lpush(LAYOUT.dlq("crm"), encode_dead_letter(letter(500 + len(seen), at=int(time.time() * 1000) + 60_000)))

    fake = FakeTime(at_each_pause)
    done = run_replay(conn, config, job, Selection(event_name="purchase"), sleep=fake.sleep, clock=fake.clock)
    assert (done.state, done.done, done.error) == ("done", 7, None)
    # 2 events a second, in batches of 2: each batch waits for its second.
    assert fake.pauses == [1.0, 1.0, 1.0]
    assert seen == [(2, 7, "running"), (4, 7, "running"), (6, 7, "running")]
    stored = read_progress(conn, LAYOUT, job.job_id)
    assert stored is not None and (stored.state, stored.done) == ("done", 7)
    assert running_replay(conn, LAYOUT, "crm") is None
    assert sorted(ids_in(conn)) == ["d-501", "d-502", "d-503", "d-99"]
    jobs = delivery_queue("lake", conn).jobs
    assert [len(decode_delivery(j.args[0]).events) for j in jobs] == [2, 2, 2, 1]
    replayed = [e.event_id for j in jobs for e in decode_delivery(j.args[0]).events]
    assert replayed == [f"d-{n}" for n in range(6, -1, -1)]

    # The lock is free again: the next replay of the same DLQ may start.
    again = start_replay(conn, config, "crm", Selection(event_id="d-99"), "crm")
    assert run_replay(conn, config, again, Selection(event_id="d-99")).done == 1
    assert sorted(ids_in(conn)) == ["d-501", "d-502", "d-503"]


def test_a_replay_whose_process_died_reads_interrupted_and_frees_its_dlq(setup: tuple[Path, redis.Redis]) -> None:
    from trackpipe.dlq import read_progress, start_replay

    config_file, conn = setup
    config = parse(config_file.read_text())
    job = start_replay(conn, config, "crm", Selection(), "crm", rate=1)
    assert (read_progress(conn, LAYOUT, job.job_id) or job).state == "running"
    conn.delete(LAYOUT.dlq_replay_lock("crm"))  # what its expiry does once the process is gone
    assert (read_progress(conn, LAYOUT, job.job_id) or job).state == "interrupted"
    assert read_progress(conn, LAYOUT, "nosuch") is None
    assert start_replay(conn, config, "crm", Selection(), "crm").total == 3
    assert ids_in(conn) == ["d-2", "d-1", "d-0"]  # counting changes nothing


def test_a_replay_that_fails_midway_says_why_and_keeps_the_rest(setup: tuple[Path, redis.Redis]) -> None:
    from trackpipe import dlq

    config_file, conn = setup
    config = parse(config_file.read_text())
    job = dlq.start_replay(conn, config, "crm", Selection(), "crm", rate=1)
    real_replay = dlq.replay
    calls = 0

    def failing(*args: object, **kwargs: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise redis.ConnectionError("Connection reset by peer")
        return real_replay(*args, **kwargs)  # type: ignore[arg-type]

    dlq.replay = failing  # type: ignore[assignment]
    try:
        fake = FakeTime()
        done = dlq.run_replay(conn, config, job, Selection(), sleep=fake.sleep, clock=fake.clock)
    finally:
        dlq.replay = real_replay  # type: ignore[assignment]
    assert (done.state, done.done) == ("failed", 1)
    assert done.error == "ConnectionError: Connection reset by peer"
    assert ids_in(conn) == ["d-1", "d-0"]
    assert dlq.running_replay(conn, LAYOUT, "crm") is None


def test_a_failure_inside_a_chunk_still_counts_the_batches_already_enqueued(
    setup: tuple[Path, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trackpipe import dlq

    config_file, conn = setup
    config = parse(config_file.read_text())
    monkeypatch.setattr(dlq, "REPLAY_BATCH", 1)  # one chunk of 3 letters, enqueued one by one
    real_encode = dlq.encode_delivery
    calls = 0

    def failing_second(batch: object) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise redis.ResponseError("OOM command not allowed")
        return real_encode(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(dlq, "encode_delivery", failing_second)
    job = dlq.start_replay(conn, config, "crm", Selection(), "lake")
    done = dlq.run_replay(conn, config, job, Selection())
    assert (done.state, done.done, done.total) == ("failed", 1, 3)
    assert done.error == "ResponseError: OOM command not allowed"
    stored = dlq.read_progress(conn, LAYOUT, job.job_id)
    assert stored is not None and (stored.state, stored.done) == ("failed", 1)
    assert ids_in(conn) == ["d-1", "d-0"] and delivery_queue("lake", conn).count == 1


def test_a_replay_from_the_cli_or_the_admin_api_waits_for_none_and_never_runs_beside_another(
    valkey_client: redis.Redis,
) -> None:
    from trackpipe.dlq import DlqError, exclusive_replay

    layout = KeyLayout()
    with exclusive_replay(valkey_client, layout, "crm") as renew:
        renew()
        assert valkey_client.ttl(layout.dlq_replay_lock("crm")) > 0
        with pytest.raises(DlqError, match="already running"), exclusive_replay(valkey_client, layout, "crm"):
            pass
        with exclusive_replay(valkey_client, layout, "other"):  # another DLQ is not held
            pass
    assert not valkey_client.exists(layout.dlq_replay_lock("crm"))  # released at the end
