"""Destination types, one module each. Adding a type is adding a module and a line in TYPES."""

from __future__ import annotations

from types import ModuleType

from destinations import file, webhook
from destinations.base import Sender
from trackpipe.types import DestinationBase

# config `type` -> module with `Settings` (a tagged DestinationBase) and `open_sender(settings)`.
TYPES: dict[str, ModuleType] = {"webhook": webhook, "file": file}


def open_sender(settings: DestinationBase) -> Sender:
    """The sender of a destination's type, for its settings."""
    for module in TYPES.values():
        if isinstance(settings, module.Settings):
            return module.open_sender(settings)
    raise TypeError(f"no destination type has settings {type(settings).__name__}")
