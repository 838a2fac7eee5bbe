"""`trackpipe keys new`: a fresh source key and its hashed form for the config."""

from __future__ import annotations

import argparse
import sys

from trackpipe.auth import new_key


def run_keys(args: argparse.Namespace) -> int:
    key, hashed = new_key()
    print(f"key:    {key}\nconfig: {hashed}")
    print("Give the key to the producer; put the config line in the source's `keys`.", file=sys.stderr)
    return 0
