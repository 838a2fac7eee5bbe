"""The TOML config file, decoded into msgspec Structs and checked as a whole at start.

Every problem is reported as ``ConfigError`` naming the key (``dedup.window_seconds``,
``sources[1].keys[0]``) and what is wrong with it, so a bad file fails before anything runs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

import msgspec

# The one import of a plug-in by the core: the registry of destination types, whose settings the
# config decodes (see tests/test_layers.py).
from trackpipe.connection import check_redis_url
from trackpipe.destination_settings import DESTINATION_SETTINGS
from trackpipe.keys import PrefixMismatch, bind_rq_prefix
from trackpipe.specification import SourceSpec
from trackpipe.types import DestinationBase, Ident, PositiveInt, Strict

CONFIG_ENV = "TRACKPIPE_CONFIG"
REDIS_URL_ENV = "TRACKPIPE_REDIS_URL"

HASHED_KEY = re.compile(r"^sha256:[0-9a-f]{64}$")
# A plain key shorter than this is too easy to guess; `trackpipe keys new` makes 43 characters.
MIN_PLAIN_KEY_LENGTH = 8


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key and the problem."""


class EdgeConfig(Strict):
    status_mode: Literal["compat", "strict"] = "compat"
    # Ingest jobs waiting on the `ingest` queue above which the edge answers 503.
    max_backlog: PositiveInt = 20_000
    # Group commit: one ingest job holds at most this many events ...
    commit_max_events: PositiveInt = 2_000
    # Writes (ingest jobs) holding fewer than commit_min_events start at most once per interval.
    commit_interval_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 20.0
    commit_min_events: PositiveInt = 32
    retry_after_seconds: PositiveInt = 1
    # How many events from missing/unknown keys are kept for the inspector, per site.
    unauthorized_ring_size: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 500
    # A request whose body has not fully arrived this long after its headers gets 408 (slow clients).
    body_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    # A connection whose request headers are not complete this long after it opened (or after data
    # began arriving between requests) is closed: idle and slow-header clients hold no slot.
    header_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 5.0
    # Open connections (and requests) per edge process above which new ones get 503 at once.
    max_connections: Annotated[int, msgspec.Meta(ge=16, le=1_000_000)] = 4_096
    # Peers (CIDRs) whose X-Forwarded-For / Forwarded headers are believed for the client's address;
    # from anyone else the peer address itself is the client's.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    # A write is answered 200 only once the primary and this many replicas have it in their AOF
    # (WAITAOF, once per group-committed write); 0 answers as soon as the primary has it in memory.
    min_replicas: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0
    # How long a write waits for those replicas before it is answered 503 (never 0: that would
    # make WAITAOF wait forever).
    replica_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 1_000


class DedupConfig(Strict):
    window_seconds: PositiveInt = 86_400
    # Remembered ids are spread over this many small hashes per window; keep ids-per-window divided
    # by buckets under ~400 so each stays a compact listpack (see docs/ARCHITECTURE.md).
    buckets: Annotated[int, msgspec.Meta(ge=1, le=1_048_576)] = 16_384


class WorkerConfig(Strict):
    # An ingest job running longer than this is stopped (and retried).
    ingest_timeout_seconds: PositiveInt = 60
    delivery_timeout_seconds: PositiveInt = 120
    # A job still running after its timeout plus this grace counts as hung and is re-run.
    abandoned_grace_seconds: PositiveInt = 10
    # A worker counts as dead once it has not renewed its lease for this long; its unfinished jobs
    # then go back on their queues (see workers.claims).
    lease_seconds: Annotated[int, msgspec.Meta(ge=2, le=300)] = 10
    # How often a worker looks for abandoned jobs and due retries.
    maintenance_interval_seconds: PositiveInt = 10
    # Times an ingest job is retried after an error or a dead worker.
    # At least 1: RQ re-runs a job whose worker died only if it has a retry left.
    ingest_retries: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10


class InspectorConfig(Strict):
    # Recent processed events kept per source for the live inspector.
    events_per_source: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 1_000
    # Sampling, as the vendor does it: of each event name at most this many events per source and
    # minute (of receipt) are kept, so a busy name cannot push a rare one out. Rejected events
    # always are.
    per_name_per_minute: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 20
    # Events with a test_code bypass the sampling into a list of their own (also capped at
    # events_per_source), at most this many per source and minute.
    test_events_per_minute: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 20


