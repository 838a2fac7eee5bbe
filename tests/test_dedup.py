"""workers.dedup on a real valkey-server: first-seen marks, verdicts kept for re-runs, the window,
bucket expiry and one round trip per claim (plus an equivalence check on fakeredis)."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
import redis

from trackpipe.jobs import DONE_FIELD, VERDICT_FIELD
from trackpipe.keys import KeyLayout
from workers.dedup import Deduplicator, PendingClaim, slot_of

LAYOUT = KeyLayout()
WINDOW = 10  # seconds: small, so that the test picks slot boundaries with explicit times
SLOT_MS = WINDOW * 1000
BUCKETS = 64
T0 = 1_700_000_000_000


class CountingConnection(redis.Connection):
    """Counts what goes over the wire: one packed send per command (or pipeline) = one round trip."""

    sent = 0

    def send_packed_command(self, command, check_health=True):  # type: ignore[override]
        CountingConnection.sent += 1
        return super().send_packed_command(command, check_health)


@pytest.fixture
def conn(valkey_url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(valkey_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield client
    client.close()
    pool.disconnect()


@pytest.fixture
def dedup(conn: redis.Redis) -> Deduplicator:
    return Deduplicator(conn, LAYOUT, WINDOW, BUCKETS)


def job_key(name: str) -> str:
    return f"{LAYOUT.rq_prefix}:job:{name}"


def claim(dedup: Deduplicator, conn, job: str, ids: list[str], at: int = T0, source: str = "shop-web"):
    return dedup.claim(conn, job_key(job), [(dedup.key_for(source, i), at) for i in ids])


def remembered_fields(conn) -> list[bytes]:
    fields: list[bytes] = []
    for key in conn.scan_iter(LAYOUT.dedup_pattern):
        fields.extend(conn.hkeys(key))
    return fields


# --- marks and verdicts ----------------------------------------------------------------------


def test_first_seen_ids_are_marked_and_repeats_are_duplicates(dedup: Deduplicator, conn: redis.Redis) -> None:
    assert claim(dedup, conn, "j1", ["a", "b", "c"]) == [True, True, True]
    assert claim(dedup, conn, "j2", ["b", "d", "a"]) == [False, True, False]
    assert claim(dedup, conn, "j3", ["d", "e"]) == [False, True]


def test_two_copies_of_one_id_in_one_call_the_first_wins(dedup: Deduplicator, conn: redis.Redis) -> None:
    assert claim(dedup, conn, "j1", ["a", "b", "a", "a", "c", "b"]) == [True, True, False, False, True, False]
    # Each id is remembered once, however many copies the batch held.
    assert len(remembered_fields(conn)) == 3


def test_a_rerun_reads_back_its_verdicts_instead_of_its_own_marks(dedup: Deduplicator, conn: redis.Redis) -> None:
    assert claim(dedup, conn, "earlier", ["x"]) == [True]
    first = claim(dedup, conn, "j1", ["x", "y", "z", "y"])
    assert first == [False, True, True, False]
    # The ids are now remembered (another job sees them) ...
    assert claim(dedup, conn, "other", ["y", "z"]) == [False, False]
    # ... but the same job, run again, gets the very same verdicts back.
    assert claim(dedup, conn, "j1", ["x", "y", "z", "y"]) == first
    assert claim(dedup, conn, "j1", ["x", "y", "z", "y"]) == first
    assert conn.hget(job_key("j1"), VERDICT_FIELD) is not None
    assert sorted(remembered_fields(conn)) == sorted(dedup.key_for("shop-web", i).field for i in ("x", "y", "z")), (
        "each id is remembered exactly once"
    )


def test_verdicts_live_in_the_job_hash_next_to_rq_fields(dedup: Deduplicator, conn: redis.Redis) -> None:
    conn.hset(job_key("j1"), mapping={"status": "started", "data": b"..."})
    assert claim(dedup, conn, "j1", ["a"]) == [True]
    stored = conn.hgetall(job_key("j1"))
    assert stored[b"status"] == b"started"
    assert VERDICT_FIELD.encode() in stored


def test_once_the_fan_out_is_done_claim_returns_none(dedup: Deduplicator, conn: redis.Redis) -> None:
    assert claim(dedup, conn, "j1", ["a", "b"]) == [True, True]
    conn.hset(job_key("j1"), DONE_FIELD, 1)
    assert claim(dedup, conn, "j1", ["a", "b"]) is None
    # A job marked done before it ever claimed marks nothing.
    conn.hset(job_key("j2"), DONE_FIELD, 1)
    assert claim(dedup, conn, "j2", ["fresh"]) is None
    assert claim(dedup, conn, "j3", ["fresh"]) == [True]


def test_an_empty_claim_is_stored_too(dedup: Deduplicator, conn: redis.Redis) -> None:
    assert dedup.claim(conn, job_key("j1"), []) == []
    assert dedup.claim(conn, job_key("j1"), []) == []
    conn.hset(job_key("j1"), DONE_FIELD, 1)
    assert dedup.claim(conn, job_key("j1"), []) is None


def test_the_same_event_id_under_two_sources_is_not_a_duplicate(dedup: Deduplicator, conn: redis.Redis) -> None:
    assert claim(dedup, conn, "j1", ["e-1"], source="shop-web") == [True]
    assert claim(dedup, conn, "j2", ["e-1"], source="other-site") == [True]
    assert claim(dedup, conn, "j3", ["e-1"], source="shop-web") == [False]
    assert claim(dedup, conn, "j4", ["e-1"], source="other-site") == [False]
    # Source ids that concatenate alike stay apart.
    assert claim(dedup, conn, "j5", ["1"], source="a") == [True]
    assert claim(dedup, conn, "j6", ["a1"], source="") == [True]


# --- the window ------------------------------------------------------------------------------

SLOT_START = (T0 // SLOT_MS + 1) * SLOT_MS


@pytest.mark.parametrize(
    "seen_at",
    [SLOT_START, SLOT_START + SLOT_MS // 2, SLOT_START + SLOT_MS - 1, SLOT_START - 1],
    ids=["slot-start", "mid-slot", "last-ms-of-slot", "just-before-boundary"],
)
def test_an_id_is_a_duplicate_until_the_window_has_passed(dedup: Deduplicator, conn: redis.Redis, seen_at: int) -> None:
    last_ms_of_window = seen_at + SLOT_MS - 1
    assert claim(dedup, conn, "first", ["w"], at=seen_at) == [True]
    assert claim(dedup, conn, "again-same-ms", ["w"], at=seen_at) == [False]
    assert claim(dedup, conn, "again-1ms-later", ["w"], at=seen_at + 1) == [False]
    assert claim(dedup, conn, "again-end-of-window", ["w"], at=last_ms_of_window) == [False]
    if slot_of(seen_at, WINDOW) != slot_of(last_ms_of_window, WINDOW):
        # The case that needs the previous slot's lookup.
        assert slot_of(last_ms_of_window, WINDOW) == slot_of(seen_at, WINDOW) + 1


def test_a_duplicate_later_in_the_same_claim_than_the_slot_boundary(dedup: Deduplicator, conn: redis.Redis) -> None:
    """Two copies in one batch, received on either side of a slot boundary."""
    items = [(dedup.key_for("shop-web", "b"), SLOT_START - 1), (dedup.key_for("shop-web", "b"), SLOT_START)]
    assert dedup.claim(conn, job_key("j1"), items) == [True, False]


def test_an_id_received_earlier_but_processed_later_is_still_a_duplicate(
    dedup: Deduplicator, conn: redis.Redis
) -> None:
    """Jobs are not processed in receive order (a crashed job is re-run after newer ones, an edge
    retry is stored while the first attempt's job still waits): within the window the second one
    processed is the duplicate, whichever was received first — also across a slot boundary."""
    assert claim(dedup, conn, "newer", ["late"], at=SLOT_START) == [True]
    assert claim(dedup, conn, "retry-same-slot", ["late"], at=SLOT_START + 5) == [False]
    assert claim(dedup, conn, "older-across-boundary", ["late"], at=SLOT_START - 1) == [False]


def test_bucket_keys_expire_after_about_two_windows(dedup: Deduplicator, conn: redis.Redis) -> None:
    claim(dedup, conn, "j1", [f"id-{i}" for i in range(200)])
    keys = list(conn.scan_iter(LAYOUT.dedup_pattern))
    assert keys
    for key in keys:
        ttl = conn.ttl(key)
        assert 2 * WINDOW <= ttl <= 2 * WINDOW + 60, (key, ttl)
        assert key.decode().startswith(f"{LAYOUT.prefix}:dd:{slot_of(T0, WINDOW)}:")


# --- one round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 50, 2_000])
def test_a_claim_is_one_round_trip_whatever_the_batch_size(dedup: Deduplicator, conn: redis.Redis, size: int) -> None:
    claim(dedup, conn, "warm-up", ["w"])  # loads the script on the server
    conn.config_resetstat()
    CountingConnection.sent = 0
    ids = [f"rt-{i}" for i in range(size)]
    # Half of them at the last ms of a slot, half in the next one: ids use current and previous slots.
    items = [(dedup.key_for("shop-web", i), SLOT_START - 1 + (n % 2)) for n, i in enumerate(ids)]
    verdicts = dedup.claim(conn, job_key("rt"), items)
    sent = CountingConnection.sent
    stats = conn.info("commandstats")
    assert verdicts == [True] * size
    assert sent == 1
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert "cmdstat_eval" not in stats
    assert "cmdstat_script|load" not in stats


# --- fakeredis -------------------------------------------------------------------------------


def run_scenario(conn) -> list[list[bool] | None]:
    dedup = Deduplicator(conn, LAYOUT, WINDOW, BUCKETS)
    out = [
        claim(dedup, conn, "j1", ["a", "b", "a"]),
        claim(dedup, conn, "j2", ["b", "c"], source="other-site"),
        claim(dedup, conn, "j2", ["b", "c"], source="other-site"),
        claim(dedup, conn, "j3", ["a", "c", "d"], at=T0 + SLOT_MS - 1),
        claim(dedup, conn, "j1", ["a", "b", "a"]),
    ]
    conn.hset(job_key("j3"), DONE_FIELD, 1)
    out.append(claim(dedup, conn, "j3", ["a", "c", "d"]))
    return out


def test_fakeredis_gives_the_same_verdicts_as_valkey(conn: redis.Redis) -> None:
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        expected = [
            [True, True, False],
            [True, True],
            [True, True],
            [False, True, True],
            [True, True, False],
            None,
        ]
        assert run_scenario(conn) == expected
        assert run_scenario(fake) == expected
        assert sorted(remembered_fields(fake)) == sorted(remembered_fields(conn))
    finally:
        fake.close()


# --- per-source windows and dedup = false ------------------------------------------------------

LONG = 60  # seconds: a source's own window, six times the default's


def test_sources_with_their_own_window_live_in_keys_apart_from_the_default(
    dedup: Deduplicator, conn: redis.Redis
) -> None:
    """Slots are window-long: with one namespace, a 60 s source's slot 28333333 would share keys (and
    the default's 80 s expiry) with the 10 s default's slot of that number, hours away."""
    items = [
        (dedup.key_for("short", "a"), T0),
        (dedup.key_for("long", "a", LONG), T0),
        (dedup.key_for("same", "a", WINDOW), T0),  # a window equal to the default: its namespace
    ]
    claim(dedup, conn, "warm-up", ["w"], source="warm-up")  # loads the script on the server
    CountingConnection.sent = 0
    assert dedup.claim(conn, job_key("mixed"), items) == [True, True, True]
    assert CountingConnection.sent == 1
    default_keys = sorted(conn.scan_iter(LAYOUT.dedup_pattern))
    own_keys = sorted(conn.scan_iter(LAYOUT.dedup_window_pattern))
    slot_default, slot_long = slot_of(T0, WINDOW), slot_of(T0, LONG)
    expected = {("warm-up", "w"), ("short", "a"), ("same", "a")}
    assert default_keys == sorted(
        {LAYOUT.dedup_bucket(slot_default, dedup.key_for(*ids).bucket).encode() for ids in expected}
    )
    bucket = dedup.key_for("long", "a", LONG).bucket
    assert own_keys == [LAYOUT.dedup_window_bucket(LONG, slot_long, bucket).encode()]
    assert 2 * LONG <= conn.ttl(own_keys[0]) <= 2 * LONG + 60
    for key in default_keys:
        assert 2 * WINDOW <= conn.ttl(key) <= 2 * WINDOW + 60
    assert conn.exists(f"{LAYOUT.dedup_window_slot_marker_prefix}{LONG}:{slot_long}")
    assert conn.exists(f"{LAYOUT.dedup_slot_marker_prefix}{slot_default}")


def test_each_source_is_deduplicated_within_its_own_window(dedup: Deduplicator, conn: redis.Redis) -> None:
    """Two sources, windows of 10 s (the default) and 60 s: an id seen again 25 s later is a
    duplicate for the 60 s source only; 2 s later, for both; 3 minutes later, for neither. The
    sources' ids mix in each claim, and each claim is one round trip."""
    start = SLOT_START
    claim(dedup, conn, "warm-up", ["w"], source="warm-up")  # loads the script on the server

    def both(job: str, ids: str, at: int) -> list[bool] | None:
        items = [(dedup.key_for("short", ids), at), (dedup.key_for("long", ids, LONG), at)]
        CountingConnection.sent = 0
        verdicts = dedup.claim(conn, job_key(job), items)
        assert CountingConnection.sent == 1
        return verdicts

    assert both("first", "id", start) == [True, True]
    assert both("2s", "id", start + 2_000) == [False, False]
    assert both("25s", "id", start + 25_000) == [True, False]  # the 10 s source forgot it; the 60 s one did not
    # (the 25 s claim re-marked the short source's id) 3 min after that: past both windows.
    assert both("3min", "id", start + 25_000 + 180_000) == [True, True]
    # A copy of a 60 s id received 59 s before: still a duplicate, in whatever order jobs run.
    assert dedup.claim(conn, job_key("late"), [(dedup.key_for("long", "late", LONG), start + 59_000)]) == [True]
    assert dedup.claim(conn, job_key("early"), [(dedup.key_for("long", "late", LONG), start)]) == [False]


def test_a_window_equal_to_the_default_shares_the_default_memory(dedup: Deduplicator, conn: redis.Redis) -> None:
    assert dedup.claim(conn, job_key("j1"), [(dedup.key_for("s", "x"), T0)]) == [True]
    # The same source, now configured with an explicit window equal to the default: still known.
    assert dedup.claim(conn, job_key("j2"), [(dedup.key_for("s", "x", WINDOW), T0 + 1)]) == [False]
    assert list(conn.scan_iter(LAYOUT.dedup_window_pattern)) == []


def test_mixed_windows_give_the_same_verdicts_on_fakeredis(conn: redis.Redis) -> None:
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        outcomes = []
        for client in (conn, fake):
            dedup = Deduplicator(client, LAYOUT, WINDOW, BUCKETS)
            keys = [dedup.key_for("short", "m"), dedup.key_for("long", "m", LONG), dedup.key_for("mid", "m", 30)]
            outcomes.append(
                [dedup.claim(client, job_key(f"m{n}"), [(k, SLOT_START + n * 25_000) for k in keys]) for n in range(4)]
            )
        assert outcomes[0] == outcomes[1]
        assert outcomes[0][0] == [True, True, True]
        assert outcomes[0][1] == [True, False, False]  # 25 s later: only the 10 s source forgot
    finally:
        fake.close()


def test_the_ingest_job_honours_each_source_s_dedup_settings(valkey_url: str, valkey_client: redis.Redis) -> None:
    """Through the ingest job: `dedup = false` never claims (a reused id is VALID twice and nothing
    is remembered for that source), a source's own window is used, and DUPLICATE is counted per source."""
    import json
    import time

    from trackpipe.config import parse
    from trackpipe.messages import IngestBatch, IngestRecord, encode_batch
    from workers.context import WorkerContext
    from workers.ingest import process_ingest

    config = parse(
        f"""
redis_url = "{valkey_url}"
[dedup]
window_seconds = 10
[[sources]]
id = "plain"
site_id = "1"
keys = ["plain-key-0123"]
[[sources]]
id = "off"
site_id = "1"
keys = ["off-key-01234"]
dedup = false
[[sources]]
id = "long"
site_id = "1"
keys = ["long-key-0123"]
dedup_window_seconds = 3600
"""
    )
    ctx = WorkerContext(config, valkey_client)
    event = json.dumps({"event_name": "login", "user": {"id": "1"}, "context": {"event_id": "same-id"}}).encode()
    now = int(time.time() * 1000)

    def duplicates(job: str, at: int) -> dict[str, int]:
        """Source -> events of the job that were DUPLICATE (the others' status depends on warnings)."""
        records = [IngestRecord(s, "1", at, [event, event]) for s in ("plain", "off", "long")]
        outcome = process_ingest(ctx, valkey_client, job, job_key(job), encode_batch(IngestBatch(records)))
        assert outcome.events == 6 and "INVALID_REJECTED" not in outcome.by_status
        found = {s: 0 for s in ("plain", "off", "long")}
        for raw in (r for s in found for r in valkey_client.lrange(LAYOUT.inspector(s), 0, -1)):
            record = json.loads(raw)
            if record["status"] == "DUPLICATE" and record["received_at"] == at:
                found[record["payload"]["context"]["source_id"]] += 1
        return found

    assert duplicates("j1", now) == {"plain": 1, "off": 0, "long": 1}  # the second copy
    # 25 s later: the 10 s window has passed for `plain`; `long` still knows the id; `off` never does.
    assert duplicates("j2", now + 25_000) == {"plain": 1, "off": 0, "long": 2}
    stats = {s: valkey_client.hgetall(LAYOUT.source_stats(s)) for s in ("plain", "off", "long")}
    assert {s: int(v.get(b"DUPLICATE", 0)) for s, v in stats.items()} == {"plain": 2, "off": 0, "long": 3}
    assert {s: sum(map(int, v.values())) for s, v in stats.items()} == {"plain": 4, "off": 4, "long": 4}
    assert ctx.dedup.key_for("off", "same-id").field not in remembered_fields(valkey_client)
    long_field = ctx.dedup.key_for("long", "same-id", 3600).field
    assert long_field not in remembered_fields(valkey_client)  # not in the default's namespace ...
    own = [f for k in valkey_client.scan_iter(LAYOUT.dedup_window_pattern) for f in valkey_client.hkeys(k)]
    assert own == [long_field]  # ... but in its window's


# --- a claim sent ahead (the ingest job prepares its fan-out meanwhile) -----------------------


def ids_items(dedup: Deduplicator, ids: list[str], at: int = T0) -> list[tuple[str, str, int | None, int]]:
    return [("shop-web", i, None, at) for i in ids]


def send_ids(dedup: Deduplicator, conn, job: str, items: list[tuple[str, str, int | None, int]]) -> PendingClaim:
    """A claim of one part, sent now and answered by `result()`."""
    pending = dedup.open_claim(conn, job)
    pending.send(items)
    return pending


def claim_ids(dedup: Deduplicator, conn, job: str, items: list[tuple[str, str, int | None, int]]):
    """The same items claimed in one blocking call."""
    return dedup.claim(conn, job, [(dedup.key_for(s, e, w), at) for s, e, w, at in items])


def test_a_claim_sent_ahead_answers_as_a_claim_does(dedup: Deduplicator, conn: redis.Redis) -> None:
    claim(dedup, conn, "j0", ["a"])
    pending = send_ids(dedup, conn, job_key("j1"), ids_items(dedup, ["a", "b", "b"]))
    conn.set("other", "1")  # the pool's other connections stay usable while the reply waits
    assert pending.result() == [False, True, False]
    with pytest.raises(RuntimeError, match="already taken"):
        pending.result()
    assert conn.connection_pool._in_use_connections == set()
    # A re-run reads the stored verdicts back, sent ahead or not.
    assert claim_ids(dedup, conn, job_key("j1"), ids_items(dedup, ["a", "b", "b"])) == [False, True, False]


def test_a_claim_sent_to_a_server_without_the_script_loads_it_and_runs_once(
    dedup: Deduplicator, conn: redis.Redis
) -> None:
    conn.script_flush()
    pending = send_ids(dedup, conn, job_key("j1"), ids_items(dedup, ["a", "b"]))
    assert pending.result() == [True, True]
    assert len(remembered_fields(conn)) == 2
    assert send_ids(dedup, conn, job_key("j2"), ids_items(dedup, ["a"])).result() == [False]


def test_an_abandoned_claim_frees_its_connection_and_a_rerun_gets_the_same_verdicts(
    dedup: Deduplicator, conn: redis.Redis
) -> None:
    pending = send_ids(dedup, conn, job_key("j1"), ids_items(dedup, ["a", "b"]))
    pending.abandon()  # the job failed while preparing: its reply is never read
    assert conn.connection_pool._in_use_connections == set()
    # Whether or not the server ran the abandoned call, the re-run sees no event as its own duplicate.
    assert claim_ids(dedup, conn, job_key("j1"), ids_items(dedup, ["a", "b"])) == [True, True]
    assert claim_ids(dedup, conn, job_key("j2"), ids_items(dedup, ["a", "b"])) == [False, False]


def test_a_claim_cut_off_by_an_outage_raises_from_result(valkey_url: str, valkey_client: redis.Redis) -> None:
    client = redis.Redis.from_url(valkey_url)
    try:
        dedup = Deduplicator(client, LAYOUT, WINDOW, BUCKETS)
        claim_ids(dedup, client, job_key("warm"), ids_items(dedup, []))  # loads the script
        valkey_client.client_pause(10_000, all=False)  # writes wait: the claim cannot be answered
        try:
            pending = send_ids(dedup, client, job_key("j1"), ids_items(dedup, ["a"]))
            wire_id = next(c["id"] for c in valkey_client.client_list() if c["cmd"] == "evalsha")
            valkey_client.client_kill_filter(_id=wire_id)  # the connection dies before the reply
        finally:
            valkey_client.client_unpause()
        with pytest.raises(redis.ConnectionError):
            pending.result()
        assert client.connection_pool._in_use_connections == set()
        assert claim_ids(dedup, client, job_key("j1"), ids_items(dedup, ["a"])) == [True]
    finally:
        client.close()


# --- a claim sent in parts (the ingest job sends one per CLAIM_PART_EVENTS decoded events) ------


def test_a_claim_in_parts_answers_as_one_claim_does_and_a_rerun_reads_each_part_back(
    dedup: Deduplicator, conn: redis.Redis
) -> None:
    claim(dedup, conn, "j0", ["a"])
    ids = ["a", "b", "c", "b", "d", "c"]  # "b" and "c" repeat in a later part
    pending = dedup.open_claim(conn, job_key("j1"))
    sent = CountingConnection.sent
    for start in range(0, len(ids), 2):
        pending.send(ids_items(dedup, ids[start : start + 2]))
    assert CountingConnection.sent - sent == 3  # written one by one, nothing read yet
    expected = [False, True, True, False, True, False]
    assert pending.result() == expected
    assert conn.connection_pool._in_use_connections == set()
    stored = conn.hkeys(job_key("j1"))
    assert {VERDICT_FIELD.encode(), f"{VERDICT_FIELD}:1".encode(), f"{VERDICT_FIELD}:2".encode()} <= set(stored)
    # A re-run (same parts) reads each part's verdicts back instead of meeting its own marks.
    rerun = dedup.open_claim(conn, job_key("j1"))
    for start in range(0, len(ids), 2):
        rerun.send(ids_items(dedup, ids[start : start + 2]))
    assert rerun.result() == expected
    # The same ids in one call for another job: all already seen.
    assert claim_ids(dedup, conn, job_key("j2"), ids_items(dedup, ids)) == [False] * 6


def test_a_claim_in_parts_is_none_when_the_job_is_done_and_empty_when_nothing_was_sent(
    dedup: Deduplicator, conn: redis.Redis
) -> None:
    assert dedup.open_claim(conn, job_key("j0")).result() == []
    pending = dedup.open_claim(conn, job_key("j1"))
    pending.send(ids_items(dedup, ["a"]))
    assert pending.result() == [True]
    with pytest.raises(RuntimeError, match="already answered"):
        pending.send(ids_items(dedup, ["b"]))
    conn.hset(job_key("j1"), DONE_FIELD, 1)  # the fan-out was committed (by another run)
    rerun = dedup.open_claim(conn, job_key("j1"))
    rerun.send(ids_items(dedup, ["a"]))
    rerun.send(ids_items(dedup, ["b"]))
    assert rerun.result() is None


def test_a_claim_in_parts_sent_to_a_server_without_the_script_runs_every_part_once(
    dedup: Deduplicator, conn: redis.Redis
) -> None:
    conn.script_flush()
    pending = dedup.open_claim(conn, job_key("j1"))
    pending.send(ids_items(dedup, ["a", "b"]))
    pending.send(ids_items(dedup, ["b", "c"]))
    assert pending.result() == [True, True, False, True]
    assert len(remembered_fields(conn)) == 3
    assert conn.connection_pool._in_use_connections == set()


def test_a_job_claimed_in_one_call_and_rerun_in_parts_keeps_its_verdicts(
    dedup: Deduplicator, conn: redis.Redis
) -> None:
    """A job killed past its claim by a worker that claimed in one call, re-run by one that claims
    in parts (a rolling upgrade): the one call's stored verdicts hold for the whole job."""
    claim(dedup, conn, "j0", ["b"])
    ids = ["a", "b", "c", "a", "d"]
    assert claim_ids(dedup, conn, job_key("j1"), ids_items(dedup, ids)) == [True, False, True, False, True]
    for flush in (False, True):
        if flush:
            conn.script_flush()  # and the server lost the script meanwhile
        rerun = dedup.open_claim(conn, job_key("j1"))
        rerun.send(ids_items(dedup, ids[:2]))
        rerun.send(ids_items(dedup, ids[2:]))
        assert rerun.result() == [True, False, True, False, True]


def test_an_id_is_remembered_where_earlier_versions_remembered_it() -> None:
    """The field and bucket of an id are stored data: a new worker must find the ids an older one
    remembered (docs/ARCHITECTURE.md, `P:dd:`: the first 8 bytes of the 12-byte BLAKE2b digest
    of "source\\0id", the bucket from the other 4, big-endian, modulo the bucket count)."""
    import hashlib

    from workers.dedup import dedup_key

    for source, event_id in [("shop-web", "e-1"), ("s", "ü-é"), ("x" * 40, "0" * 200)]:
        digest = hashlib.blake2b(f"{source}\0{event_id}".encode(), digest_size=12).digest()
        expected = (digest[:8], int.from_bytes(digest[8:], "big") % 1000)
        key = dedup_key(source, event_id, 1000)
        assert (key.field, key.bucket) == expected
        d = Deduplicator(fakeredis.FakeRedis(), LAYOUT, WINDOW, 1000)
        blob, _ = d.ids_blob([(source, event_id, None, T0)])
        assert blob[:8] == expected[0] and int.from_bytes(blob[12:16], "big") == expected[1]
        assert blob == d.keys_blob([(key, T0)])[0]
