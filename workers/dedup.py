"""Deduplication by (source_id, context.event_id), exact within the window, one round trip per job.

Memory: each remembered id is an 8-byte digest field in one of `dedup.buckets` small hashes per
window slot (`P:dd:<slot>:<bucket>`), which Valkey keeps as compact listpacks. Slots are
`window_seconds` long, by receive time (a source with a window of its own keeps its ids under
`P:ddw:<window>:<slot>:<bucket>`: a slot number means a different time span for each length); an
id is looked up in its slot and both neighbours and inserted in its own, so a copy received less
than one window earlier or later is found whatever order the jobs run in (a crashed job re-runs
after newer ones). A slot's hashes expire two windows after creation. One job's ids may belong to
sources of several windows: they are still claimed in one script call.

Crash safety: the verdicts of a job are stored in the job's own RQ hash by the same Lua script that
marks the ids, so a re-run of a killed job reads its verdicts back instead of seeing its own marks
(no event is ever the duplicate of itself), and a job whose fan-out was committed is not run again.
Both fields vanish with the job hash when RQ deletes the finished job.
"""

from __future__ import annotations

import struct
from hashlib import blake2b
from typing import Any

import msgspec
from redis import Redis
from redis.exceptions import NoScriptError

from trackpipe.jobs import DONE_FIELD, verdict_field
from trackpipe.keys import KeyLayout

DIGEST_FIELD_BYTES = 8
# Verdicts outlive any re-run of the job (RQ deletes the whole hash when the job finishes).
VERDICT_TTL_SECONDS = 8 * 86_400


class DedupKey(msgspec.Struct, frozen=True):
    field: bytes
    bucket: int
    # The source's own window (SourceConfig.dedup_window_seconds); None: the config's default.
    window_seconds: int | None = None


# One id in the claim's blob: field, slot, bucket, namespace number (see CLAIM_SCRIPT).
_ENTRY = struct.Struct(f">{DIGEST_FIELD_BYTES}sIIH")
# An id's 12-byte digest: its field, then the number its bucket is taken from (one call for both).
_DIGEST = struct.Struct(f">{DIGEST_FIELD_BYTES}sI")


def dedup_key(source_id: str, event_id: str, buckets: int, window_seconds: int | None = None) -> DedupKey:
    field, tail = _DIGEST.unpack(blake2b(f"{source_id}\0{event_id}".encode(), digest_size=12).digest())
    return DedupKey(field, tail % buckets, window_seconds)


def slot_of(received_at_ms: int, window_seconds: int) -> int:
    return received_at_ms // (window_seconds * 1000)


