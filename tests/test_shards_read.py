"""Several shards, read as one: `trackpipe status`, `dlq`, `requests`, the admin API and the overview
show the union of two real valkey servers; a source's inspector is read from its own shard; a dead
letter is replayed or purged on the shard that holds it; an unreachable shard is named, not a crash."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import redis
from starlette.testclient import TestClient

from commands.main import main
from console.app import create_app
from tests.browser import ADMIN_TOKEN
from tests.conftest import started_server
from tests.support import TEST_KEY, free_port
from trackpipe import dlq as dlq_ops
from trackpipe.config import parse
from trackpipe.jobs import delivery_queue
from trackpipe.keys import INGEST_QUEUE, KeyLayout
from trackpipe.messages import DeadLetter, IngestBatch, IngestRecord, encode_batch, encode_dead_letter
from trackpipe.queries import QueueStatus, combine_queues, newest_requests

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)

LAYOUT = KeyLayout()
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
T0 = 1_790_000_000_000
OTHER_KEY = "tk_live_0123456789abcdef0123456789abcdff"


def config_text(urls: list[str], tmp_path: Path) -> str:
    shards = "".join(
        f'[[shards]]\nname = "{name}"\nredis_url = "{url}"\n' for name, url in zip(NAMES, urls, strict=False)
    )
    return f"""
