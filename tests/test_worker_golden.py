"""The ingest job's pure half against outputs recorded before the worker was made faster: the same
events, statuses, warnings, errors, delivered bodies, routes, inspector samples and quality
counters, byte for byte, over a varied corpus (tests/worker_corpus.py). Pure and fast: no Redis.

To re-record after an intended change of behaviour:
    python -c "import json,gzip; from tests.worker_corpus import *; \
        open('tests/data/worker_golden.json.gz','wb').write(gzip.compress(json.dumps(outputs(corpus(), config()), \
        sort_keys=True, separators=(',', ':')).encode(), 9, mtime=0))"
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from tests.worker_corpus import config, corpus, outputs

GOLDEN = Path(__file__).parent / "data" / "worker_golden.json.gz"


def _first_difference(got: Any, want: Any, where: str = "") -> str | None:
    if type(got) is not type(want):
        return f"{where}: {got!r} != {want!r}"
    if isinstance(got, dict):
        for key in sorted(set(got) | set(want)):
            if key not in got or key not in want:
                return f"{where}.{key}: only in {'the recording' if key in want else 'the new output'}"
            found = _first_difference(got[key], want[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(got, list):
        for i, (a, b) in enumerate(zip(got, want, strict=False)):
            found = _first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return None if len(got) == len(want) else f"{where}: {len(got)} items, recorded {len(want)}"
    return None if got == want else f"{where}: {got!r} != recorded {want!r}"


def test_the_corpus_is_varied() -> None:
    jobs = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    events = [e for job in jobs for e in job["events"]]
    statuses = {e["status"] for e in events}
    assert statuses == {"VALID", "INVALID_ACCEPTED", "INVALID_REJECTED", "DUPLICATE"}
    assert {e["source"] for e in events} >= {"shop-web", "app", "planned", "nodedup", "unknown-src"}
    assert any(job["deliveries"].get("big-spenders") for job in jobs)
    assert any("FILTERED" in routes.values() for job in jobs for routes in job["routes"])


def test_outputs_match_the_recording() -> None:
    want = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    # Through JSON as the recording was, so tuples and lists compare alike.
    got = json.loads(json.dumps(outputs(corpus(), config()), sort_keys=True))
    assert _first_difference(got, want) is None
