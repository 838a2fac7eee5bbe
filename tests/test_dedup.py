"""workers.dedup on a real valkey-server: first-seen marks, verdicts kept for re-runs, the window,
bucket expiry and one round trip per claim (plus an equivalence check on fakeredis)."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
import redis

from trackpipe.jobs import DONE_FIELD, VERDICT_FIELD
from trackpipe.keys import KeyLayout
from workers.dedup import Deduplicator, slot_of

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
