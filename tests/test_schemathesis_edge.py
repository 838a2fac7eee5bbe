"""Schemathesis 4.x against a real `trackpipe edge` (uvicorn) on a real valkey, in both status modes.

- `test_the_edges_own_openapi_holds` runs `st run <edge>/openapi.json`: the edge's own document, as
  served, unmodified. Query parameters `tc_s` and `token` are drawn from schemathesis dictionaries part
  of the time (the tests' real site ids and keys, a wrong key), so requests are both accepted and refused.
  Any 5xx or answer outside the document (status, content type, headers, body schema) fails the test.
  Afterwards the HAR report is read back: what valkey holds must be exactly what the 200 answers to
  requests with a good key said was accepted, and nothing from any other request.
- `test_admin_routes_hold` covers the admin API: `st run <console>/openapi.json` against a real
  `trackpipe console`, its own document as served, with the admin token (`Authorization: Bearer`, see
  tests/test_admin.py).
  `limit`, `since` and `until` are drawn in part from dictionaries of awkward values ("²", 5,000 digits,
  year 1 and 9999 with offsets): before they were fixed, such values made the admin API answer 500.
  The config has two destinations with empty DLQs and no worker runs: replays act on nothing.
- Bugs found while fuzzing (huge or non-ASCII numbers, Redis down under the admin API), kept as
  regression tests against the real console.

Seeds are fixed (TRACKPIPE_SCHEMATHESIS_SEED=random, or a number, to change that); the number of examples
per operation can be raised with TRACKPIPE_SCHEMATHESIS_EXAMPLES. Each run prints schemathesis' summary.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import redis

from tests.support import OTHER_KEY, TEST_KEY, config_text, running_console, running_edge, stored_events

MODES = ["compat", "strict"]
ADMIN_TOKEN = "admin-token-0123456789"  # the admin_token of tests.support's config
ST = Path(sys.executable).with_name("st")
EXAMPLES = int(os.environ.get("TRACKPIPE_SCHEMATHESIS_EXAMPLES", "0") or 0)
SEED = os.environ.get("TRACKPIPE_SCHEMATHESIS_SEED", "20261126")
GOOD_PAIRS = {("29", TEST_KEY): ("shop-web", "29"), ("30", OTHER_KEY): ("other-site", "30")}

INGEST_CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
]
ADMIN_CHECKS = [*INGEST_CHECKS, "ignored_auth"]

DESTINATIONS = """
[[destinations]]
id = "crm"
type = "webhook"
url = "http://127.0.0.1:9/hook"

[[destinations]]
id = "lake"
type = "file"
path = "{lake}"
"""

NINES, ZEROS = "9" * 5_000, "0" * 5_000  # int() refuses strings over 4,300 digits
SCHEMATHESIS_TOML = f"""
[dictionaries.sites]
values = ["29", "30", "999"]

[dictionaries.keys]
values = ["{TEST_KEY}", "{OTHER_KEY}", "wrong-key-0123456789"]

[dictionaries.sources]
values = ["shop-web", "other-site"]

[dictionaries.destinations]
values = ["crm", "lake"]

# Numbers and times the admin API parses itself: edge cases of str.isdigit() and int() among good values.
[dictionaries.limits]
values = ["1", "50", "1000", "0", "1001", "-1", "\u00b2", "{NINES}", "{ZEROS}1"]

[dictionaries.times]
values = ["1700000000", "1700000000000", "2026-11-26T10:00", "2026-11-26T10:00:00+01:00", "0001-01-01T00:00+01:00",
          "9999-12-31T23:59-23:59", "\u00b2", "{NINES}", " ", "no destination"]

[parameters]
"query.tc_s" = {{ dictionary = "sites", probability = 0.7 }}
"query.token" = {{ dictionary = "keys", probability = 0.7 }}
"path.source_id" = {{ dictionary = "sources", probability = 0.7 }}
"path.destination_id" = {{ dictionary = "destinations", probability = 0.7 }}
"body.to" = {{ dictionary = "destinations", probability = 0.5 }}
"query.limit" = {{ dictionary = "limits", probability = 0.5 }}
"query.since" = {{ dictionary = "times", probability = 0.5 }}
"query.until" = {{ dictionary = "times", probability = 0.5 }}
"body.since" = {{ dictionary = "times", probability = 0.5 }}
"body.until" = {{ dictionary = "times", probability = 0.5 }}

