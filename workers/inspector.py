"""What the live event inspector keeps of each processed event, and which events it keeps."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from typing import Any

import msgspec

from workers.status import EventStatus


class InspectorRecord(msgspec.Struct):
    received_at: int
    status: str
    event_id: str | None
    event_name: str | None
    warnings: list[str]
    errors: list[str]
    destinations: dict[str, str]  # destination id -> "queued" or "filtered"
    test_code: str | None
    payload: Any  # the normalized event, IP masked (or the raw text when it could not be decoded)


def mask_ip(value: Any) -> Any:
    """The last octet of an IPv4 address zeroed; an IPv6 address cut to its first 48 bits.
    Anything else that is not null is masked whole: it may encode an address another way."""
    if value is None:
        return None
    if not isinstance(value, str):
        return "masked"
    return _mask_text(value)


@functools.lru_cache(maxsize=4_096)
def _mask_text(value: str) -> str:
    # Cached: parsing an address costs ~7 µs, and a job's events come from few addresses.
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return "masked"
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def _with_masked_device(holder: dict[str, Any]) -> dict[str, Any]:
    device = holder.get("device")
    if not isinstance(device, dict) or "ip" not in device:
        return holder
    return {**holder, "device": {**device, "ip": mask_ip(device["ip"])}}


def masked_payload(event: dict[str, Any]) -> dict[str, Any]:
    """The event with `context.device.ip` (and a stray root `device.ip`) masked; the input is not changed."""
    masked = _with_masked_device(event)
    context = masked.get("context")
    if isinstance(context, dict):
        masked_context = _with_masked_device(context)
        if masked_context is not context:
            masked = {**masked, "context": masked_context}
    return masked


def test_code_of(event: dict[str, Any]) -> str | None:
    for holder in (event, event.get("context")):
        if isinstance(holder, dict) and holder.get("test_code") not in (None, ""):
            return str(holder["test_code"])
    return None


def always_kept(status: str) -> bool:
    """Rejected events are always kept; the others are sampled at high volume (test events apart)."""
    return status == EventStatus.INVALID_REJECTED


_encoder = msgspec.json.Encoder()


def encode_record(record: InspectorRecord) -> bytes:
    return _encoder.encode(record)


# --- sampling -------------------------------------------------------------------------------------
#
# The vendor's "intelligent sampling": at low volume every event is kept; at high volume each event
# name gets its own share per minute, so a busy `page_view` stream cannot push `purchase` out of the
# inspector. Events with a `test_code` bypass it into a list of their own, capped per source and
# minute; rejected events are always kept (they are what someone debugging looks for).
#
# How many were kept of each (source, minute, name) lives in one small hash per source and minute
# (P:inspsample:<source>:<minute>). The ingest job counts its own candidates locally and sends at most
# `cap` of each name; one EVAL per source, queued inside the fan-out's MULTI, reads how many are still
# allowed this minute, pushes those, and counts them. It runs atomically with the job's done mark: a
# job killed before EXEC left nothing counted, and a re-run after EXEC stops before the fan-out, so
# no minute is counted twice. No extra round trip: the EVAL travels with the MULTI.

# Counters outlive their minute by this much: a job that runs late (a backlog) still finds them.
SAMPLE_COUNTER_TTL_SECONDS = 3_600
# Field of the per-minute hash that counts test events (name fields start with "n:").
TEST_FIELD = "t"
ORDINARY_LIST = 0
TEST_LIST = 1
_PUSH_CHUNK = 500  # LPUSH arguments per call (Lua's unpack has a stack limit)

SAMPLE_SCRIPT = """
-- KEYS[1] ordinary list, KEYS[2] test list
-- ARGV: list size, counter ttl, G (groups), G x (counter key, field, cap), then triples
-- (group, list, record), oldest first; group 0 is always kept.
local size = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local groups = tonumber(ARGV[3])
local room, taken = {}, {}
for g = 1, groups do
  local at = 3 + (g - 1) * 3
  local used = tonumber(redis.call('HGET', ARGV[at + 1], ARGV[at + 2]) or '0')
  room[g] = math.max(0, tonumber(ARGV[at + 3]) - used)
  taken[g] = 0
