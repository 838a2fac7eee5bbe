"""The producer library: send v2 events to a trackpipe edge, or to the vendor's hosted HTTP Tracking
API, in gzip'd batches from a background sender, with retries and back-off, a bounded queue and an
optional disk spool. Imports only the standard library, httpx and msgspec.

    from trackpipe.client import Client

    with Client("http://127.0.0.1:8080", site_id="29", key="...") as client:
        client.track("page_view", {"page_type": "home"}, user={"consistent_anonymous_id": "a1"})
"""

from trackpipe.client.aio import AsyncClient
from trackpipe.client.config import ClientConfig, ClientStats, Overflow
from trackpipe.client.events import MAX_BATCH_BYTES, MAX_EVENT_BYTES, EventTooLarge
from trackpipe.client.spool import SpoolLocked
from trackpipe.client.sync import Client

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_EVENT_BYTES",
    "AsyncClient",
    "Client",
    "ClientConfig",
    "ClientStats",
    "EventTooLarge",
    "Overflow",
    "SpoolLocked",
]
