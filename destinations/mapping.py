"""Reshaping an event for the `webhook` and `file` destinations (pure): the config's `mapping` table.

Applied in this order: `drop` (remove paths), `rename` (move a value to a new path), `set` (a constant
at a path, creating the objects on the way), `flatten` (nested objects become one level, their keys
joined by `flatten_separator`, and `-` in keys becomes `_`, as the vendor's webhook does). Paths are
dotted; `items[].id` means the `id` of every element of the list at `items`. A path that is not in the
event is left alone (nothing to drop or rename); `set` replaces a non-object found on its way.
"""

from __future__ import annotations

from typing import Any

from trackpipe.destination_settings import Mapping

__all__ = ["Mapping", "apply", "flatten"]


def _copy(value: Any) -> Any:
    """A copy of the containers (the leaves are immutable JSON values): senders must not change the event."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _split(path: str) -> tuple[list[str], str | None]:
    """`a.b[].c.d` -> (["a", "b"], "c.d"): the keys up to the first list, and the rest inside each element."""
    keys: list[str] = []
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part.endswith("[]"):
            keys.append(part[:-2])
            return keys, ".".join(parts[i + 1 :]) or None
        keys.append(part)
    return keys, None


def _containers(event: dict[str, Any], path: str) -> list[tuple[dict[str, Any], str]]:
    """Every (object, key) the path names, through the lists its `[]` parts go into."""
    keys, rest = _split(path)
    node: Any = event
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return []
    if rest is None:
        return [(node, keys[-1])]
    found: list[tuple[dict[str, Any], str]] = []
    items = node.get(keys[-1])
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                found += _containers(item, rest)
    return found


def _lists(event: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """The objects a `...[]` prefix reaches: every element of its lists."""
    if not prefix:
        return [event]
    return [item for container, key in _containers(event, prefix[:-2]) for item in _elements(container.get(key))]


def _elements(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _place(node: dict[str, Any], path: str, value: Any) -> None:
    """Put `value` at the dotted path (no lists), creating or replacing what is on the way."""
    keys = path.split(".")
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


def _drop(event: dict[str, Any], path: str) -> None:
    for container, key in _containers(event, path):
        container.pop(key, None)


def _rename(event: dict[str, Any], old: str, new: str) -> None:
    # Config checks make both paths share their list prefix: the move happens inside each element.
    at = old.rfind("[]")
    prefix = old[: at + 2] if at >= 0 else ""
    inner_old = old[len(prefix) :].lstrip(".")
    inner_new = new[len(prefix) :].lstrip(".")
    for node in _lists(event, prefix):
        moved = [(container, key) for container, key in _containers(node, inner_old) if key in container]
        for container, key in moved:
            _place(node, inner_new, container.pop(key))


def _set(event: dict[str, Any], path: str, value: Any) -> None:
    at = path.rfind("[]")
    prefix = path[: at + 2] if at >= 0 else ""
    inner = path[len(prefix) :].lstrip(".")
    for node in _lists(event, prefix):
        _place(node, inner, _copy(value))


def flatten(value: Any, separator: str = "_") -> Any:
    """Nested objects to one level: {"a": {"b-c": 1}} -> {"a_b_c": 1}; objects inside lists are
    flattened on their own, lists stay lists."""
    if isinstance(value, list):
        return [flatten(v, separator) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, child in node.items():
            name = prefix + str(key).replace("-", "_")
            if isinstance(child, dict) and child:
                walk(child, name + separator)
            else:
                out[name] = flatten(child, separator)

    walk(value, "")
    return out


def apply(mapping: Mapping, event: dict[str, Any]) -> dict[str, Any]:
    """The event as the destination gets it; `event` itself is left unchanged."""
    shaped: dict[str, Any] = _copy(event)
    for path in mapping.drop:
        _drop(shaped, path)
    for old, new in mapping.rename.items():
        _rename(shaped, old, new)
    for path, value in mapping.set_.items():
        _set(shaped, path, value)
    if mapping.flatten:
        shaped = flatten(shaped, mapping.flatten_separator)
    return shaped
