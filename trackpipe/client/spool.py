"""The queues of unsent events: in memory, or in a spool directory that survives the producing
process (write-ahead: every event is written to a segment file before track() returns).

Spool layout: segment files `<n>.seg` (20 digits), each a run of records `length (4 bytes, big
endian) | crc32 (4 bytes) | event JSON`, rolled at a size; `cursor` ("<segment> <offset>"): where
the first unacknowledged record starts, replaced atomically (rename) when a batch is acknowledged;
`lock`: held with flock by the one process that uses the directory. A record cut short or damaged
(the process killed mid-write) ends its segment's readable part: it is counted and skipped, and new
records always go to a new segment, so nothing is appended after it.

Neither queue is thread-safe: the clients call them under their own lock."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import struct
import zlib
from pathlib import Path

from trackpipe.client.batching import fits

log = logging.getLogger("trackpipe.client")

HEADER = struct.Struct(">II")
SUFFIX = ".seg"
READ_CHUNK = 1 << 20


class SpoolLocked(RuntimeError):
    """Another process (or another client in this one) already uses the spool directory."""


class MemoryQueue:
    """Unsent events in memory, oldest first, at most `max_events`."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.events: collections.deque[bytes] = collections.deque()
        self.pending_bytes = 0
        self.torn = 0

    @property
    def pending_events(self) -> int:
        return len(self.events)

    def has_room(self, size: int) -> bool:
        return len(self.events) < self.max_events

    def put(self, data: bytes) -> None:
        self.events.append(data)
        self.pending_bytes += len(data)

    def take(self, max_events: int, max_bytes: int) -> list[bytes]:
        """The next batch, out of the queue (the sender holds it until it is acknowledged)."""
        batch: list[bytes] = []
        total = 0
        while self.events and len(batch) < max_events:
            size = len(self.events[0])
            if batch and not fits(total + size, len(batch) + 1, max_bytes):
                break
            batch.append(self.events.popleft())
            total += size
        self.pending_bytes -= total
        return batch

    def ack(self) -> None:
        pass

    def drop_oldest(self) -> bytes | None:
        if not self.events:
            return None
        data = self.events.popleft()
        self.pending_bytes -= len(data)
        return data

    def close(self) -> None:
        pass