admin_token = "{ADMIN_TOKEN}"
{shards}
[[sources]]
id = "web"
site_id = "29"
keys = ["{TEST_KEY}"]
shard = "one"
[[sources]]
id = "app"
site_id = "30"
keys = ["{OTHER_KEY}"]
shard = "two"
[[destinations]]
id = "crm"
type = "webhook"
url = "http://127.0.0.1:9/hook"
[[destinations]]
id = "lake"
type = "file"
path = "{tmp_path / "lake"}"
"""


NAMES = ["one", "two", "three"]


def letter(event_id: str, at: int) -> DeadLetter:
    event = {"event_name": "purchase", "context": {"event_id": event_id}}
    return DeadLetter(
        event_id, "purchase", "crm", "HTTP 500: down", 6, at - 1000, at, msgspec.Raw(json.dumps(event).encode())
    )


class Shards:
    def __init__(self, tmp_path: Path, one: redis.Redis, two: redis.Redis, urls: list[str]) -> None:
        self.tmp_path = tmp_path
        self.one = one
        self.two = two
        self.urls = urls
        self.config_file = tmp_path / "trackpipe.toml"
        self.config_file.write_text(config_text(urls, tmp_path))

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        code = main([*args, "--config", str(self.config_file)])
        out, err = capsys.readouterr()
        return code, out, err


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[Shards]:
    """Two valkey servers as shards `one` (source web, home) and `two` (source app), each holding
    counters, dead letters, an ingest job and destination requests of its own."""
    servers = [started_server(tmp_path / f"valkey-{n}") for n in (1, 2)]
    urls = [f"redis://127.0.0.1:{s.port}/0" for s in servers]
    one, two = (redis.Redis.from_url(u) for u in urls)
    try:
        one.hset(LAYOUT.source_stats("web"), mapping={"VALID": 5, "DUPLICATE": 1})
        two.hset(LAYOUT.source_stats("app"), mapping={"VALID": 7})
        two.hset(LAYOUT.source_stats("web"), mapping={"VALID": 2})  # left from before a move
        one.lpush(LAYOUT.inspector("web"), json.dumps({"event_id": "w-1", "status": "VALID", "received_at": T0}))
        two.lpush(LAYOUT.inspector("app"), json.dumps({"event_id": "a-1", "status": "VALID", "received_at": T0}))
        # Dead letters, interleaved in time: one holds 1 and 3, two holds 2 and 4 (4 the newest).
        one.lpush(LAYOUT.dlq("crm"), *(encode_dead_letter(letter(f"d-{n}", T0 + n * 1000)) for n in (1, 3)))
        two.lpush(LAYOUT.dlq("crm"), *(encode_dead_letter(letter(f"d-{n}", T0 + n * 1000)) for n in (2, 4)))
        # An ingest job waiting on shard one, holding 3 events of web.
        record = IngestRecord("web", "29", T0, [b'{"a":1}', b'{"a":2}', b'{"a":3}'])
        one.rpush(LAYOUT.queue(INGEST_QUEUE), "job-1")
        one.rpush(LAYOUT.job_parts("job-1"), encode_batch(IngestBatch([record])))
        for client, at in ((one, T0), (two, T0 + 5)):
            exchange = {"at": at, "method": "POST", "url": "http://x", "request_body": "{}", "events": 1}
            client.lpush(LAYOUT.destination_requests("crm"), json.dumps(exchange))
        yield Shards(tmp_path, one, two, urls)
    finally:
        one.close()
        two.close()
        for server in servers:
            server.stop()


def ids_in(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["event_id"] for raw in client.lrange(LAYOUT.dlq("crm"), 0, -1)]


# -- trackpipe status ----------------------------------------------------------------------------


def test_status_shows_the_union_and_each_shard(shards: Shards, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = shards.cli(capsys, "status", "--json")
    assert code == 0
    status = json.loads(out)
    sources = {s["id"]: s for s in status["sources"]}
    assert sources["web"]["processed"] == 8 and sources["web"]["duplicates"] == 1  # summed over both shards
    assert sources["app"]["processed"] == 7
    assert {d["id"]: d["dlq"] for d in status["destinations"]} == {"crm": 4, "lake": 0}
    ingest = next(q for q in status["queues"] if q["name"] == INGEST_QUEUE)
    assert ingest["depth"] == 1
    assert [(s["name"], s["reachable"], s["sources"], s["waiting"]) for s in status["shards"]] == [
        ("one", True, ["web"], 1),
        ("two", True, ["app"], 0),
    ]

    code, out, _ = shards.cli(capsys, "status")
    assert code == 0
    assert "shard" in out and "web" in out and "app" in out
    assert any(line.startswith("one ") and " ok " in line for line in out.splitlines())


def test_an_unreachable_shard_is_named_and_the_rest_still_shown(
    shards: Shards, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"
    shards.config_file.write_text(config_text([*shards.urls, closed], shards.tmp_path))
    code, out, err = shards.cli(capsys, "status")
    assert code == 1  # partial: said by the exit status
    assert "three" in out and "UNREACHABLE" in out
    assert "shard 'three' unreachable" in err
    assert "hunter2secret" not in out + err
    assert "crm" in out  # the reachable shards' figures are printed

    code, out, err = shards.cli(capsys, "status", "--shard", "three")
    assert code == 1 and "shard 'three'" in err


def test_status_of_one_shard_and_of_one_source(shards: Shards, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = shards.cli(capsys, "status", "--json", "--shard", "two")
    assert code == 0
    status = json.loads(out)
    assert [s["name"] for s in status["shards"]] == ["two"]
    assert {d["id"]: d["dlq"] for d in status["destinations"]}["crm"] == 2

    code, out, _ = shards.cli(capsys, "status", "--source", "web")
    assert code == 0
    assert "new events go to shard 'one'" in out
    waiting = {line.split()[0]: line.split()[-1] for line in out.splitlines()[2:]}
    assert waiting == {"one": "3", "two": "0"}

    code, _, err = shards.cli(capsys, "status", "--shard", "nosuch")
    assert code == 2 and "no shard named 'nosuch' (shards: one, two)" in err
    code, _, err = shards.cli(capsys, "status", "--source", "nosuch")
    assert code == 2 and "--source: no source 'nosuch'" in err


# -- trackpipe dlq and requests ------------------------------------------------------------------


def test_dlq_lists_every_shard_newest_first_and_restricts_to_one(
    shards: Shards, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = shards.cli(capsys, "dlq", "list", "--destination", "crm", "--json")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(r["event_id"], r["shard"]) for r in listed] == [
        ("d-4", "two"),
        ("d-3", "one"),
        ("d-2", "two"),
        ("d-1", "one"),
    ]

    code, out, _ = shards.cli(capsys, "dlq", "list", "--destination", "crm", "--json", "--shard", "one", "--limit", "1")
    assert [json.loads(line)["event_id"] for line in out.splitlines()] == ["d-3"]

    code, _, err = shards.cli(capsys, "dlq", "list", "--destination", "crm", "--shard", "four")
    assert code == 2 and "no shard named 'four' (shards: one, two)" in err


def test_dlq_replay_sends_each_letter_back_on_its_own_shard(shards: Shards, capsys: pytest.CaptureFixture[str]) -> None:
    from trackpipe.messages import decode_delivery

    code, out, _ = shards.cli(capsys, "dlq", "replay", "--destination", "crm", "--to", "lake", "--limit", "3")
    assert code == 0, out
    assert "replayed 3" in out
    assert ids_in(shards.one) == ["d-1"] and ids_in(shards.two) == []  # the newest 3 over both shards

    def replayed(client: redis.Redis) -> list[str]:
        return sorted(
            e.event_id for job in delivery_queue("lake", client).jobs for e in decode_delivery(job.args[0]).events
        )

    assert replayed(shards.one) == ["d-3"]
    assert replayed(shards.two) == ["d-2", "d-4"]

    code, out, _ = shards.cli(capsys, "dlq", "purge", "--destination", "crm", "--yes")
    assert "deleted 1" in out and ids_in(shards.one) == []


def test_requests_are_merged_newest_first(shards: Shards, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = shards.cli(capsys, "requests", "crm", "--json")
    assert code == 0
    assert [json.loads(line)["at"] for line in out.splitlines()] == [T0 + 5, T0]
    code, out, _ = shards.cli(capsys, "requests", "crm", "--json", "--shard", "one")
    assert [json.loads(line)["at"] for line in out.splitlines()] == [T0]


# -- the admin API and the overview ----------------------------------------------------------------


def run(text: str, test: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def go() -> None:
        app = create_app(parse(text, env={}))
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
                await test(client)
        finally:
            app.console.close()

    asyncio.run(go())


def test_the_admin_api_shows_the_union(shards: Shards) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        found = (await client.get("/admin/shards", headers=AUTH)).json()["shards"]
        assert [(s["name"], s["home"], s["reachable"], s["sources"], s["backlog"]) for s in found] == [
            ("one", True, True, ["web"], 1),
            ("two", False, True, ["app"], 0),
        ]
        sources = {s["id"]: s for s in (await client.get("/admin/sources", headers=AUTH)).json()["sources"]}
        assert sources["web"]["processed"] == 8 and sources["web"]["shard"] == "one"
        assert sources["app"]["processed"] == 7 and sources["app"]["shard"] == "two"
        # The inspector reads the source's own shard.
        app_events = (await client.get("/admin/sources/app/events", headers=AUTH)).json()
        assert [e["event_id"] for e in app_events["events"]] == ["a-1"]
        letters = (await client.get("/admin/dlq/crm", headers=AUTH)).json()["dead_letters"]
        assert [(x["event_id"], x["shard"]) for x in letters] == [
            ("d-4", "two"),
            ("d-3", "one"),
            ("d-2", "two"),
            ("d-1", "one"),
        ]
        assert (await client.get("/admin/destinations/crm/delivery", headers=AUTH)).json()["dlq"] == 4
        requests = (await client.get("/admin/destinations/crm/requests", headers=AUTH)).json()["requests"]
        assert [r["at"] for r in requests] == [T0 + 5, T0]
        answer = await client.post("/admin/dlq/crm/replay", headers=AUTH, json={"to": "lake", "event": "purchase"})
        assert answer.json() == {"status": "ok", "replayed": 4, "to": "lake"}
        assert delivery_queue("lake", shards.one).count == 1 and delivery_queue("lake", shards.two).count == 1
        assert ids_in(shards.one) == ids_in(shards.two) == []
        spec = (await client.get("/openapi.json")).json()
        assert "/admin/shards" in spec["paths"]

    run(shards.config_file.read_text(), test)


def test_the_overview_lists_the_shards_and_an_unreachable_one(shards: Shards) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(parse(config_text([*shards.urls, closed], shards.tmp_path), env={}))
    try:
        client = TestClient(app, base_url="http://console.test")
        assert (
            client.post("/login", data={"token": ADMIN_TOKEN, "next": "/"}, follow_redirects=False).status_code == 303
        )
        page = client.get("/overview/live")
        assert page.status_code == 200
        assert 'id="shard-one"' in page.text and 'id="shard-three"' in page.text
        assert "unreachable" in page.text
        listing = client.get("/dlq/crm")
        assert listing.status_code == 503  # a DLQ listing needs every shard's letters
        found = client.get("/admin/shards", headers=AUTH).json()["shards"]
        assert [s["reachable"] for s in found] == [True, True, False]
    finally:
        app.console.close()


def test_a_background_replay_runs_on_every_shard_under_one_id(shards: Shards) -> None:
    from trackpipe.sharded import connect

    config = parse(shards.config_file.read_text(), env={})
    sharded = connect(config)
    try:
        started = dlq_ops.start_replay_union(sharded, config, "crm", dlq_ops.Selection(), "lake", rate=None)
        assert [name for name, _ in started] == ["one", "two"]
        assert len({job.job_id for _, job in started}) == 1
        with pytest.raises(dlq_ops.DlqError):  # one replay per DLQ, on every shard
            dlq_ops.start_replay_union(sharded, config, "crm", dlq_ops.Selection(), "lake")
        for name, job in started:
            dlq_ops.run_replay(sharded.named(name).redis, config, job, dlq_ops.Selection())
        progress = dlq_ops.read_progress_union(sharded, LAYOUT, started[0][1].job_id)
        assert progress is not None and (progress.state, progress.total, progress.done) == ("done", 4, 4)
        assert ids_in(shards.one) == ids_in(shards.two) == []
    finally:
        sharded.close()


# -- pure combining --------------------------------------------------------------------------------


def test_queues_combine_by_summing_and_the_oldest_lag() -> None:
    a = QueueStatus("ingest", 2, 1.5, 1, 0, 0, 1)
    b = QueueStatus("ingest", 3, None, 0, 4, 1, 2)
    (combined,) = combine_queues([[a], [b]])
    assert (combined.depth, combined.lag_seconds, combined.running, combined.scheduled, combined.failed) == (
        5,
        1.5,
        1,
        4,
        1,
    )
    assert combined.workers == 3
    assert a.depth == 2  # the inputs are not changed


def test_requests_without_a_time_sort_last() -> None:
    assert newest_requests([[b'{"at": 5}', b"junk"], [b'{"at": 9}']], 3) == [b'{"at": 9}', b'{"at": 5}', b"junk"]
