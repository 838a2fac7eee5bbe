"""The settings of each destination type, as the config holds them (a `[[destinations]]` table, tagged
by `type`). They are configuration shapes, so they live in the core; the code that sends lives in
`destinations/`, one module per type (`destinations.TYPES`, which a test keeps in step with
`DESTINATION_SETTINGS`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from trackpipe.types import DestinationBase, PositiveFloat, PositiveInt


class WebhookDestination(DestinationBase, kw_only=True, tag_field="type", tag="webhook"):
    url: str
    secret: str | None = None
    connect_timeout_seconds: PositiveFloat = 2.0
    read_timeout_seconds: PositiveFloat = 10.0
    batch_size: PositiveInt = 500

    def problems(self, where: str) -> list[str]:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return [f"{where}.url: {self.url!r} is not an http:// or https:// URL"]
        return []


class FileDestination(DestinationBase, kw_only=True, tag_field="type", tag="file"):
    path: str

    def problems(self, where: str) -> list[str]:
        if not self.path.strip():
            return [f"{where}.path: cannot be empty"]
        return []


# config `type` -> its settings
DESTINATION_SETTINGS: dict[str, type[DestinationBase]] = {"webhook": WebhookDestination, "file": FileDestination}