class SpoolQueue:
    """Unsent events in a spool directory (see the module's docstring)."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, segment_bytes: int, fsync: bool) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"spool_dir {str(self.dir)!r} cannot be created: {error.strerror}") from None
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._lock_fd)
            raise SpoolLocked(
                f"spool_dir {str(self.dir)!r} is in use by another client (process {holder}); "
                "each producing process needs a spool directory of its own"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        self.pending_events = 0
        self.pending_bytes = 0  # record bytes (headers included) not yet taken
        self.torn = 0
        self.ends: dict[int, int] = {}  # closed segments: where their readable records end
        self.segments: list[int] = []  # segments holding unacknowledged records, oldest first
        self._recover()
        self._write_fd: int | None = None
        self._write_seg = max([*self.segments, self.read_seg]) + 1
        self._write_size = 0
        self.inflight_end: tuple[int, int] | None = None

    # -- start-up ----------------------------------------------------------------------------

    def _segment_path(self, seg: int) -> Path:
        return self.dir / f"{seg:020d}{SUFFIX}"

    def _read_cursor(self) -> tuple[int, int] | None:
        path = self.dir / "cursor"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            seg, off = (int(part) for part in text.split())
        except ValueError:
            raise ValueError(f"spool cursor {str(path)!r} is unreadable: {text[:40]!r}") from None
        return seg, off

    def _recover(self) -> None:
        found = sorted(int(p.stem) for p in self.dir.glob(f"*{SUFFIX}") if p.stem.isdigit())
        cursor = self._read_cursor()
        if cursor is None:
            cursor = (found[0] if found else 0, 0)
        self.read_seg, self.read_off = cursor
        for seg in found:
            if seg < self.read_seg:
                self._segment_path(seg).unlink(missing_ok=True)  # acknowledged before a stop
                continue
            start = self.read_off if seg == self.read_seg else 0
            count, size, end, torn = self._scan(seg, start)
            self.ends[seg] = end
            self.segments.append(seg)
            self.pending_events += count
            self.pending_bytes += size
            if torn:
                self.torn += 1
                log.warning("spool segment %s: a damaged or cut-short record at byte %d skipped", seg, end)
        if self.segments and self.read_seg not in self.ends:
            self.read_seg, self.read_off = self.segments[0], 0

    def _scan(self, seg: int, start: int) -> tuple[int, int, int, bool]:
        """(records, bytes, where the readable part ends, whether bytes after it were skipped)."""
        with open(self._segment_path(seg), "rb") as f:
            data = f.read()
        off, count = start, 0
        while off < len(data):
            record = _parse(data, off)
            if record is None:
                return count, off - start, off, True
            off += HEADER.size + len(record)
            count += 1
        return count, off - start, off, False

    # -- writing -----------------------------------------------------------------------------

    def has_room(self, size: int) -> bool:
        return self.pending_bytes + HEADER.size + size <= self.max_bytes

    def put(self, data: bytes) -> None:
        if self._write_fd is None or self._write_size >= self.segment_bytes:
            self._roll()
        assert self._write_fd is not None
        record = HEADER.pack(len(data), zlib.crc32(data)) + data
        view = memoryview(record)
        while view:  # one write for a regular file; the loop covers a short one
            written = os.write(self._write_fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._write_fd)
        self._write_size += len(record)
        self.pending_events += 1
        self.pending_bytes += len(record)

    def _roll(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
            self.ends[self._write_seg] = self._write_size
            self._write_seg += 1
        self._write_fd = os.open(self._segment_path(self._write_seg), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._write_size = 0
        self.segments.append(self._write_seg)
        if self.fsync:
            _fsync_dir(self.dir)

    # -- reading -----------------------------------------------------------------------------

    def _segment_end(self, seg: int) -> int:
        if seg in self.ends:
            return self.ends[seg]
        return self._write_size if seg == self._write_seg else 0

    def _next_records(self, max_events: int, max_bytes: int) -> list[bytes]:
        """Up to `max_events` records from the read position (within a batch of `max_bytes`),
        advancing it."""
        out: list[bytes] = []
        total = 0
        while len(out) < max_events and self.pending_events > len(out):
            end = self._segment_end(self.read_seg)
            if self.read_off >= end:
                later = [s for s in self.segments if s > self.read_seg]
                if not later:
                    # Records counted but unreadable (a segment damaged while in use): forget them
                    # rather than wait for them for ever.
                    self.pending_events = len(out)
                    self.pending_bytes = total + HEADER.size * len(out)
                    break
                self.read_seg, self.read_off = later[0], 0
                continue
            with open(self._segment_path(self.read_seg), "rb", buffering=0) as f:
                chunk = os.pread(f.fileno(), min(READ_CHUNK + max_bytes, end - self.read_off), self.read_off)
            pos = 0
            while len(out) < max_events and self.pending_events > len(out) and pos < len(chunk):
                record = _parse(chunk, pos)
                if record is None:
                    if len(chunk) < end - self.read_off:
                        break  # cut by the chunk's size: read on from here
                    log.warning("spool segment %s: a damaged record at byte %d skipped", self.read_seg, self.read_off)
                    self.ends[self.read_seg] = self.read_off  # the rest of this segment is unreadable
                    self.torn += 1
                    break
                if out and not fits(total + len(record), len(out) + 1, max_bytes):
                    self._commit_read(out, total)
                    return out
                out.append(record)
                total += len(record)
                pos += HEADER.size + len(record)
                self.read_off += HEADER.size + len(record)
        self._commit_read(out, total)
        return out

    def _commit_read(self, out: list[bytes], total: int) -> None:
        self.pending_events -= len(out)
        self.pending_bytes -= total + HEADER.size * len(out)

    def take(self, max_events: int, max_bytes: int) -> list[bytes]:
        batch = self._next_records(max_events, max_bytes)
        self.inflight_end = (self.read_seg, self.read_off)
        return batch

    def drop_oldest(self) -> bytes | None:
        """Skips the oldest unsent event; the cursor on disk passes it with the next acknowledged batch."""
        records = self._next_records(1, 1 << 30)
        return records[0] if records else None

    def ack(self) -> None:
        """The batch last taken is done with: the cursor moves past it, on disk, atomically."""
        if self.inflight_end is None:
            return
        seg, off = self.inflight_end
        self.inflight_end = None
        tmp = self.dir / "cursor.tmp"
        with open(tmp, "w") as f:
            f.write(f"{seg} {off}\n")
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / "cursor")
        if self.fsync:
            _fsync_dir(self.dir)
        while self.segments and self.segments[0] < seg:
            done = self.segments.pop(0)
            self.ends.pop(done, None)
            self._segment_path(done).unlink(missing_ok=True)

    def close(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)  # releases the flock


def _parse(data: bytes, off: int) -> bytes | None:
    """The record at `off`, or None when it is cut short or its checksum does not match."""
    if off + HEADER.size > len(data):
        return None
    length, crc = HEADER.unpack_from(data, off)
    start = off + HEADER.size
    if start + length > len(data):
        return None
    record = data[start : start + length]
    if zlib.crc32(record) != crc:
        return None
    return record


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
