"""The console's pages, one module per page: each has `ROUTES` (already behind sign-in) and `NAV`
(its menu entry, or None). The menu follows the order below."""

from __future__ import annotations

import importlib
from types import ModuleType

PAGE_NAMES = ["overview", "sources", "destinations", "dlq", "refused", "alerts"]


def _load() -> list[ModuleType]:
    modules = []
    for name in PAGE_NAMES:
        try:
            modules.append(importlib.import_module(f"console.pages.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"console.pages.{name}":
                raise
    return modules


PAGE_MODULES: list[ModuleType] = _load()
