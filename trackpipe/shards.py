"""Shards: several primaries, each holding the queues, dedup, inspector, counters and DLQs of the
sources assigned to it. RQ does not run on Redis Cluster, so a shard is a whole primary (with its
replicas, through Sentinel or not) and the same key layout is used on each.

Pure functions over the config; the I/O (clients per shard) is left to each process.

- No `[[shards]]`: one shard, `main`, at `redis_url`.
- A source goes to its `shard` when set, else to the shard chosen by rendezvous hashing of its id
  (highest sha256 of shard name and source id): stable across restarts and processes, and adding
  a shard moves only the sources the new one wins (about 1/n of them). Changing a source's shard is
  a move: see the README, "Moving a source to another shard".
- The first shard is the home shard: what belongs to no source (events refused for an unknown key,
  console sign-ins and alert state) lives there.
"""

from __future__ import annotations

import hashlib

import msgspec

from trackpipe.config import Config

DEFAULT_SHARD = "main"


class Shard(msgspec.Struct, frozen=True):
    name: str
    redis_url: str


def shards(config: Config) -> list[Shard]:
    """Every shard, in config order (the first is the home shard)."""
    if not config.shards:
        return [Shard(DEFAULT_SHARD, config.redis_url)]
    return [Shard(s.name, s.redis_url) for s in config.shards]


def home(config: Config) -> Shard:
    return shards(config)[0]


def _weight(shard_name: str, source_id: str) -> bytes:
    return hashlib.sha256(f"{shard_name}\0{source_id}".encode()).digest()


def pick(shard_names: list[str], source_id: str) -> str:
    """The rendezvous-hash choice among shard_names for source_id (no explicit assignment)."""
    return max(shard_names, key=lambda name: _weight(name, source_id))


def shard_name_of(config: Config, source_id: str) -> str:
    """The shard holding source_id's events (an explicit `shard`, else the hash's choice)."""
    names = [s.name for s in shards(config)]
    for source in config.sources:
        if source.id == source_id and source.shard is not None:
            return source.shard
    return pick(names, source_id)


def assignment(config: Config) -> dict[str, str]:
    """source id -> shard name, for every configured source."""
    return {source.id: shard_name_of(config, source.id) for source in config.sources}


def by_name(config: Config, name: str) -> Shard:
    """The shard called name; KeyError naming the known ones otherwise."""
    for shard in shards(config):
        if shard.name == name:
            return shard
    known = ", ".join(s.name for s in shards(config))
    raise KeyError(f"no shard named {name!r} (shards: {known})")
