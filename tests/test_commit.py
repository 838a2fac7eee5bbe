"""ingest.commit: group commit of concurrent requests into few writes, with honest failures."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ingest.commit import GroupCommitter, StorageUnavailable
from ingest.unauthorized import AuthFailure, UnauthorizedSample
from trackpipe.messages import IngestBatch, IngestRecord

WAIT = 10.0  # safety net for hand-offs; never reached when the code works


class FakeStore:
    """A write function that can be held in flight (gate) and told to fail given calls."""

    def __init__(self, *, fail_calls: set[int] | None = None, backlog: int = 0) -> None:
        self.calls: list[tuple[IngestBatch | None, list[UnauthorizedSample]]] = []
        self.finished: list[IngestRecord] = []  # records of writes that returned successfully
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Semaphore(0)  # released once per write started
        self.fail_calls = fail_calls or set()
        self.backlog = backlog
        self.in_flight = 0
        self.most_in_flight = 0

    async def write(self, batch: IngestBatch | None, samples: list[UnauthorizedSample]) -> int:
        n = len(self.calls)
        self.calls.append((batch, list(samples)))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.entered.release()
        try:
            await asyncio.wait_for(self.gate.wait(), WAIT)  # TimeoutError: the test never released it
            if n in self.fail_calls:
                raise ConnectionError(f"redis down (write {n})")
        finally:
            self.in_flight -= 1
        if batch is not None:
            self.finished.extend(batch.records)
        self.backlog += 1
        return self.backlog

    async def started(self) -> None:
        """Wait until one more write has started."""
        await asyncio.wait_for(self.entered.acquire(), WAIT)

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    @property
    def batches(self) -> list[IngestBatch | None]:
        return [batch for batch, _ in self.calls]

    def sizes(self) -> list[int]:
        return [0 if b is None else b.event_count for b in self.batches]


@pytest.fixture
def quiet_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """No log records: a captured record would keep the failed write's frame (and future) alive."""
    monkeypatch.setattr(logging.getLogger("trackpipe.edge"), "disabled", True)


def record(n: int, events: int = 1) -> IngestRecord:
    return IngestRecord("shop-web", "29", 1_700_000_000_000 + n, [b'{"n":%d}' % n] * events)


def sample(n: int) -> UnauthorizedSample:
    return UnauthorizedSample.of("29", AuthFailure.UNKNOWN_KEY, n, "/events", b'{"n":%d}' % n)


