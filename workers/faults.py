"""Fault injection for crash-safety tests: TRACKPIPE_FAULT=<point> kills the worker at that point.

Off unless the variable is set (it is read once, when the worker starts). Points:
ingest:after_decode, ingest:after_dedup, ingest:mid_fanout, ingest:after_fanout,
deliver:before_send, deliver:after_send (the destination has the batch, the worker dies before
settling it: the re-run sends it again).
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "TRACKPIPE_FAULT"
_armed = os.environ.get(FAULT_ENV) or None


def point(name: str) -> None:
    if _armed is not None and _armed == name:
        # SIGKILL: no cleanup, no finally blocks, no RQ bookkeeping, as in a real crash.
        os.kill(os.getpid(), signal.SIGKILL)