class SourceConfig(Strict):
    id: Ident
    site_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    keys: Annotated[list[str], msgspec.Meta(min_length=1)]
    on_invalid: Literal["accept", "reject"] = "accept"
    # Origins whose pages may post from a browser (CORS); ["*"] for any. None by default.
    cors_origins: list[str] = msgspec.field(default_factory=list)
    # The client address: kept, anonymized (last IPv4 octet, last 80 bits of IPv6 zeroed) or dropped,
    # before anything is stored.
    ip_mode: Literal["keep", "anonymize", "drop"] = "keep"
    # Drop repeats of an event id (per source) within the window; None: `dedup.window_seconds`.
    dedup: bool = True
    dedup_window_seconds: PositiveInt | None = None
    # The source's tracking plan (trackpipe.specification); None: standard-event checks only.
    spec: SourceSpec | None = None
    # The shard (a `[[shards]]` name) holding this source's events; None: a stable hash of the id
    # picks one (trackpipe.shards). Changing it moves the source: see the README, "Moving a source
    # to another shard".
    shard: Ident | None = None


# The config accepts the settings of any destination type (trackpipe.destination_settings).
Destination = Union[tuple(DESTINATION_SETTINGS.values())]  # noqa: UP007


class DlqConfig(Strict):
    max_events: PositiveInt = 100_000


class ShardConfig(Strict):
    """One primary (plain or through Sentinel) holding its own queues, dedup, DLQs and counters."""

    name: Ident
    redis_url: str


