"""`trackpipe dlq list|show|export|replay|purge`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

import msgspec

from trackpipe.config import load_from
from trackpipe.connection import sync_client
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


def _record_json(record: Any, whole: bool) -> str:
    """The record as one JSON line; without the (possibly large) event unless `whole`."""
    if whole:
        return _json.encode(record).decode()  # the event is embedded as the JSON it is
    return _json.encode({f: getattr(record, f) for f in record.__struct_fields__ if f != "event"}).decode()


def run_dlq(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from trackpipe import dlq

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
    try:
        with sync_client(config.redis_url, socket_connect_timeout=3, socket_timeout=30) as connection:
            chosen: Iterable[Any]
            if args.dlq_command in ("list", "show", "export"):
                # Streamed: each page of the DLQ is written out as it is read, never all held at once.
                chosen = dlq.select_iter(connection, layout, args.destination, selection, args.limit)
            else:
                chosen = dlq.select(connection, layout, args.destination, selection, args.limit)
            return _act(args, connection, config, chosen, target, selection)
    except RedisError as exc:
        print(f"trackpipe dlq: cannot reach {masked_url(config.redis_url)}: {exc}", file=sys.stderr)
        return 1


def _act(
    args: argparse.Namespace, connection: Any, config: Any, chosen: Iterable[Any], target: str, selection: Any
) -> int:
    """Carry out the command on the chosen records: an iterator for list, show and export (read
    as they are written out), a list for purge and replay."""
    from trackpipe import dlq

    command = args.dlq_command
    if command in ("list", "show"):
        whole = command == "show"
        count = 0
        for _, record in chosen:
            count += 1
            if args.json or whole:
                print(_record_json(record, whole))
            else:
                print(f"{record.event_id}\t{record.event_name}\tattempts {record.attempts}\t{record.reason}")
        if not args.json and not whole:
            print(f"{count} dead letters", file=sys.stderr)
        return 0
    if command == "export":
        count = 0
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
        try:
            for _, record in chosen:
                out.write(_record_json(record, True) + "\n")
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
        print(f"deleted {dlq.purge(connection, KeyLayout(config.key_prefix), args.destination, chosen)} dead letters")
        return 0
    # replay
    if args.dry_run:
        print(f"would replay {len(chosen)} dead letters from {args.destination} to {target}")
        for _, record in chosen:
            print(f"{record.event_id}\t{record.event_name}\t{record.reason}")
        return 0
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if tty:
            width = 30
            filled = int(width * done / total)
            print(f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)

    try:
        with dlq.exclusive_replay(connection, KeyLayout(config.key_prefix), args.destination) as renew:
            # Selected again under the lock: a replay that ran meanwhile may have taken some.
            chosen = dlq.select(connection, KeyLayout(config.key_prefix), args.destination, selection, args.limit)

            def progress_and_renew(done: int, total: int) -> None:
                renew()
                progress(done, total)

            replayed = dlq.replay(
                connection, config, args.destination, chosen, target, rate=args.rate, progress=progress_and_renew
            )
    except dlq.DlqError as exc:
        print(f"trackpipe dlq replay: {exc}", file=sys.stderr)
        return 1
    if tty:
        print(file=sys.stderr)
    print(f"replayed {replayed} dead letters from {args.destination} to deliver:{target}")
    return 0
