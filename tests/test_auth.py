"""trackpipe.auth: key hashing and generation, and resolving (site, key) to a source."""

from __future__ import annotations

import hashlib
import re

import pytest

from trackpipe.auth import HASH_PREFIX, KeyRing, hash_key, new_key
from trackpipe.config import SourceConfig, parse

PLAIN = "plain-key-0123456789"
SECRET = "hashed-key-0123456789"
HASHED = "sha256:" + hashlib.sha256(SECRET.encode()).hexdigest()


@pytest.fixture
def sources() -> list[SourceConfig]:
    return [
        SourceConfig(id="shop-web", site_id="29", keys=[PLAIN, HASHED]),
        SourceConfig(id="shop-app", site_id="29", keys=["app-key-0123456789"]),
        SourceConfig(id="blog", site_id="30", keys=["blog-key-0123456789"]),
    ]


@pytest.fixture
def ring(sources: list[SourceConfig]) -> KeyRing:
    return KeyRing(sources)


def test_plain_key_resolves_to_its_source(ring: KeyRing, sources: list[SourceConfig]) -> None:
    assert ring.resolve("29", PLAIN) is sources[0]


def test_hashed_key_resolves_from_the_plain_key(ring: KeyRing, sources: list[SourceConfig]) -> None:
    assert ring.resolve("29", SECRET) is sources[0]


def test_presenting_the_stored_hash_itself_is_not_the_key(ring: KeyRing) -> None:
    assert ring.resolve("29", HASHED) is None


def test_each_key_resolves_to_its_own_source(ring: KeyRing, sources: list[SourceConfig]) -> None:
    assert ring.resolve("29", "app-key-0123456789") is sources[1]
    assert ring.resolve("30", "blog-key-0123456789") is sources[2]


def test_key_of_another_site_is_rejected(ring: KeyRing) -> None:
    assert ring.resolve("30", PLAIN) is None
    assert ring.resolve("29", "blog-key-0123456789") is None


def test_unknown_site_is_rejected(ring: KeyRing) -> None:
    assert ring.resolve("31", PLAIN) is None


@pytest.mark.parametrize("key", ["unknown-key-0123456789", PLAIN + "x", PLAIN[:-1], PLAIN.upper(), " " + PLAIN])
def test_unknown_key_is_rejected(ring: KeyRing, key: str) -> None:
    assert ring.resolve("29", key) is None


@pytest.mark.parametrize(("site", "key"), [(None, PLAIN), ("", PLAIN), ("29", None), ("29", ""), (None, None)])
def test_missing_site_or_key_is_rejected(ring: KeyRing, site: str | None, key: str | None) -> None:
    assert ring.resolve(site, key) is None


@pytest.mark.parametrize("key", ["plain-kéy-0123456789", "ключ-0123456789", "plain-key-0123456789\u200b", "\udcff"])
def test_non_ascii_key_is_rejected_without_error(ring: KeyRing, key: str) -> None:
    assert ring.resolve("29", key) is None


def test_empty_ring_resolves_nothing() -> None:
    assert KeyRing([]).resolve("29", PLAIN) is None


def test_hash_key_format() -> None:
    assert hash_key("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_key(SECRET) == HASHED
    assert hash_key("clé") == HASH_PREFIX + hashlib.sha256("clé".encode()).hexdigest()


def test_new_key_format() -> None:
    key, hashed = new_key()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", hashed)
    assert hashed == hash_key(key)


def test_new_keys_differ() -> None:
    assert len({new_key()[0] for _ in range(20)}) == 20


def test_new_key_hash_resolves_from_a_config() -> None:
    key, hashed = new_key()
    config = parse(f'[[sources]]\nid = "shop"\nsite_id = "29"\nkeys = ["{hashed}"]\n', env={})
    ring = KeyRing(config.sources)
    source = ring.resolve("29", key)
    assert source is not None
    assert source.id == "shop"
    assert ring.resolve("29", hashed) is None
    assert ring.resolve("30", key) is None


def test_new_plain_key_is_a_valid_config_key() -> None:
    key, _ = new_key()
    config = parse(f'[[sources]]\nid = "shop"\nsite_id = "29"\nkeys = ["{key}"]\n', env={})
    assert KeyRing(config.sources).resolve("29", key) is config.sources[0]


@pytest.mark.parametrize(
    "key", [PLAIN, SECRET, "app-key-0123456789", "no-such-key-0123456789", "p", "x" * 4096], ids=str.__len__
)
def test_resolve_does_the_same_work_whatever_the_key(ring: KeyRing, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time: the presented key is hashed to a fixed-size digest and compared with
    hmac.compare_digest against every key of the site, with no early exit on a match."""
    import trackpipe.auth

    compared: list[tuple[int, int]] = []
    real = trackpipe.auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(trackpipe.auth.hmac, "compare_digest", counting)
    ring.resolve("29", key)
    assert compared == [(32, 32)] * 3  # site 29 holds three keys: all three compared, digests only
