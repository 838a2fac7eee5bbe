"""Where Redis is and how every process connects to it: a plain `redis://` URL, or a Sentinel URL.

`redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]` (also `valkey+sentinel://`)
names the sentinels and the service they watch; the clients built here ask the sentinels for the
current primary whenever they (re)connect, so a promotion is followed without a restart. The
password is the primary's (and its replicas'); the sentinels are asked without one.

Every process builds its clients here (`sync_client`, `async_client`), so that a Sentinel URL works
for the edge, the workers, the console and every command alike. The edge's own wire connection
(`ingest.wire`) resolves the primary itself with `SENTINEL get-master-addr-by-name`, from
`parse_sentinel_url`'s result.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

SENTINEL_SCHEMES = ("redis+sentinel", "valkey+sentinel")
DEFAULT_SENTINEL_PORT = 26379


class ConnectionConfigError(ValueError):
    """A redis_url that cannot be used; the message names the key and what is wrong."""


class SentinelTarget(msgspec.Struct, frozen=True):
    """A parsed Sentinel URL: the sentinels to ask, the service (master name) and the database."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in SENTINEL_SCHEMES


def _host_port(part: str, key: str) -> tuple[str, int]:
    if not part:
        raise ConnectionConfigError(f"{key}: an empty sentinel address (two commas, or a trailing comma)")
    if part.startswith("["):  # [::1]:26379
        host, _, rest = part[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConnectionConfigError(f"{key}: sentinel address {part!r} is not host:port")
    else:
        host, sep, port_text = part.rpartition(":")
        if not sep:
            host, port_text = part, ""
    if not host:
        raise ConnectionConfigError(f"{key}: sentinel address {part!r} has no host")
    if port_text == "":
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConnectionConfigError(f"{key}: sentinel address {part!r} has a bad port (1 to 65535)")
    return host, int(port_text)


def parse_sentinel_url(url: str, key: str = "redis_url") -> SentinelTarget:
    """The sentinels, service and db of a Sentinel URL; ConnectionConfigError naming what is wrong.

    Parsed by hand: urlsplit rejects a netloc holding several host:port pairs."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ConnectionConfigError(f"{key}: not a redis+sentinel:// or valkey+sentinel:// URL")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, _, path = rest.partition("/")
    username: str | None = None
    password: str | None = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
        if not has_password:  # `secret@host`: a bare password, as redis-py reads it too
            username, password = None, unquote(user) or None
    if not netloc:
        raise ConnectionConfigError(f"{key}: no sentinel hosts (expected host:port[,host:port...])")
    sentinels = tuple(_host_port(part.strip(), key) for part in netloc.split(","))
    segments = [s for s in path.split("/")]
    while segments and segments[-1] == "":
        segments.pop()
    if not segments or not segments[0]:
        raise ConnectionConfigError(f"{key}: no service name (expected .../service_name[/db])")
    if len(segments) > 2:
        raise ConnectionConfigError(f"{key}: too many path parts (expected .../service_name[/db])")
    service = unquote(segments[0])
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ConnectionConfigError(f"{key}: bad db {segments[1]!r} (a number from 0)")
        db = int(segments[1])
    return SentinelTarget(sentinels=sentinels, service=service, db=db, username=username, password=password)


def check_redis_url(url: str, key: str = "redis_url") -> list[str]:
    """The problems of a redis_url (empty when usable), each naming `key`."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in SENTINEL_SCHEMES:
        try:
            parse_sentinel_url(url, key)
        except ConnectionConfigError as exc:
            return [str(exc)]
        return []
    if scheme not in ("redis", "rediss", "unix", "valkey", "valkeys"):
        return [f"{key}: {url!r} is not a redis:// , rediss:// or unix:// URL (or redis+sentinel://)"]
    return []


def _sentinel_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The timeouts for the sentinels themselves: a dead sentinel must not hold a reconnect long."""
    return {
        "socket_connect_timeout": options.get("socket_connect_timeout") or 2.0,
        "socket_timeout": options.get("socket_connect_timeout") or 2.0,
    }


def sync_client(url: str, **options: Any) -> Redis:
    """A redis-py client for `url`: for a Sentinel URL one that follows the current primary."""
    if not is_sentinel_url(url):
        return Redis.from_url(url, **options)
    from redis.sentinel import Sentinel

    target = parse_sentinel_url(url)
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(options))
    return sentinel.master_for(
        target.service, db=target.db, username=target.username, password=target.password, **options
    )


def async_client(url: str, **options: Any) -> AsyncRedis:
    """The asyncio counterpart of `sync_client`."""
    if not is_sentinel_url(url):
        return AsyncRedis.from_url(url, **options)
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    target = parse_sentinel_url(url)
    sentinel = AsyncSentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(options))
    return sentinel.master_for(
        target.service, db=target.db, username=target.username, password=target.password, **options
    )