end
local lists = {{}, {}}
for i = 4 + groups * 3, #ARGV, 3 do
  local g = tonumber(ARGV[i])
  if g == 0 or taken[g] < room[g] then
    if g > 0 then taken[g] = taken[g] + 1 end
    local into = lists[tonumber(ARGV[i + 1]) + 1]
    into[#into + 1] = ARGV[i + 2]
  end
end
for g = 1, groups do
  if taken[g] > 0 then
    local at = 3 + (g - 1) * 3
    redis.call('HINCRBY', ARGV[at + 1], ARGV[at + 2], taken[g])
    redis.call('EXPIRE', ARGV[at + 1], ttl)
  end
end
local pushed = {}
for l = 1, 2 do
  local records = lists[l]
  for from = 1, #records, CHUNK do
    redis.call('LPUSH', KEYS[l], unpack(records, from, math.min(from + CHUNK - 1, #records)))
  end
  if #records > 0 then redis.call('LTRIM', KEYS[l], 0, size - 1) end
  pushed[l] = #records
end
return pushed
""".replace("CHUNK", str(_PUSH_CHUNK))


class Candidate(msgspec.Struct):
    """An event the inspector may keep: the field counting its kind in its minute's hash ("n:<name>",
    or TEST_FIELD), None when it is always kept; and whether it goes to the test list. `record` is
    the record, or a function making it: most candidates of a busy job are over their name's cap
    and never sent, so their records (a masked copy of the event) are never made."""

    record: InspectorRecord | Callable[[], InspectorRecord]
    minute: int
    field: str | None
    to_tests: bool


def candidate(record: InspectorRecord) -> Candidate:
    return candidate_of(record.received_at, record.status, record.event_name, record.test_code, record)


def candidate_of(
    received_at: int,
    status: str,
    event_name: str | None,
    test_code: str | None,
    record: InspectorRecord | Callable[[], InspectorRecord],
) -> Candidate:
    to_tests = test_code is not None
    field = None if always_kept(status) else TEST_FIELD if to_tests else sample_field(event_name)
    return Candidate(record, received_at // 60_000, field, to_tests)


class SamplePlan(msgspec.Struct):
    """One source's share of a job: the EVAL of SAMPLE_SCRIPT to queue in the fan-out MULTI."""

    source_id: str
    command: tuple[Any, ...]
    candidates: int  # records sent (at most `cap` per group, plus those always kept)


def sample_field(name: str | None) -> str:
    return f"n:{name or ''}"


def plan_samples(
    candidates: dict[str, list[Candidate]],
    *,
    list_key: Any,
    test_list_key: Any,
    counter_key: Any,
    list_size: int,
    per_name_per_minute: int,
    test_per_minute: int,
) -> list[SamplePlan]:
    """Per source, the EVAL that keeps a fair share of its candidates (given oldest first).
    `list_key(source)`, `test_list_key(source)`, `counter_key(source, minute)` name the keys."""
    plans = []
    for source_id, items in candidates.items():
        groups: dict[tuple[int, str], int] = {}  # (minute, field) -> group number (1-based)
        sent: dict[int, int] = {}  # group -> candidates sent
        args: list[Any] = []
        for item in items:
            group = 0
            if item.field is not None:
                cap = test_per_minute if item.field == TEST_FIELD else per_name_per_minute
                key = (item.minute, item.field)
                group = groups.setdefault(key, len(groups) + 1)
                # No more than the cap can be kept: the rest are not even encoded.
                if sent.get(group, 0) >= cap:
                    continue
                sent[group] = sent.get(group, 0) + 1
            record = item.record if isinstance(item.record, InspectorRecord) else item.record()
            args += (group, TEST_LIST if item.to_tests else ORDINARY_LIST, encode_record(record))
        if not args:
            continue
        header: list[Any] = [list_size, SAMPLE_COUNTER_TTL_SECONDS, len(groups)]
        for (minute, field), _ in sorted(groups.items(), key=lambda kv: kv[1]):
            cap = test_per_minute if field == TEST_FIELD else per_name_per_minute
            header += (counter_key(source_id, minute), field, cap)
        command = ("EVAL", SAMPLE_SCRIPT, 2, list_key(source_id), test_list_key(source_id), *header, *args)
        plans.append(SamplePlan(source_id, command, len(args) // 3))
    return plans


# --- data quality ---------------------------------------------------------------------------------
#
# Per source, the ingest job adds (in its fan-out MULTI) its events per hour and status
# (P:quality:status:<source>:<hour>, kept QUALITY_TTL_SECONDS) and its warnings and errors per hour
# and kind (P:quality:msg:<source>:<hour>, two days): the console's data-quality view.

QUALITY_TTL_SECONDS = 35 * 86_400  # the vendor shows a month; a few days more for the edges
MESSAGE_TTL_SECONDS = 2 * 86_400  # the view shows the last 24 hours
# Distinct kinds kept per source and hour; any further kind is counted under OTHER_KIND, so a
# producer sending ever new property names cannot grow the hash without bound.
MESSAGE_KINDS_PER_HOUR = 200
OTHER_KIND = "(other kinds)"
_KIND_CHARS = 160

MESSAGE_SCRIPT = """
-- KEYS[1] the hour's hash; ARGV: max fields, ttl, then pairs (field, count)
local limit = tonumber(ARGV[1])
local fields = redis.call('HLEN', KEYS[1])
for i = 3, #ARGV, 2 do
  local field = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], field) == 0 then
    if fields >= limit then
      field = string.match(field, '^[^|]*|') .. 'OTHER_KIND'
    else
      fields = fields + 1
    end
  end
  redis.call('HINCRBY', KEYS[1], field, ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return fields
""".replace("OTHER_KIND", OTHER_KIND)

_INDEX = re.compile(r"\[\d+\]")
# A value shown in a message (a repr: quoted, a number, a container, a constant) before "is not".
_SHOWN_VALUE = re.compile(r"^(.*?\S) (?:['\"{\[(-]|\d|True\b|False\b|None\b).*? is not ")


@functools.lru_cache(maxsize=4_096)
def message_kind(message: str) -> str:
    """A message with what varies from event to event left out: array positions and the value shown,
    so `items[3].price 'abc' is not a number` and `items[0].price 7 ...` count as one kind."""
    kind = _INDEX.sub("[]", message)
    kind = _SHOWN_VALUE.sub(lambda m: f"{m.group(1)} … is not ", kind, count=1)
    return kind if len(kind) <= _KIND_CHARS else kind[: _KIND_CHARS - 1] + "…"


def message_field(level: str, message: str) -> str:
    """`warning|<kind>` or `error|<kind>`: the field of the hour's hash."""
    return f"{level}|{message_kind(message)}"


def message_command(key: Any, counts: dict[str, int]) -> tuple[Any, ...]:
    pairs = [x for field, n in sorted(counts.items()) for x in (field, n)]
    return ("EVAL", MESSAGE_SCRIPT, 1, key, MESSAGE_KINDS_PER_HOUR, MESSAGE_TTL_SECONDS, *pairs)
