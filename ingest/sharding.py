"""The edge's shards: one writer per shard, and which shard each source writes to.

A request authenticates to one source, and a source's events all live on one shard
(trackpipe.shards), so a request's events go to exactly one shard's writer: its own wire
connection, store and group committer, and its own backlog figure (a full shard refuses only its
own sources). Without `[[shards]]` there is one writer, `main`, as there always was.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis

from ingest.commit import GroupCommitter
from ingest.store import AsyncIngestStore, Commands
from trackpipe.config import SourceConfig
from trackpipe.shards import pick


@dataclass
class ShardWriter:
    """What the edge holds for one shard."""

    name: str
    redis: AsyncRedis  # redis-py: backlog poll and readiness
    commands: Commands  # the write path (ingest.wire, or redis-py in in-process tests)
    store: AsyncIngestStore
    committer: GroupCommitter

    def close(self) -> None:
        close = getattr(self.commands, "close", None)
        if close is not None:
            close()


def route(shard_names: list[str], sources: list[SourceConfig]) -> dict[str, str]:
    """source id -> the shard (among shard_names, the ones this edge runs) it writes to.

    With the config's own shard list this is trackpipe.shards.assignment. After a reload that
    changed the list (a restart is needed for that), a source whose `shard` is not running here
    is hashed among the running ones rather than refused."""
    routes: dict[str, str] = {}
    for source in sources:
        if source.shard is not None and source.shard in shard_names:
            routes[source.id] = source.shard
        else:
            routes[source.id] = pick(shard_names, source.id)
    return routes
