"""`trackpipe requests <destination>`: the destination inspector on the command line — the last
requests sent to a destination (or built, in a dry run), newest first, with their answers. The
worker masked the destination's secrets before it stored them."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from trackpipe.config import load_from
from trackpipe.keys import DESTINATION_REQUESTS_KEPT, KeyLayout
from trackpipe.logs import masked_url

# Of each body, this much is shown on its line (--json has what was kept: 4 KB).
BODY_CHARS = 300

if TYPE_CHECKING:
    from destinations.base import Exchange


def add_parser(commands: Any, positive: Any) -> None:
    requests = commands.add_parser(
        "requests", help="the last requests sent to a destination and their answers (destination inspector)"
    )
    requests.add_argument("destination", help="destination id")
    requests.add_argument("--config", help="config file (default: TRACKPIPE_CONFIG)")
    requests.add_argument(
        "--limit", type=positive, default=DESTINATION_REQUESTS_KEPT, help="at most this many (default: %(default)s)"
    )
    requests.add_argument("--json", action="store_true", help="JSON lines on stdout")
    requests.add_argument("--shard", help="only the requests sent by this shard's workers (default: every shard's)")


def _one_line(text: str, limit: int = BODY_CHARS) -> str:
    # Printable text only: a body must not drive the terminal.
    text = "".join(c if c.isprintable() else "\ufffd" for c in " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(exchange: Exchange) -> str:
    """One request as a few lines for a terminal (pure)."""
    at = datetime.fromtimestamp(exchange.at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if exchange.dry_run:
        answer = "dry run: not sent"
    elif exchange.status is not None:
        answer = f"HTTP {exchange.status}"
    else:
        answer = "no answer"
    events = "event" if exchange.events == 1 else "events"
    lines = [f"{at}  {exchange.method} {_one_line(exchange.url)}  ({exchange.events} {events})  -> {answer}"]
    lines.append(f"  request:  {_one_line(exchange.request_body)}")
    if exchange.response_body:
        lines.append(f"  response: {_one_line(exchange.response_body)}")
    if exchange.error:
        lines.append(f"  error:    {_one_line(exchange.error)}")
    return "\n".join(lines)


def run_requests(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    # Imported here: building the parser for every command must not load the destinations.
    from destinations.base import Exchange
    from trackpipe.queries import newest_requests
    from trackpipe.sharded import connect

    decoder = msgspec.json.Decoder(Exchange)
    config = load_from(args.config)
    if args.destination not in {d.id for d in config.destinations}:
        known = ", ".join(sorted(d.id for d in config.destinations)) or "none"
        print(f"trackpipe requests: no destination {args.destination!r} (configured: {known})", file=sys.stderr)
        return 2
    key = KeyLayout(config.key_prefix).destination_requests(args.destination)
    every = connect(config, socket_connect_timeout=3, socket_timeout=10)
    try:
        sharded = every.only(getattr(args, "shard", None))
    except KeyError as exc:
        every.close()
        print(f"trackpipe requests: --shard: {exc.args[0]}", file=sys.stderr)
        return 2
    per_shard = []
    try:
        for client in sharded:
            try:
                per_shard.append(client.redis.lrange(key, 0, args.limit - 1))
            except RedisError as exc:
                where = masked_url(client.shard.redis_url)
                named = f"shard {client.name!r} ({where})" if config.shards else where
                print(f"trackpipe requests: cannot read {named}: {exc}", file=sys.stderr)
                return 1
    finally:
        every.close()
    # Each shard's workers keep their own last requests: merged newest first.
    stored = per_shard[0] if len(per_shard) == 1 else newest_requests(per_shard, args.limit)
    shown = 0
    for raw in stored:
        try:
            exchange = decoder.decode(raw)
        except msgspec.DecodeError:  # a damaged entry is skipped, not a crash
            continue
        print(raw.decode() if args.json else render(exchange))
        shown += 1
    if not shown and not args.json:
        print(f"no requests recorded for {args.destination!r} yet", file=sys.stderr)
    return 0
