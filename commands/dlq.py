"""`trackpipe dlq list|show|export|replay|purge`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

import msgspec

from trackpipe.config import load_from
from trackpipe.keys import KeyLayout
from trackpipe.logs import masked_url

_json = msgspec.json.Encoder()


def add_parser(commands: Any, positive: Any) -> None:
    dlq = commands.add_parser("dlq", help="inspect, export, replay or purge a destination's dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    for name, text in (
        ("list", "list dead letters (newest first)"),
        ("show", "show whole records, event included"),
        ("export", "write records as JSON lines"),
        ("replay", "send records back to a delivery queue"),
        ("purge", "delete records"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", help="config file (default: TRACKPIPE_CONFIG)")
        action.add_argument("--destination", required=True, help="destination id")
        action.add_argument("--event", help="only this event name")
        action.add_argument("--reason", help="only reasons containing this text")
        action.add_argument("--since", help="only records that last failed at or after (ISO-8601 or epoch)")
        action.add_argument("--until", help="only records that last failed at or before")
        action.add_argument("--event-id", help="only this event id")
        action.add_argument("--limit", type=positive, help="at most this many records")
        action.add_argument("--shard", help="only this shard's DLQ (default: every shard's, merged newest first)")
        if name in ("list", "show"):
            action.add_argument("--json", action="store_true", help="JSON lines on stdout")
        if name == "export":
            action.add_argument("--output", default="-", help="file to write (default: stdout)")
        if name == "replay":
            action.add_argument("--to", help="another destination to send them to (default: their own)")
            action.add_argument("--dry-run", action="store_true", help="say what would be replayed, change nothing")
            action.add_argument("--rate", type=positive, help="at most this many events per second")
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="really delete (without it: a dry run)")


def _record_json(record: Any, whole: bool, shard: str | None = None) -> str:
    """The record as one JSON line; without the (possibly large) event unless `whole`; with several
    shards, `shard` names the one holding it."""
    fields = {f: getattr(record, f) for f in record.__struct_fields__ if whole or f != "event"}
    if shard is not None:
        fields["shard"] = shard
    return _json.encode(fields).decode()  # the event is embedded as the JSON it is


def run_dlq(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from trackpipe import dlq
    from trackpipe.sharded import connect

    config = load_from(args.config)
    layout = KeyLayout(config.key_prefix)
    try:
        dlq.check_destination(config, args.destination)
        target = getattr(args, "to", None) or args.destination
        if getattr(args, "to", None):
            dlq.check_destination(config, target, "--to")
        selection = dlq.Selection(
            event_name=args.event,
            reason_contains=args.reason,
            since_ms=dlq.parse_time(args.since, "--since") if args.since else None,
            until_ms=dlq.parse_time(args.until, "--until") if args.until else None,
            event_id=args.event_id,
        )
    except dlq.DlqError as exc:
        print(f"trackpipe dlq: {exc}", file=sys.stderr)
        return 2
    every = connect(config, socket_connect_timeout=3, socket_timeout=30)
    try:
        sharded = every.only(getattr(args, "shard", None))
    except KeyError as exc:
        every.close()
        print(f"trackpipe dlq: --shard: {exc.args[0]}", file=sys.stderr)
        return 2
    current = sharded.clients[0]
    try:
        chosen: Iterable[Any]
        if args.dlq_command in ("list", "show", "export"):
            # Streamed: each page of each shard's DLQ is written out as it is read, never all held at once.
            chosen = dlq.select_union(sharded, layout, args.destination, selection, args.limit)
        else:
            chosen = list(dlq.select_union(sharded, layout, args.destination, selection, args.limit))
        return _act(args, sharded, config, chosen, target, selection)
    except RedisError as exc:
        # Which shard failed is not known here when several are read: name them all.
        where = ", ".join(f"{c.name} ({masked_url(c.shard.redis_url)})" for c in sharded)
        where = masked_url(current.shard.redis_url) if len(sharded) == 1 and not config.shards else where
        print(f"trackpipe dlq: cannot reach {where}: {exc}", file=sys.stderr)
        return 1
    finally:
        every.close()


def _act(
    args: argparse.Namespace, sharded: Any, config: Any, chosen: Iterable[Any], target: str, selection: Any
) -> int:
    """Carry out the command on the chosen (shard, raw, record) letters: an iterator for list, show
    and export (read as they are written out), a list for purge and replay."""
    from trackpipe import dlq

    layout = KeyLayout(config.key_prefix)
    several = len(config.shards) > 1
    command = args.dlq_command
    if command in ("list", "show"):
        whole = command == "show"
        count = 0
        for shard, _, record in chosen:
            count += 1
            if args.json or whole:
                print(_record_json(record, whole, shard if several else None))
            else:
                where = f"\t{shard}" if several else ""
                print(f"{record.event_id}\t{record.event_name}\tattempts {record.attempts}\t{record.reason}{where}")
        if not args.json and not whole:
            print(f"{count} dead letters", file=sys.stderr)
        return 0
    if command == "export":
        count = 0
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
        try:
            for shard, _, record in chosen:
                out.write(_record_json(record, True, shard if several else None) + "\n")
                count += 1
        finally:
            if out is not sys.stdout:
                out.close()
        print(f"exported {count} dead letters", file=sys.stderr)
        return 0
    assert isinstance(chosen, list)
    if command == "purge":
        if not args.yes:
            print(f"would delete {len(chosen)} dead letters (add --yes to delete them)")
            return 0
        print(f"deleted {dlq.purge_union(sharded, layout, args.destination, chosen)} dead letters")
        return 0
    # replay
    if args.dry_run:
        print(f"would replay {len(chosen)} dead letters from {args.destination} to {target}")
        for shard, _, record in chosen:
            print(f"{record.event_id}\t{record.event_name}\t{record.reason}" + (f"\t{shard}" if several else ""))
        return 0
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if tty:
            width = 30
            filled = int(width * done / total)
            print(f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)

    try:
        # Each shard's replay lock, held together: no other replay picks the same letters anywhere.
        with dlq.exclusive_replay_union(sharded, layout, args.destination) as renew:
            # Selected again under the locks: a replay that ran meanwhile may have taken some.
            chosen = list(dlq.select_union(sharded, layout, args.destination, selection, args.limit))

            def progress_and_renew(done: int, total: int) -> None:
                renew()
                progress(done, total)

            # Each letter goes back to a delivery queue on its own shard.
            replayed = dlq.replay_union(
                sharded, config, args.destination, chosen, target, rate=args.rate, progress=progress_and_renew
            )
    except dlq.DlqError as exc:
        print(f"trackpipe dlq replay: {exc}", file=sys.stderr)
        return 1
    if tty:
        print(file=sys.stderr)
    print(f"replayed {replayed} dead letters from {args.destination} to deliver:{target}")
    return 0
