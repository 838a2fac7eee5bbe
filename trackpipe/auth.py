"""Source keys: hashing, generating, and resolving (site, key) to a source in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

import msgspec

from trackpipe.config import SourceConfig

HASH_PREFIX = "sha256:"


def hash_key(key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random source key and the hashed form to put in the config."""
    key = secrets.token_urlsafe(32)
    return key, hash_key(key)


def _digest(stored: str) -> bytes:
    """The sha256 digest a configured key (plain or `sha256:<hex>`) stands for."""
    if stored.startswith(HASH_PREFIX):
        return bytes.fromhex(stored.removeprefix(HASH_PREFIX))
    return hashlib.sha256(stored.encode()).digest()


class KeyEntry(msgspec.Struct, frozen=True):
    digest: bytes
    source: SourceConfig


class KeyRing:
    """Which source a presented key belongs to, per site.

    Keys are kept only as digests; a presented key is hashed and compared against every key of
    its site with `hmac.compare_digest`, so the time taken does not depend on how much matched.
    """

    def __init__(self, sources: Iterable[SourceConfig]) -> None:
        self._by_site: dict[str, list[KeyEntry]] = {}
        for source in sources:
            entries = self._by_site.setdefault(source.site_id, [])
            entries.extend(KeyEntry(_digest(k), source) for k in source.keys)

    def resolve(self, site_id: str | None, key: str | None) -> SourceConfig | None:
        if not site_id or not key:
            return None
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: SourceConfig | None = None
        for entry in self._by_site.get(site_id, ()):
            if hmac.compare_digest(entry.digest, presented):
                found = entry.source  # no early exit: same work whichever key matched
        return found
