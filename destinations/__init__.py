"""Destination types, one module each. Adding a type is adding a module and a line in TYPES."""

from __future__ import annotations

from types import ModuleType

from destinations import file, ga4, meta_capi, snapchat_capi, tiktok, webhook
from destinations.base import Sender
from trackpipe.types import DestinationBase

# config `type` -> module with `Settings` (a tagged DestinationBase) and `open_sender(settings)`.
TYPES: dict[str, ModuleType] = {
    "ga4": ga4,
    "webhook": webhook,
    "file": file,
    "meta_capi": meta_capi,
    "tiktok": tiktok,
    "snapchat_capi": snapchat_capi,
}


def open_sender(settings: DestinationBase) -> Sender:
    """The sender of a destination's type, for its settings."""
    for module in TYPES.values():
        if isinstance(settings, module.Settings):
            return module.open_sender(settings)
    raise TypeError(f"no destination type has settings {type(settings).__name__}")