class Config(Strict):
    # The one server, when there are no [[shards]]; with shards, the first shard's URL (set by parse).
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "trackpipe"
    admin_token: str | None = None
    edge: EdgeConfig = msgspec.field(default_factory=EdgeConfig)
    dedup: DedupConfig = msgspec.field(default_factory=DedupConfig)
    dlq: DlqConfig = msgspec.field(default_factory=DlqConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    inspector: InspectorConfig = msgspec.field(default_factory=InspectorConfig)
    sources: list[SourceConfig] = msgspec.field(default_factory=list)
    destinations: list[Destination] = msgspec.field(default_factory=list)
    # Several primaries; empty: one shard, `main`, at redis_url (trackpipe.shards).
    shards: list[ShardConfig] = msgspec.field(default_factory=list)


def _path_of(msgspec_path: str) -> str:
    """`$.sources[0].keys` -> `sources[0].keys` (msgspec's paths, in the file's own words)."""
    path = msgspec_path.removeprefix("$").removeprefix(".")
    return path or "(top level)"


# Keys an earlier version read, and what to write instead.
RENAMED_KEYS = {
    "inspector.sample_per_job": (
        "no longer read: the inspector now samples per event name and minute; "
        "set inspector.per_name_per_minute (default 20) instead"
    ),
}


def _explain(err: msgspec.ValidationError) -> str:
    text = str(err)
    message, sep, where = text.rpartition(" - at `")
    if not sep:  # msgspec names no path for problems at the top level
        message, where = text, "$"
    key = _path_of(where.rstrip("`"))
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        key = f"{key}.{field}" if key != "(top level)" else field
        if key in RENAMED_KEYS:
            return f"{key}: {RENAMED_KEYS[key]}"
        return f"{key}: unknown key (misspelt?)"
    if message.startswith("Object missing required field"):
        field = message.split("`")[1]
        key = f"{key}.{field}" if key != "(top level)" else field
        return f"{key}: required key is missing"
    if message.startswith("Invalid value") and key.endswith(".type"):
        known = ", ".join(DESTINATION_SETTINGS)
        return f"{key}: unknown destination type {message.removeprefix('Invalid value ')} (known: {known})"
    if message.startswith("Object missing required field `type`"):
        return f"{key}.type: required key is missing"
    return f"{key}: {message}"


def _check_redis_url(url: str, key: str) -> list[str]:
    # Plain and Sentinel URLs alike: the one parser is trackpipe.connection's.
    return check_redis_url(url, key)


def _check_key(key: str, where: str) -> list[str]:
    if key.startswith("sha256:"):
        if not HASHED_KEY.match(key):
            return [f"{where}: a hashed key is 'sha256:' and 64 lowercase hex digits"]
        return []
    if len(key) < MIN_PLAIN_KEY_LENGTH:
        return [f"{where}: a plain key needs at least {MIN_PLAIN_KEY_LENGTH} characters"]
    if any(c.isspace() for c in key):
        return [f"{where}: a key cannot contain white space"]
    return []


def _check_origin(origin: str, where: str) -> list[str]:
    """`*`, or what a browser sends as Origin: scheme://host[:port], nothing after it."""
    if origin == "*":
        return []
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or origin != f"{parts.scheme}://{parts.netloc}":
        return [f"{where}: {origin!r} is not an origin such as 'https://www.example.com' (or '*')"]
    return []


def _check_source(index: int, source: SourceConfig) -> list[str]:
    where = f"sources[{index}]"
    problems: list[str] = []
    for j, origin in enumerate(source.cors_origins):
        problems += _check_origin(origin, f"{where}.cors_origins[{j}]")
    if source.spec is not None:
        problems += source.spec.problems(f"{where}.spec")
    return problems


def _key_digest(key: str) -> str:
    if key.startswith("sha256:"):
        return key.removeprefix("sha256:")
    return hashlib.sha256(key.encode()).hexdigest()


def _check_destination(index: int, dest: DestinationBase, source_ids: set[str]) -> list[str]:
    where = f"destinations[{index}]"
    problems = [
        f"{where}.sources[{i}]: no source has id {source!r}"
        for i, source in enumerate(dest.sources or [])
        if source not in source_ids
    ]
    if dest.filters is not None:
        problems += dest.filters.problems(f"{where}.filters")
    return problems + dest.problems(where)


def _check_shards(config: Config) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    urls: dict[str, str] = {}
    for i, shard in enumerate(config.shards):
        where = f"shards[{i}]"
        if shard.name in names:
            problems.append(f"{where}.name: {shard.name!r} is used by another shard")
        names.add(shard.name)
        url_problems = _check_redis_url(shard.redis_url, f"{where}.redis_url")
        problems += url_problems
        # Two shards on one database would share every key: each would run the other's jobs.
        same = urls.setdefault(shard.redis_url, shard.name)
        if not url_problems and same != shard.name:
            problems.append(f"{where}.redis_url: the same server and database as shard {same!r}")
    known = names or {"main"}
    for i, source in enumerate(config.sources):
        if source.shard is not None and source.shard not in known:
            problems.append(
                f"sources[{i}].shard: no shard named {source.shard!r} (shards: {', '.join(sorted(known))})"
            )
    return problems


def check(config: Config) -> list[str]:
    """Checks across keys that the types alone cannot express."""
    problems = _check_redis_url(config.redis_url, "redis_url") if not config.shards else []
    problems += _check_shards(config)
    if config.admin_token is not None and len(config.admin_token) < MIN_PLAIN_KEY_LENGTH:
        problems.append(f"admin_token: needs at least {MIN_PLAIN_KEY_LENGTH} characters")
    for i, cidr in enumerate(config.edge.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(f"edge.trusted_proxies[{i}]: {cidr!r} is not an IP address or CIDR block")
    seen_sources: set[str] = set()
    keys_by_site: dict[tuple[str, str], str] = {}
    for i, source in enumerate(config.sources):
        if source.id in seen_sources:
            problems.append(f"sources[{i}].id: {source.id!r} is used by another source")
        seen_sources.add(source.id)
        problems += _check_source(i, source)
        for j, key in enumerate(source.keys):
            where = f"sources[{i}].keys[{j}]"
            key_problems = _check_key(key, where)
            problems += key_problems
            if key_problems:
                continue
            # Compare what the keys stand for: a plain key and its sha256 form are the same key.
            other = keys_by_site.setdefault((source.site_id, _key_digest(key)), source.id)
            if other != source.id:
                problems.append(f"{where}: the same key belongs to source {other!r} on site {source.site_id!r}")
    seen_destinations: set[str] = set()
    for i, dest in enumerate(config.destinations):
        if dest.id in seen_destinations:
            problems.append(f"destinations[{i}].id: {dest.id!r} is used by another destination")
        seen_destinations.add(dest.id)
        problems += _check_destination(i, dest, seen_sources)
    return problems


def parse(text: str | bytes, *, env: dict[str, str] | None = None, origin: str = "config") -> Config:
    """Decode and check a config document; raise ConfigError naming every problem found."""
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    if isinstance(raw.get("shards"), list) and raw["shards"]:
        # With shards every server is named in [[shards]]; a second place for one would be ambiguous.
        if "redis_url" in raw:
            raise ConfigError(f"{origin}: redis_url: not used with [[shards]]; give each shard its redis_url")
        if env.get(REDIS_URL_ENV):
            raise ConfigError(
                f"{origin}: {REDIS_URL_ENV} is set, but this config has [[shards]]; unset it or drop the shards"
            )
    elif env.get(REDIS_URL_ENV):
        raw["redis_url"] = env[REDIS_URL_ENV]
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_explain(exc)}") from None
    if config.shards:
        # Code that needs one server (the refused-event rings, alerts, sign-in) uses the first shard.
        config = msgspec.structs.replace(config, redis_url=config.shards[0].redis_url)
    problems = check(config)
    if problems:
        raise ConfigError(f"{origin}: " + f"\n{origin}: ".join(problems))
    return config


def config_path(explicit: str | None, env: dict[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    chosen = explicit or env.get(CONFIG_ENV)
    return Path(chosen) if chosen else None


def load(path: str | os.PathLike[str]) -> Config:
    """Read and check a config file, and make RQ keep its keys under its `key_prefix`: every process
    gets its config here, so none can forget (a prefix RQ was already loaded with otherwise is an
    error naming the key)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    config = parse(data, origin=str(path))
    try:
        bind_rq_prefix(config.key_prefix)
    except PrefixMismatch as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def load_from(explicit: str | None) -> Config:
    """The config named by --config, else by TRACKPIPE_CONFIG."""
    path = config_path(explicit)
    if path is None:
        raise ConfigError(f"no config given: pass --config PATH or set {CONFIG_ENV}")
    return load(path)
