"""One blocking Redis client per shard, for the processes that read the union (`trackpipe status`,
`dlq`, `requests`, the console). Which shard holds what is trackpipe.shards' (pure); this module only
holds the clients. Without `[[shards]]` there is one shard, `main`, and one client, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from redis import Redis

from trackpipe.config import Config
from trackpipe.connection import sync_client
from trackpipe.shards import Shard, shard_name_of, shards


class ShardClient:
    """A shard and the client that reaches it."""

    __slots__ = ("redis", "shard")

    def __init__(self, shard: Shard, redis: Redis) -> None:
        self.shard = shard
        self.redis = redis

    @property
    def name(self) -> str:
        return self.shard.name


class Sharded:
    """The clients of every shard (config order: the first is the home shard)."""

    def __init__(self, config: Config, clients: list[ShardClient]) -> None:
        if not clients:
            raise ValueError("no shards")
        self.config = config
        self.clients = clients

    def __iter__(self) -> Iterator[ShardClient]:
        return iter(self.clients)

    def __len__(self) -> int:
        return len(self.clients)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clients]

    @property
    def home(self) -> Redis:
        """Where what belongs to no source lives: refused-key rings, console sessions, alerts."""
        return self.clients[0].redis

    def named(self, name: str) -> ShardClient:
        """The shard called name; KeyError naming the known ones otherwise."""
        for client in self.clients:
            if client.name == name:
                return client
        raise KeyError(f"no shard named {name!r} (shards: {', '.join(self.names)})")

    def of_source(self, source_id: str) -> ShardClient:
        """The shard holding source_id's events now (trackpipe.shards.shard_name_of)."""
        return self.named(shard_name_of(self.config, source_id))

    def only(self, name: str | None) -> Sharded:
        """These clients restricted to the shard `name` (all of them for None); KeyError as `named`."""
        return self if name is None else Sharded(self.config, [self.named(name)])

    def close(self) -> None:
        closed: set[int] = set()
        for client in self.clients:
            if id(client.redis) not in closed:
                closed.add(id(client.redis))
                client.redis.close()


def connect(config: Config, home: Redis | None = None, **options: Any) -> Sharded:
    """A client per shard (lazy: none connects until used); `home`, when given, serves the first
    shard (a caller's own client, e.g. in tests)."""
    clients = []
    for i, shard in enumerate(shards(config)):
        redis = home if i == 0 and home is not None else sync_client(shard.redis_url, **options)
        clients.append(ShardClient(shard, redis))
    return Sharded(config, clients)