[auth.openapi.admin]
bearer = "{ADMIN_TOKEN}"
"""


def edge_config(tmp_path: Path, valkey_url: str, mode: str) -> Path:
    text = config_text(valkey_url, mode=mode)
    assert f'admin_token = "{ADMIN_TOKEN}"' in text
    path = tmp_path / "trackpipe.toml"
    path.write_text(text + DESTINATIONS.format(lake=tmp_path / "lake"))
    return path


def run_schemathesis(
    tmp_path: Path, location: str, checks: list[str], examples: int, *extra: str
) -> tuple[list[dict[str, Any]], str]:
    """`st run` in a subprocess (cwd: tmp_path, so nothing lands in the project); (HAR entries, output)."""
    toml = tmp_path / "schemathesis.toml"
    toml.write_text(SCHEMATHESIS_TOML)
    har = tmp_path / "schemathesis.har"
    seed = [] if SEED == "random" else ["--seed", SEED]
    cmd = [
        str(ST),
        "--config-file",
        str(toml),
        "--no-color",
        "run",
        location,
        *extra,
        "--checks",
        ",".join(checks),
        "--max-examples",
        str(EXAMPLES or examples),
        *seed,
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "15",
        "--output-sanitize",
        "false",
        "--report",
        "har",
        "--report-har-path",
        str(har),
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    print(output[-3000:])
    assert done.returncode == 0, f"schemathesis found problems (exit {done.returncode}):\n{output}"
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    return entries, output


def statuses(entries: list[dict[str, Any]]) -> collections.Counter:
    return collections.Counter(
        (e["request"]["method"], urlsplit(e["request"]["url"]).path, e["response"]["status"]) for e in entries
    )


def summary(seen: collections.Counter) -> str:
    """Answers per route (admin paths by their first segments, whatever ids were generated)."""
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (method, path, code), count in seen.items():
        parts = path.split("/")
        route = (
            "/".join(parts[:3]) + ("/.../replay" if path.endswith("/replay") else "")
            if path.startswith("/admin/")
            else path
        )
        table[f"{method} {route}" if method in ("GET", "POST") else "other methods"][code] += count
    return "\n".join(f"  {route}: {dict(sorted(codes.items()))}" for route, codes in sorted(table.items()))


def request_auth(entry: dict[str, Any]) -> tuple[str, str] | None:
    """(source, site) when the request carried a good key for its site (docs/CONTRACT.md §2), else None."""
    query: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(entry["request"]["url"]).query, keep_blank_values=True):
        query.setdefault(name, value)
    key = query.get("token") or None
    if key is None:
        for header in entry["request"]["headers"]:
            if header["name"].lower() == "authorization":
                scheme, _, value = header["value"].strip().partition(" ")
                key = value.strip() if scheme.lower() == "bearer" else None
    return GOOD_PAIRS.get((query.get("tc_s") or "", key or ""))


def pixel_stores(query: bytes) -> bool:
    """Whether a pixel hit with a good key stores its event (docs/CONTRACT.md §2: the query makes an event
    within the size limit); ingest/pixel.py is tested on its own (tests/test_pixel.py)."""
    from ingest.pixel import PixelError, event_from_query
    from ingest.validate import MAX_EVENT_BYTES

    if len(query) > MAX_EVENT_BYTES:
        return False
    try:
        return len(event_from_query(query).event) <= MAX_EVENT_BYTES
    except PixelError:
        return False


# -- the edge's own document ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
def test_the_edges_own_openapi_holds(
    mode: str, tmp_path: Path, valkey_url: str, valkey_client: redis.Redis, capsys: pytest.CaptureFixture
) -> None:
    with running_edge(edge_config(tmp_path, valkey_url, mode)) as base:
        entries, _ = run_schemathesis(tmp_path, f"{base}/openapi.json", INGEST_CHECKS, 100)

    seen = statuses(entries)
    with capsys.disabled():
        print(f"\n[schemathesis {mode} /openapi.json] {len(entries)} requests\n{summary(seen)}")
    assert not [k for k in seen if k[2] >= 500], seen
    for route in ("/events", "/events/batch"):
        assert seen[("POST", route, 200)] > 0, f"no request to {route} was accepted: the run proves little"
        assert any(k[:2] == ("POST", route) and k[2] >= 400 for k in seen), f"no request to {route} was refused"

    # What was stored is exactly what the answers to good-key requests said was accepted.
    expected: collections.Counter = collections.Counter()
    for entry in entries:
        path = urlsplit(entry["request"]["url"]).path.rstrip("/")  # /events/ is /events
        method = entry["request"]["method"]
        if (method, path) not in (("POST", "/events"), ("POST", "/events/batch"), ("GET", "/events")):
            continue
        if entry["response"]["status"] != 200:
            continue
        owner = request_auth(entry)
        if method == "GET":  # the pixel: compat answers its GIF also to a query that makes no event
            if owner is not None and pixel_stores(urlsplit(entry["request"]["url"]).query.encode()):
                expected[owner] += 1
            continue
        answer = json.loads(entry["response"]["content"]["text"])
        if owner is None:
            assert answer in ({"status": "ok"}, {"status": "ok", "accepted": 0, "rejected": []}), entry
            continue
        expected[owner] += answer["accepted"] if path == "/events/batch" else 1
    stored = collections.Counter((source, site) for source, site, _ in stored_events(valkey_client))
    assert stored == expected, f"stored {dict(stored)}, the 200 answers accepted {dict(expected)}"


# -- the admin API (the console) ------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/admin/sources"),
    ("GET", "/admin/refused"),
    ("GET", "/admin/shards"),
    ("GET", "/admin/sources/{source_id}/events"),
    ("GET", "/admin/destinations/{destination_id}/delivery"),
    ("GET", "/admin/destinations/{destination_id}/requests"),
    ("GET", "/admin/dlq/{destination_id}"),
    ("POST", "/admin/dlq/{destination_id}/replay"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
def test_admin_routes_hold(
    mode: str, tmp_path: Path, valkey_url: str, valkey_client: redis.Redis, capsys: pytest.CaptureFixture
) -> None:
    with running_console(edge_config(tmp_path, valkey_url, mode)) as base:
        spec = httpx.get(f"{base}/openapi.json").json()
        described = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if p.startswith("/admin/")}
        assert described == set(ADMIN_ROUTES), described  # the document describes every admin route
        entries, _ = run_schemathesis(tmp_path, f"{base}/openapi.json", ADMIN_CHECKS, 60)

    seen = statuses(entries)
    with capsys.disabled():
        print(f"\n[schemathesis {mode} console /openapi.json] {len(entries)} requests\n{summary(seen)}")
    assert not [k for k in seen if k[2] >= 500], seen
    answered = {(method, path.split("/")[2], code) for method, path, code in seen if path.startswith("/admin/")}
    routes = (("GET", "sources"), ("GET", "refused"), ("GET", "destinations"), ("GET", "dlq"), ("POST", "dlq"))
    for method, route in routes:
        assert (method, route, 200) in answered, f"{method} /admin/{route}... never answered 200"
    # Replays of empty DLQs: no dead letter appeared, no delivery job was queued.
    assert valkey_client.keys("trackpipe:dlq:*") == []
    assert valkey_client.keys("trackpipe:rq:queue:deliver*") == []


# -- bugs found while fuzzing, pinned against the real edge and console ---------------------------------------


def raw_http(base: str, request: bytes) -> bytes:
    """One request on its own connection, exactly as given; the status line and headers of the answer."""
    host, port = urlsplit(base).hostname, urlsplit(base).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65_536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_content_length_with_5000_leading_zeros_is_not_a_server_error(tmp_path: Path, valkey_url: str) -> None:
    body = b'{"event_name":"x"}'
    with running_edge(edge_config(tmp_path, valkey_url, "strict")) as base:
        answer = raw_http(
            base,
            b"POST /events?tc_s=29&token=" + TEST_KEY.encode() + b" HTTP/1.1\r\nHost: edge\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + b"0" * 5_000 + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body,
        )
    status = int(answer.split(b" ", 2)[1])
    assert status in (200, 400), answer


ADMIN_CRASHES = [
    "/admin/sources/shop-web/events?limit=%C2%B2",  # '²'.isdigit() is True, int('²') raises
    "/admin/sources/shop-web/events?limit=" + "1" * 5_000,  # over Python's 4,300-digit int() limit
    "/admin/dlq/crm?limit=%C2%B2",
    "/admin/dlq/crm?since=%C2%B2",  # trackpipe/dlq.py parse_time: the same isdigit()/int()
    "/admin/dlq/crm?until=" + "9" * 5_000,
]


def test_admin_numbers_that_int_cannot_read_are_refused_not_crashed(tmp_path: Path, valkey_url: str) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with running_console(edge_config(tmp_path, valkey_url, "strict")) as base:
        answers = {url[:60]: httpx.get(base + url, headers=auth).status_code for url in ADMIN_CRASHES}
        replay = httpx.post(f"{base}/admin/dlq/crm/replay", headers=auth, json={"since": "\u00b2"}).status_code
    answers["replay since=²"] = replay
    assert all(code == 400 for code in answers.values()), answers


@pytest.mark.own_valkey
def test_admin_routes_answer_503_when_redis_is_down(tmp_path: Path, valkey: Any, valkey_url: str) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    config = edge_config(tmp_path, valkey_url, "strict")
    with running_edge(config) as base, running_console(config) as console:
        valkey.stop()
        answers = {
            route: httpx.request(method, console + route, headers=auth, json=body, timeout=30).status_code
            for method, route, body in [
                ("GET", "/admin/sources/shop-web/events", None),
                ("GET", "/admin/destinations/crm/delivery", None),
                ("GET", "/admin/dlq/crm", None),
                ("POST", "/admin/dlq/crm/replay", {}),
            ]
        }
        ready = httpx.get(f"{base}/readyz").status_code
        healthy = httpx.get(f"{console}/healthz").status_code
    assert ready == 503  # the edge itself knows Redis is down
    assert all(code == 503 for code in answers.values()), answers
    assert healthy == 200  # the console itself stays up