# KEYS[1]: the job hash. ARGV: verdict ttl, done field, verdict field, one blob, then per namespace
# (one per window length in the job) three values: its bucket key prefix ("P:dd:", or
# "P:ddw:<window>:"), its slot marker prefix ("P:ddslot:", or "P:ddwslot:<window>:") and its bucket
# ttl (two windows + 60 s). The blob holds, per id, 18 bytes: the 8-byte field, the 4-byte slot, the
# 4-byte bucket and the 2-byte namespace number (big-endian, from 0). One blob instead of several
# arguments per id keeps the call cheap to build and to parse. Bucket keys are built here:
# trackpipe, like RQ, does not run on Cluster.
# Returns "done" when the job's fan-out was already committed, else "v" + one "1" (first seen)
# or "0" (duplicate) per id.
CLAIM_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 'done' end
local verdict = redis.call('HGET', KEYS[1], ARGV[3])
if verdict then return verdict end
local blob = ARGV[4]
local spaces = {}
for n = 5, #ARGV, 3 do
  spaces[#spaces + 1] = {bucket = ARGV[n], marker = ARGV[n + 1], ttl = ARGV[n + 2], present = {}, filled = {}}
end
local out = {}
local touched = {}
local call, byte, sub = redis.call, string.byte, string.sub
-- Whether a slot holds any id at all (its marker key): most lookups in a neighbouring slot
-- (above all the next one, which only exists when jobs run out of order) can then be skipped.
-- Looked up once per slot and call (inlined below: this loop runs for every id).
local function slot_present(space, slot)
  local known = call('EXISTS', space.marker .. slot) == 1
  space.present[slot] = known
  return known
end
for i = 0, #blob / 18 - 1 do
  local p = i * 18 + 1
  local field = sub(blob, p, p + 7)
  local s1, s2, s3, s4, b1, b2, b3, b4, hi, lo = byte(blob, p + 8, p + 17)
  local slot = ((s1 * 256 + s2) * 256 + s3) * 256 + s4
  local bucket = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  local space = spaces[hi * 256 + lo + 1]
  local prefix, present = space.bucket, space.present
  local current = prefix .. slot .. ':' .. bucket
  local before, after = present[slot - 1], present[slot + 1]
  if before == nil then before = slot_present(space, slot - 1) end
  if after == nil then after = slot_present(space, slot + 1) end
  if (before and call('HEXISTS', prefix .. (slot - 1) .. ':' .. bucket, field) == 1)
     or (after and call('HEXISTS', prefix .. (slot + 1) .. ':' .. bucket, field) == 1) then
    out[i + 1] = '0'
  elseif call('HSETNX', current, field, '') == 1 then
    out[i + 1] = '1'
    touched[current] = space.ttl
    space.filled[slot] = true
    present[slot] = true
  else
    out[i + 1] = '0'
  end
end
for key, ttl in pairs(touched) do redis.call('EXPIRE', key, ttl, 'NX') end
-- Refreshed on every insertion, so a slot's marker outlives every bucket key of that slot.
for _, space in ipairs(spaces) do
  for slot in pairs(space.filled) do redis.call('SET', space.marker .. slot, '1', 'EX', space.ttl) end
end
verdict = 'v' .. table.concat(out)
redis.call('HSET', KEYS[1], ARGV[3], verdict)
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
return verdict
"""


class Deduplicator:
    def __init__(self, connection: Redis, layout: KeyLayout, window_seconds: int, buckets: int) -> None:
        self._layout = layout
        self._window = window_seconds
        self._buckets = buckets
        self._script = connection.register_script(CLAIM_SCRIPT)

    def key_for(self, source_id: str, event_id: str, window_seconds: int | None = None) -> DedupKey:
        """The id's key; `window_seconds` is the source's own window (None or the default: the
        default's namespace, so a source whose window equals the default shares its memory)."""
        own = None if window_seconds is None or window_seconds == self._window else window_seconds
        return dedup_key(source_id, event_id, self._buckets, own)

    def _namespace(self, window_seconds: int | None) -> list[str | int]:
        """Bucket prefix, slot marker prefix and bucket ttl of one window length."""
        if window_seconds is None:
            return [self._layout.dedup_bucket_prefix, self._layout.dedup_slot_marker_prefix, 2 * self._window + 60]
        return [
            f"{self._layout.dedup_window_bucket_prefix}{window_seconds}:",
            f"{self._layout.dedup_window_slot_marker_prefix}{window_seconds}:",
            2 * window_seconds + 60,
        ]

    def claim(self, connection: Redis, job_key: str, items: list[tuple[DedupKey, int]]) -> list[bool] | None:
        """First-seen flags for (key, received_at) items, or None if the job's fan-out is done.
        Items of any windows mix in one call (one round trip)."""
        return self._claim(connection, job_key, *self.keys_blob(items), len(items))

    def open_claim(self, connection: Redis, job_key: str) -> PendingClaim:
        """A claim sent in parts as the job decodes its events (PendingClaim.send), answered at once."""
        return PendingClaim(self, connection, job_key)

    def _claim_args(self, blob: bytes, spaces: dict[int | None, int], part: int = 0) -> list[bytes | str | int]:
        args: list[bytes | str | int] = [VERDICT_TTL_SECONDS, DONE_FIELD, verdict_field(part), blob]
        for window in spaces:
            args += self._namespace(window)
        return args

    def _verdicts(self, job_key: str, reply: object, count: int) -> list[bool] | None:
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        if text == "done":
            return None
        flags = text[1:]
        if len(flags) != count:
            raise RuntimeError(f"{job_key}: stored dedup verdicts cover {len(flags)} events, the job has {count}")
        return [flag == "1" for flag in flags]

    def keys_blob(self, items: list[tuple[DedupKey, int]]) -> tuple[bytes, dict[int | None, int]]:
        """The claim's blob and namespaces (window -> number) for (key, received_at) items."""
        spaces: dict[int | None, int] = {}
        parts = []
        for key, received_at in items:
            space = spaces.setdefault(key.window_seconds, len(spaces))
            window = key.window_seconds or self._window
            parts.append(_ENTRY.pack(key.field, slot_of(received_at, window), key.bucket, space))
        return b"".join(parts), spaces

    def ids_blob(self, items: list[tuple[str, str, int | None, int]]) -> tuple[bytes, dict[int | None, int]]:
        """keys_blob for (source id, event id, own window, received_at) items, with the same result."""
        spaces: dict[int | None, int] = {}
        parts = []
        append = parts.append
        pack = _ENTRY.pack
        split = _DIGEST.unpack
        buckets = self._buckets
        default = self._window
        for source_id, event_id, own, received_at in items:
            if own == default:
                own = None
            space = spaces.get(own)
            if space is None:
                space = spaces[own] = len(spaces)
            field, tail = split(blake2b(f"{source_id}\0{event_id}".encode(), digest_size=12).digest())
            append(pack(field, received_at // ((own or default) * 1000), tail % buckets, space))
        return b"".join(parts), spaces

    def _claim(
        self, connection: Redis, job_key: str, blob: bytes, spaces: dict[int | None, int], count: int, part: int = 0
    ) -> list[bool] | None:
        reply = self._script(keys=[job_key], args=self._claim_args(blob, spaces, part), client=connection)
        return self._verdicts(job_key, reply, count)


class PendingClaim:
    """A job's claim, written part by part to one of the pool's connections (`send`), its replies
    read together by `result()`, or dropped by `abandon()` if the caller fails meanwhile (the
    connection is held until then). The ingest job sends a part as soon as it has decoded that many
    events, so the server claims them while the worker decodes the next ones and prepares the
    fan-out. Each part is the same script call as `Deduplicator.claim`, its verdicts stored in a
    field of their own: a re-run decodes the same events into the same parts and reads each back.
    One connection keeps the parts in order (an id repeated in a later part is its duplicate). A
    connection error surfaces from `result()` like any Redis outage."""

    def __init__(self, dedup: Deduplicator, connection: Redis, job_key: str) -> None:
        self._dedup, self._client, self._job_key = dedup, connection, job_key
        self._parts: list[tuple[bytes, dict[int | None, int], int]] = []
        self._pool = connection.connection_pool
        self._wire: Any = None

    def send(self, items: list[tuple[str, str, int | None, int]]) -> None:
        """Claim the next part: (source id, event id, own window or None, received_at) items."""
        if self._wire is None:
            if self._parts:
                raise RuntimeError("the claim was already answered or abandoned")
            self._wire = self._pool.get_connection()
        blob, spaces = self._dedup.ids_blob(items)
        part = len(self._parts)
        self._parts.append((blob, spaces, len(items)))
        try:
            self._wire.send_command(
                "EVALSHA", self._dedup._script.sha, 1, self._job_key, *self._dedup._claim_args(blob, spaces, part)
            )
        except BaseException:
            self.abandon()
            raise

    def result(self) -> list[bool] | None:
        """First-seen flags of every part's items in order, or None if the job's fan-out is done."""
        wire, self._wire = self._wire, None
        if wire is None:
            if self._parts:
                raise RuntimeError("the claim's reply was already taken")
            return []
        replies: list[Any] = []
        try:
            for _ in self._parts:
                try:
                    replies.append(wire.read_response())
                except NoScriptError as exc:  # a server that restarted (or another one) lost the script
                    replies.append(exc)
        except BaseException:
            wire.disconnect()  # a reply may still be on its way: the connection is not reusable
            self._pool.release(wire)
            raise
        self._pool.release(wire)
        dedup = self._dedup
        for part, (blob, spaces, _) in enumerate(self._parts):
            if isinstance(replies[part], NoScriptError):  # the call loads the script and runs the part again
                replies[part] = dedup._script(
                    keys=[self._job_key], args=dedup._claim_args(blob, spaces, part), client=self._client
                )
        whole = self._whole_job_verdicts(replies)
        if whole is not None:
            return whole
        flags: list[bool] = []
        for (_, _, count), reply in zip(self._parts, replies, strict=True):
            verdicts = dedup._verdicts(self._job_key, reply, count)
            if verdicts is None:
                return None
            flags += verdicts
        return flags

    def _whole_job_verdicts(self, replies: list[Any]) -> list[bool] | None:
        """The verdicts of a job claimed in one call before claims went in parts (a job re-run by a
        newer worker after an older one was killed past its claim): the first part's field then
        holds every event's verdict. The later parts' calls found their ids marked by that call;
        their verdicts are not the job's."""
        if len(self._parts) < 2 or not isinstance(first := replies[0], bytes | str):
            return None
        flags = first.decode() if isinstance(first, bytes) else first
        total = sum(count for _, _, count in self._parts)
        if flags == "done" or len(flags) - 1 != total:
            return None
        return self._dedup._verdicts(self._job_key, first, total)

    def abandon(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.disconnect()
            self._pool.release(wire)
