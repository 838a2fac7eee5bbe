"""The client's settings and counters, and the checks of its constructor arguments (pure)."""

from __future__ import annotations

import math
import os
import urllib.parse
from typing import Literal

import msgspec

from trackpipe.client.events import MAX_BATCH_BYTES

Overflow = Literal["block", "drop_oldest", "drop_newest"]
KeyIn = Literal["header", "query"]
OVERFLOW_CHOICES: tuple[str, ...] = ("block", "drop_oldest", "drop_newest")


class ClientConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of `Client` and `AsyncClient` (the key is kept apart, never in this struct)."""

    url: str  # base URL of the edge (or the hosted API), without /events/batch
    site_id: str
    key_in: KeyIn = "header"  # Authorization: Bearer (default) or the `token` query parameter
    flush_at: int = 100  # send once this many events wait
    flush_interval: float = 1.0  # ... or once the oldest waiting event has waited this long (seconds)
    max_batch_events: int = 500
    max_batch_bytes: int = MAX_BATCH_BYTES
    gzip: bool = True
    gzip_level: int = 1
    timeout: float = 10.0  # per request
    max_queue_events: int = 100_000  # the memory queue (without a spool)
    spool_dir: str | None = None
    max_spool_bytes: int = 1 << 30  # unsent events on disk (with a spool)
    spool_segment_bytes: int = 8 << 20
    spool_fsync: bool = False
    overflow: Overflow = "block"
    block_timeout: float | None = 10.0  # with overflow="block": then the new event is dropped
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    shutdown_timeout: float = 10.0  # close() and the exit flush wait at most this long


class ClientStats(msgspec.Struct, kw_only=True):
    """Counters since the client started (events unless named otherwise)."""

    queued: int = 0  # taken by track() (and, with a spool, found unsent on disk at start)
    sent: int = 0  # in a request that got a final answer
    accepted: int = 0  # the server said it stored them
    rejected: int = 0  # refused one by one in a batch answer (reported to on_rejected)
    failed: int = 0  # in a request refused as a whole (400, 401, 413, ...): reported, not retried
    dropped: int = 0  # dropped by the overflow policy or left unsent at shutdown (reported to on_drop)
    retries: int = 0  # requests sent again (503, 429, 5xx, timeouts, connection errors)
    requests: int = 0  # HTTP requests made, retries included
    spool_torn: int = 0  # records found torn in the spool at start (a write cut short) and skipped


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _positive_number(name: str, value: object, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def base_url(url: object) -> str:
    """The base URL, without a trailing slash or a trailing /events/batch or /events (both are
    taken, since the vendor's pages show the full endpoint)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be the edge's base URL such as http://127.0.0.1:8080, got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an http:// or https:// URL with a host, such as http://127.0.0.1:8080")
    if parts.query or parts.fragment:
        raise ValueError("url must not carry a query or fragment: the client adds tc_s (and token) itself")
    if parts.username or parts.password:
        raise ValueError("url must not carry credentials: the key goes in key=")
    path = parts.path.rstrip("/")
    for suffix in ("/events/batch", "/events"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ValueError("key must be the source key, a non-empty string")
    return key


def make_config(url: object, site_id: object, **options: object) -> ClientConfig:
    """A ClientConfig from constructor arguments; a ValueError naming the argument for a bad one."""
    if not isinstance(site_id, str | int) or isinstance(site_id, bool) or not str(site_id).strip():
        raise ValueError(f"site_id must be the site id (tc_s), a non-empty string, got {site_id!r}")
    known = set(ClientConfig.__struct_fields__) - {"url", "site_id"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}")
    o = options
    for name in ("flush_at", "max_batch_events", "max_queue_events", "max_spool_bytes", "spool_segment_bytes"):
        if name in o:
            _positive_int(name, o[name])
    if "max_batch_events" in o and o["max_batch_events"] > 10_000:  # type: ignore[operator]
        raise ValueError(f"max_batch_events must be at most 10000, got {o['max_batch_events']!r}")
    if "max_batch_bytes" in o:
        _positive_int("max_batch_bytes", o["max_batch_bytes"], 1024)
        if o["max_batch_bytes"] > MAX_BATCH_BYTES:  # type: ignore[operator]
            raise ValueError(f"max_batch_bytes must be at most {MAX_BATCH_BYTES} (the API's limit)")
    if "gzip_level" in o:
        _positive_int("gzip_level", o["gzip_level"], 0)
        if o["gzip_level"] > 9:  # type: ignore[operator]
            raise ValueError(f"gzip_level must be 0 to 9, got {o['gzip_level']!r}")
    for name in ("flush_interval", "timeout", "backoff_base", "backoff_cap"):
        if name in o:
            _positive_number(name, o[name])
    if "shutdown_timeout" in o:
        _positive_number("shutdown_timeout", o["shutdown_timeout"], allow_zero=True)
    if o.get("block_timeout") is not None:
        _positive_number("block_timeout", o["block_timeout"], allow_zero=True)
    if "overflow" in o and o["overflow"] not in OVERFLOW_CHOICES:
        raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_CHOICES)}, got {o['overflow']!r}")
    if "key_in" in o and o["key_in"] not in ("header", "query"):
        raise ValueError(f"key_in must be 'header' or 'query', got {o['key_in']!r}")
    for name in ("gzip", "spool_fsync"):
        if name in o and not isinstance(o[name], bool):
            raise ValueError(f"{name} must be True or False, got {o[name]!r}")
    spool = o.get("spool_dir")
    if spool is not None:
        try:
            spool = os.fspath(spool)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(f"spool_dir must be a directory path, got {spool!r}") from None
        if not spool:
            raise ValueError("spool_dir must be a directory path, got an empty one")
        o = {**o, "spool_dir": str(spool)}
    return ClientConfig(url=base_url(url), site_id=str(site_id), **o)  # type: ignore[arg-type]
