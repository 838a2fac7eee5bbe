"""A producing process for the client's tests: `python -m tests.client_producer URL PREFIX FIRST COUNT
[--spool DIR] [--hang]` tracks events PREFIX-FIRST .. PREFIX-(FIRST+COUNT-1) with trackpipe.client,
prints "tracked" and then exits normally (the exit flush sends them) or, with --hang, waits to be
killed."""

from __future__ import annotations

import argparse
import sys
import time

from tests.support import TEST_KEY
from trackpipe.client import Client


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("first", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--spool")
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    client = Client(
        args.url,
        "29",
        TEST_KEY,
        spool_dir=args.spool,
        flush_interval=0.05,
        backoff_base=0.05,
        backoff_cap=0.5,
        shutdown_timeout=20.0,
    )
    for i in range(args.first, args.first + args.count):
        client.track(
            "page_view",
            {"page_type": "home", "n": i},
            user={"consistent_anonymous_id": "p"},
            event_id=f"{args.prefix}-{i}",
        )
    print("tracked", flush=True)
    if args.hang:
        while True:
            time.sleep(1)
    sys.exit(0)  # no close(): the exit flush sends what is queued


if __name__ == "__main__":
    main()
