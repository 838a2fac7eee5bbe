"""destinations.file: JSON lines, one file per UTC hour, whole-line appends, errors as retries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from destinations import open_sender
from destinations.base import DELIVERED, OutgoingEvent, Retry
from destinations.file import FileDestination, FileSender

# 2024-03-05 14:59:59.5 UTC: half a second before an hour boundary.
BEFORE_BOUNDARY = datetime(2024, 3, 5, 14, 59, 59, 500_000, tzinfo=UTC).timestamp()
AFTER_BOUNDARY = datetime(2024, 3, 5, 15, 0, 0, 100_000, tzinfo=UTC).timestamp()


def event(i: int, name: str = "page_view") -> bytes:
    return json.dumps({"event_name": name, "context": {"event_id": f"e{i}"}, "n": i}, separators=(",", ":")).encode()


def outgoing(bodies: list[bytes]) -> list[OutgoingEvent]:
    """The events as the delivery job hands them to a sender (decoded once, body kept)."""
    found = []
    for body in bodies:
        event = json.loads(body)
        found.append(OutgoingEvent(event.get("context", {}).get("event_id", ""), event["event_name"], event, body))
    return found


def sender_at(path: Path, clock) -> FileSender:
    sender = open_sender(FileDestination(id="lake", path=str(path)))
    assert isinstance(sender, FileSender)
    sender._clock = clock  # the same clock the constructor takes; open_sender uses time.time
    return sender


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 5:30 ahead of UTC, so a file named in local time would have another hour."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_one_line_per_event_in_the_utc_hour_file(tmp_path: Path, far_from_utc: None) -> None:
    lake = tmp_path / "lake"
    bodies = [event(0), event(1, "purchase"), event(2)]
    sender = FileSender(FileDestination(id="lake", path=str(lake)), clock=lambda: BEFORE_BOUNDARY)
    assert sender.send(outgoing(bodies)) == [DELIVERED] * 3
    assert sorted(p.name for p in lake.iterdir()) == ["2024-03-05T14.jsonl"]
    data = (lake / "2024-03-05T14.jsonl").read_bytes()
    assert data == b"".join(b + b"\n" for b in bodies)
    assert [json.loads(line) for line in data.splitlines()] == [json.loads(b) for b in bodies]


def test_later_sends_append(tmp_path: Path) -> None:
    sender = FileSender(FileDestination(id="lake", path=str(tmp_path)), clock=lambda: BEFORE_BOUNDARY)
    assert sender.send(outgoing([event(0)])) == [DELIVERED]
    assert sender.send(outgoing([event(1), event(2)])) == [DELIVERED, DELIVERED]
    lines = (tmp_path / "2024-03-05T14.jsonl").read_bytes().splitlines()
    assert lines == [event(0), event(1), event(2)]


def test_rotates_at_the_hour_boundary(tmp_path: Path) -> None:
    now = [BEFORE_BOUNDARY]
    sender = sender_at(tmp_path, lambda: now[0])
    assert sender.send(outgoing([event(0), event(1)])) == [DELIVERED, DELIVERED]
    now[0] = AFTER_BOUNDARY
    assert sender.send(outgoing([event(2)])) == [DELIVERED]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2024-03-05T14.jsonl", "2024-03-05T15.jsonl"]
    assert (tmp_path / "2024-03-05T14.jsonl").read_bytes() == event(0) + b"\n" + event(1) + b"\n"
    assert (tmp_path / "2024-03-05T15.jsonl").read_bytes() == event(2) + b"\n"


def test_torn_last_line_is_closed_before_new_lines(tmp_path: Path) -> None:
    target = tmp_path / "2024-03-05T14.jsonl"
    complete = event(0) + b"\n"
    torn = b'{"event_name":"purchase","context":{"ev'  # a crash mid-write: no newline
    target.write_bytes(complete + torn)
    sender = sender_at(tmp_path, lambda: BEFORE_BOUNDARY)
    assert sender.send(outgoing([event(1), event(2)])) == [DELIVERED, DELIVERED]
    data = target.read_bytes()
    assert data == complete + torn + b"\n" + event(1) + b"\n" + event(2) + b"\n"
    lines = data.splitlines()
    assert lines[1] == torn  # the torn line stays alone ...
    assert [json.loads(line) for line in lines[2:]] == [
        json.loads(event(1)),
        json.loads(event(2)),
    ]  # ... new ones parse


def test_complete_last_line_gets_no_blank_line(tmp_path: Path) -> None:
    target = tmp_path / "2024-03-05T14.jsonl"
    target.write_bytes(event(0) + b"\n")
    sender = sender_at(tmp_path, lambda: BEFORE_BOUNDARY)
    assert sender.send(outgoing([event(1)])) == [DELIVERED]
    assert target.read_bytes() == event(0) + b"\n" + event(1) + b"\n"


def test_empty_existing_file_gets_no_leading_newline(tmp_path: Path) -> None:
    target = tmp_path / "2024-03-05T14.jsonl"
    target.write_bytes(b"")
    sender = sender_at(tmp_path, lambda: BEFORE_BOUNDARY)
    assert sender.send(outgoing([event(1)])) == [DELIVERED]
    assert target.read_bytes() == event(1) + b"\n"


def test_creates_missing_directories(tmp_path: Path) -> None:
    lake = tmp_path / "a" / "b" / "lake"
    sender = sender_at(lake, lambda: AFTER_BOUNDARY)
    assert sender.send(outgoing([event(0)])) == [DELIVERED]
    assert (lake / "2024-03-05T15.jsonl").read_bytes() == event(0) + b"\n"


def test_path_that_is_a_regular_file_gives_retries(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    sender = sender_at(blocker, lambda: BEFORE_BOUNDARY)
    outcomes = sender.send(outgoing([event(0), event(1)]))
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Retry)
        assert "cannot write" in outcome.reason
    assert blocker.read_text() == "x"


def test_path_under_a_regular_file_gives_retries(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    sender = sender_at(blocker / "lake", lambda: BEFORE_BOUNDARY)
    outcomes = sender.send(outgoing([event(0)]))
    assert len(outcomes) == 1 and isinstance(outcomes[0], Retry)


def test_hour_file_that_is_a_directory_gives_retries(tmp_path: Path) -> None:
    (tmp_path / "2024-03-05T14.jsonl").mkdir()
    sender = sender_at(tmp_path, lambda: BEFORE_BOUNDARY)
    outcomes = sender.send(outgoing([event(0)]))
    assert len(outcomes) == 1 and isinstance(outcomes[0], Retry)


def test_empty_send_writes_nothing(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    assert sender_at(lake, lambda: BEFORE_BOUNDARY).send(outgoing([])) == []
    assert not lake.exists()


def test_concurrent_senders_never_interleave_within_a_line(tmp_path: Path) -> None:
    """Several workers on deliver:lake append to the same hour file at once: every line must be one
    whole event, with no line split, joined, or left empty."""
    senders = [sender_at(tmp_path, lambda: BEFORE_BOUNDARY) for _ in range(4)]
    big = "x" * 20_000  # lines of several pages: each append takes long enough to overlap others

    outcomes: list[list] = []

    def work(k: int) -> None:
        for i in range(60):
            body = json.dumps({"event_name": "e", "w": k, "i": i, "pad": big}).encode()
            outcomes.append(senders[k].send(outgoing([body, body])))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [[DELIVERED, DELIVERED]] * (4 * 60)
    lines = (tmp_path / "2024-03-05T14.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    empty = sum(1 for line in lines[:-1] if not line)
    assert empty == 0, f"{empty} empty lines among {len(lines) - 1}"
    records = [json.loads(line) for line in lines[:-1]]
    assert len(records) == 4 * 60 * 2
    assert {(r["w"], r["i"]) for r in records} == {(k, i) for k in range(4) for i in range(60)}