async def settle() -> None:
    """Let every ready task run until it blocks (no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


def run(test: Callable[[FakeStore, GroupCommitter], Awaitable[None]], store: FakeStore, **options: Any) -> None:
    async def main() -> None:
        committer = GroupCommitter(store.write, **options)
        try:
            await test(store, committer)
        finally:
            store.release()
            await committer.drain()

    asyncio.run(main())


def test_single_submit_is_written_once() -> None:
    store = FakeStore(backlog=41)

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        rec = record(1)
        await committer.submit(rec)
        assert store.batches == [IngestBatch([rec])]
        assert store.calls[0][1] == []
        assert committer.backlog == 42
        assert (committer.stats.writes, committer.stats.events, committer.stats.failures) == (1, 1, 0)

    run(test, store)


def test_writes_never_overlap() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        submits = [asyncio.ensure_future(committer.submit(record(0)))]
        await store.started()
        submits += [asyncio.ensure_future(committer.submit(record(n))) for n in range(1, 50)]
        await settle()
        assert store.in_flight == 1
        store.release()
        await asyncio.gather(*submits)
        assert store.most_in_flight == 1
        assert len(store.calls) >= 2

    run(test, store)


def test_concurrent_submits_share_few_writes() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        rec0 = record(0)
        first = asyncio.create_task(committer.submit(rec0))
        await store.started()
        records = [record(i) for i in range(1, 301)]
        tasks = [asyncio.create_task(committer.submit(r)) for r in records]
        await settle()
        assert not any(t.done() for t in tasks)
        store.release()
        await asyncio.gather(first, *tasks)
        assert len(store.calls) <= 3
        assert len(store.calls) < len(records) // 10
        written = Counter(id(r) for b in store.batches if b is not None for r in b.records)
        assert set(written) == {id(r) for r in [rec0, *records]}
        assert all(count == 1 for count in written.values())

    run(test, store, interval_seconds=0)


def test_every_record_is_written_exactly_once_under_load() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        records = [record(i) for i in range(500)]

        async def client(chunk: list[IngestRecord]) -> None:
            for r in chunk:
                await committer.submit(r)

        await asyncio.gather(*(client(records[i::50]) for i in range(50)))
        written = [r for b in store.batches if b is not None for r in b.records]
        assert sorted(written, key=lambda r: r.received_at) == records
        assert len(store.calls) < len(records)
        assert committer.stats.events == 500

    run(test, store)


def test_submit_returns_only_after_its_write_finished() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        records = [record(i) for i in range(40)]
        seen_finished: list[bool] = []

        async def client(r: IngestRecord) -> None:
            await committer.submit(r)
            seen_finished.append(any(f is r for f in store.finished))

        store.hold()
        tasks = [asyncio.create_task(client(r)) for r in records[:1]]
        await store.started()
        tasks += [asyncio.create_task(client(r)) for r in records[1:]]
        await settle()
        assert seen_finished == []  # everybody still waits for the write in flight
        store.release()
        await asyncio.gather(*tasks)
        assert seen_finished == [True] * 40

    run(test, store, interval_seconds=0)


def test_failing_write_fails_exactly_its_submits() -> None:
    store = FakeStore(fail_calls={1})

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        first = asyncio.create_task(committer.submit(record(0)))
        await store.started()
        # Write 1 (fails) will hold records 1-2; write 2 (max_events=2) holds 3-4.
        second = [asyncio.create_task(committer.submit(record(i))) for i in (1, 2)]
        third = [asyncio.create_task(committer.submit(record(i))) for i in (3, 4)]
        await settle()
        store.release()
        results = await asyncio.gather(first, *second, *third, return_exceptions=True)
        assert store.sizes() == [1, 2, 2]
        assert results[0] is None
        for failed in results[1:3]:
            assert isinstance(failed, StorageUnavailable)
            assert "redis down (write 1)" in str(failed)
        assert results[3:] == [None, None]
        assert committer.stats.failures == 1
        assert committer.stats.writes == 2

    run(test, store, max_events=2, interval_seconds=0)


def test_write_after_a_failure_works() -> None:
    store = FakeStore(fail_calls={0})

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        with pytest.raises(StorageUnavailable, match="redis down"):
            await committer.submit(record(0))
        rec = record(1)
        await committer.submit(rec)
        assert store.finished == [rec]
        assert committer.stats.failures == 1
        assert committer.stats.writes == 1

    run(test, store)


def test_max_events_splits_writes() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        first = asyncio.create_task(committer.submit(record(0)))
        await store.started()
        records = [record(i) for i in range(1, 8)]
        tasks = [asyncio.create_task(committer.submit(r)) for r in records]
        await settle()
        store.release()
        await asyncio.gather(first, *tasks)
        assert store.sizes() == [1, 3, 3, 1]
        assert [r for b in store.batches[1:] if b is not None for r in b.records] == records

    run(test, store, max_events=3, interval_seconds=0)


def test_max_events_counts_events_not_requests() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        first = asyncio.create_task(committer.submit(record(0)))
        await store.started()
        tasks = [asyncio.create_task(committer.submit(record(i, events=5))) for i in range(1, 5)]
        await settle()
        store.release()
        await asyncio.gather(first, *tasks)
        assert store.sizes() == [1, 10, 10]
        assert [len(b.records) for b in store.batches if b is not None] == [1, 2, 2]

    run(test, store, max_events=10, interval_seconds=0)


def test_sample_rides_along_with_the_next_write() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        first = asyncio.create_task(committer.submit(record(0)))
        await store.started()
        s1, s2 = sample(1), sample(2)
        committer.add_sample(s1)
        rec = record(1)
        second = asyncio.create_task(committer.submit(rec))
        committer.add_sample(s2)
        await settle()
        store.release()
        await asyncio.gather(first, second)
        assert len(store.calls) == 2
        assert store.calls[0][1] == []
        assert store.calls[1] == (IngestBatch([rec]), [s1, s2])

    run(test, store, interval_seconds=0)


def test_sample_alone_is_written_without_a_batch() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        s = sample(1)
        committer.add_sample(s)
        assert store.calls == []  # add_sample never blocks on the write
        await committer.drain()
        assert store.calls == [(None, [s])]
        assert committer.stats.writes == 1
        assert committer.stats.events == 0

    run(test, store)


def test_failed_sample_write_is_not_an_unretrieved_exception(quiet_log: None) -> None:
    store = FakeStore(fail_calls={0})
    reported: list[dict[str, Any]] = []

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        committer.add_sample(sample(1))
        await committer.drain()
        assert committer.stats.failures == 1
        gc.collect()
        # Control: the handler does see a future whose exception nobody retrieved.
        control = loop.create_future()
        control.set_exception(RuntimeError("control"))
        del control
        gc.collect()
        # And the committer still works after the failure.
        await committer.submit(record(1))
        assert len(store.calls) == 2

    run(test, store)
    messages = [(c.get("message"), type(c.get("exception")).__name__) for c in reported]
    assert messages == [("Future exception was never retrieved", "RuntimeError")]


def test_failed_write_with_submit_and_sample(quiet_log: None) -> None:
    store = FakeStore(fail_calls={0})
    reported: list[dict[str, Any]] = []

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        committer.add_sample(sample(1))
        with pytest.raises(StorageUnavailable):
            await committer.submit(record(1))
        assert store.calls[0][1] == [sample(1)]
        gc.collect()

    run(test, store)
    assert reported == []


def test_drain_waits_for_writes_in_flight() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        rec = record(1)
        submit = asyncio.create_task(committer.submit(rec))
        await store.started()
        queued = record(2)
        late = asyncio.create_task(committer.submit(queued))
        await settle()
        draining = asyncio.create_task(committer.drain())
        await settle()
        assert not draining.done()
        assert store.finished == []
        store.release()
        await draining
        assert store.finished == [rec, queued]  # the queued write too, not just the one in flight
        await asyncio.gather(submit, late)

    run(test, store, interval_seconds=0)


def test_drain_with_nothing_to_do() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        await committer.drain()
        assert store.calls == []

    run(test, store)


def test_on_write_reports_events_and_duration() -> None:
    store = FakeStore()
    observed: list[tuple[int, float]] = []

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        await committer.submit(record(1, events=3))
        await committer.submit(record(2, events=2))

    run(test, store, on_write=lambda events, seconds: observed.append((events, seconds)))
    assert [events for events, _ in observed] == [3, 2]
    assert all(seconds >= 0 for _, seconds in observed)


def test_on_write_is_not_called_for_failed_writes() -> None:
    store = FakeStore(fail_calls={0})
    observed: list[int] = []

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        with pytest.raises(StorageUnavailable):
            await committer.submit(record(1))
        await committer.submit(record(2))

    run(test, store, on_write=lambda events, _seconds: observed.append(events))
    assert observed == [1]


def test_cancelled_submit_still_gets_written() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        first = asyncio.create_task(committer.submit(record(0)))
        await store.started()
        rec = record(1)
        impatient = asyncio.create_task(committer.submit(rec))
        await settle()
        impatient.cancel()
        await settle()
        store.release()
        await first
        await committer.drain()
        assert rec in store.finished
        assert impatient.cancelled()

    run(test, store, interval_seconds=0)


def test_a_lone_request_after_a_quiet_spell_is_written_at_once() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        # With a 30 s interval, a write that waited out the interval would time out the test.
        await asyncio.wait_for(committer.submit(record(1)), WAIT)
        assert store.sizes() == [1]

    run(test, store, interval_seconds=30)


def test_small_writes_are_paced_by_the_interval() -> None:
    """Right after a write, a small one waits out the interval and gathers what arrives meanwhile."""
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        await committer.submit(record(0))  # written at once: nothing was written before
        later = [asyncio.ensure_future(committer.submit(record(n))) for n in (1, 2, 3)]
        await settle()
        assert store.sizes() == [1]  # the next write is waiting for the interval
        await asyncio.wait_for(asyncio.gather(*later), WAIT)
        assert store.sizes() == [1, 3]

    run(test, store, interval_seconds=0.2, min_events=100)


def test_enough_events_are_written_without_waiting_for_the_interval() -> None:
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        await committer.submit(record(0))
        # min_events reached: written at once although the 30 s interval has not passed.
        await asyncio.wait_for(asyncio.gather(*(committer.submit(record(n)) for n in (1, 2, 3))), WAIT)
        assert store.sizes() == [1, 3]

    run(test, store, interval_seconds=30, min_events=3)


def test_a_burst_with_no_write_in_flight_is_split_once_at_min_events() -> None:
    """Requests arriving together while nothing is written (closed-loop clients answered by one write)
    split into a first write of min_events and one that gathers the rest while the first is in
    flight: one half is served while the other's write is on its way."""
    store = FakeStore()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        burst = [asyncio.ensure_future(committer.submit(record(n))) for n in range(10)]
        await store.started()
        await settle()
        assert store.sizes() == [4]
        late = [asyncio.ensure_future(committer.submit(record(n))) for n in range(10, 15)]
        await settle()
        store.release()
        await asyncio.wait_for(asyncio.gather(*burst, *late), WAIT)
        # Only the first write is cut: the second took the rest of the burst and the late ones.
        assert store.sizes() == [4, 11]
        assert store.most_in_flight == 1

    run(test, store, interval_seconds=30, min_events=4)


def test_failed_write_counts_in_commit_failures_metric() -> None:
    """`trackpipe_edge_commit_failures_total` (README, metrics) counts each failed write, not the
    requests it held, and a successful write leaves it alone."""
    from ingest.metrics import COMMIT_FAILURES

    store = FakeStore(fail_calls={0})
    before = COMMIT_FAILURES._value.get()

    async def test(store: FakeStore, committer: GroupCommitter) -> None:
        store.hold()
        waits = [asyncio.create_task(committer.submit(record(i))) for i in range(2)]
        await store.started()
        store.release()
        results = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(r, StorageUnavailable) for r in results)
        await committer.submit(record(2))  # succeeds
        assert COMMIT_FAILURES._value.get() == before + 1

    run(test, store, interval_seconds=0)
