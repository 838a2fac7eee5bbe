"""`file`: normalized events as JSON lines, one file per hour: `<path>/<YYYY-MM-DDTHH>.jsonl` (UTC).

With a `mapping` (destinations.mapping), each event is reshaped first; without one, its stored JSON
is written byte for byte. Each batch is appended with a single write of whole lines and fsynced before it counts as
delivered. If an earlier crash left a partial last line, a newline is written first, so the torn
line stays on its own and never joins the next event.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from destinations.base import DELIVERED, Exchange, Outcome, OutgoingEvent, Retry, short_reason
from destinations.mapping import apply
from trackpipe.destination_settings import FileDestination

_encoder = msgspec.json.Encoder()


def hour_file(directory: Path, at: float) -> Path:
    return directory / (datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H") + ".jsonl")


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


class FileSender:
    def __init__(self, settings: FileDestination, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.directory = Path(settings.path)
        self._clock = clock

    def _lines(self, events: list[OutgoingEvent]) -> bytes:
        mapping = self.settings.mapping
        if mapping is None:  # the stored JSON as it is: one join, no copy of each line
            bodies = [event.body for event in events]
        else:
            bodies = [_encoder.encode(apply(mapping, event.event)) for event in events]
        return b"\n".join(bodies) + b"\n"

    def send(self, events: list[OutgoingEvent]) -> list[Outcome]:
        if not events:
            return []
        target = hour_file(self.directory, self._clock())
        data = self._lines(events)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: to see a torn end
            try:
                # Several workers may append to one file: the check for a torn end and the write
                # must not interleave with another writer's, or a half-written line looks torn.
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _ends_torn(fd):
                    data = b"\n" + data
                written = os.write(fd, data)
                while written < len(data):  # a short write (disk nearly full): finish it
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            return [Retry(short_reason(f"cannot write {target}: {exc.strerror or exc}"))] * len(events)
        return [DELIVERED] * len(events)

    def take_exchanges(self) -> list[Exchange]:
        return []  # no requests: the files are what was sent

    def close(self) -> None:
        pass


Settings = FileDestination
open_sender = FileSender
