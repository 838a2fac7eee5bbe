"""The Pixel Tracking API's query parser (pure: query string in, event out).

A pixel hit is `GET /events?tc_s=<site>&token=<key>&event_name=page_view&user[id]=1&...`: the event is
written in the query string in bracket notation, as the vendor's pixel page describes, and the answer is
a 1x1 transparent GIF (`GIF`, `GIF_HEADERS`). `event_from_query` turns the raw, still percent-encoded
query into the event as compact JSON, always an object.

Rules (docs/CONTRACT.md §2, "Pixel events", says the same for producers):

- Parameters are split on `&`; `+` is a space; names and values are percent-decoded (so `tc%5Fs` is
  `tc_s` and `user%5Bid%5D=1` is `user[id]=1`), then must be UTF-8. A malformed escape such as `%zz`
  is kept as written, as browsers do. Empty pairs (`&&`) are skipped; `a` alone is `a=""`.
- `name` sets a property; `name[key]` a property of an object; `name[0]` element 0 of a list;
  `name[]` appends to a list (at the end, so `a[]=x&a[]=y` is `["x", "y"]`, and
  `a[][id]=1&a[][id]=2` is two objects). A key made only of ASCII digits is always a list index.
  Nesting goes to any mix of these, at most `MAX_DEPTH` bracket groups deep.
- Lists are compacted in index order: `a[5]=x&a[2]=y` is `["y", "x"]`. An index (also one reached by
  `[]`) may be at most `MAX_INDEX`.
- `tc_s` (the site id) and `token` (the source key) are the request's credentials, not properties: they
  are taken out of the event. An empty one counts as absent (`None`).
- **Values are strings**, except properties that the vendor's events reference types as numbers or
  booleans (`NUMBER_PROPERTIES`, `BOOLEAN_PROPERTIES`), recognised by their own name at any depth
  (`value`, `items[0][quantity]`, `items[0][product][price]`): a number property whose value is a plain
  decimal (`-?digits[.digits]`, at most `MAX_NUMBER_DIGITS` digits) becomes a JSON number (an integer
  without a dot, else a float: `16.00` is `16.0`), a boolean property whose value is exactly `true` or
  `false` becomes a JSON boolean. Anything else stays the string it was (`value=abc`, `value=1e3`,
  `price=,5`), for the workers' type checks to report. List elements are never converted
  (`user[consent_categories][]=1` is `["1"]`), nor is anything else (`user[id]=12356` is `"12356"`).
- Refused with `PixelError` (the message names the parameter and the problem, never a value): a name
  that is empty or has malformed brackets (`a[b`, `a]b[`, `a[b]c`, `[a]`), nesting too deep, an index
  too large, a parameter used with two shapes (`a=1&a[b]=2`, `items[0]=x&items[0][id]=y`,
  `a[b]=1&a[0]=2`), the same value given twice (`a=1&a=2`, also `tc_s` or `token`: there is no
  first-wins or last-wins guess), bracket notation on `tc_s` or `token`, or bytes that are not UTF-8.

The caller (the edge) bounds the size of the raw query and of the event it returns; this module does
work proportional to the query's length and raises nothing but `PixelError`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec

MAX_DEPTH = 10
MAX_INDEX = 1000
MAX_NUMBER_DIGITS = 15  # every decimal of up to 15 significant digits survives a round trip via float

AUTH_PARAMETERS = frozenset({"tc_s", "token"})

# The properties typed `number`, `integer` or `float` in the vendor's events reference (standard,
# e-commerce and video events, items and products).
NUMBER_PROPERTIES = frozenset(
    {
        "value",
        "revenue",
        "price",
        "quantity",
        "discount",
        "discount_value",
        "tax_amount",
        "shipping_amount",
        "original_value",
        "original_revenue",
        "original_tax_amount",
        "returned_value",
        "returned_quantity",
        "cancelled_value",
        "cancelled_quantity",
        "list_position",
        "cursor_position",
        "total_length",
        "seek_position",
        "bitrate",
        "framerate",
        "sound",
        "pod_position",
        "pod_length",
        "ad_quartile",
    }
)
# The properties typed `boolean` there (video events).
BOOLEAN_PROPERTIES = frozenset({"full_episode", "livestream", "full_screen", "ad_enabled"})

_DECIMAL = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?")
_MAX_SHOWN = 80  # a parameter name in an error is cut here

# A transparent 1x1 GIF89a: one-bit palette (black, white), a graphic control extension marking index 0
# transparent, one LZW-coded pixel.
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00"
    b"\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00"
    b"\x02\x02D\x01\x00"
    b";"
)
GIF_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(GIF)).encode()),
    # A pixel that a browser or proxy serves from cache records nothing.
    (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
]


class PixelError(Exception):
    """A query that does not describe an event; the message names the parameter and the problem."""


class PixelQuery(msgspec.Struct):
    site_id: str | None
    token: str | None
    event: bytes  # compact JSON, always an object


class _List:
    """A list being built: elements by index, compacted in index order at the end."""

    __slots__ = ("end", "items")

    def __init__(self) -> None:
        self.items: dict[int, Any] = {}
        self.end = 0  # one past the highest index so far: where `[]` appends

    def put(self, index: int, value: Any) -> None:
        self.items[index] = value
        self.end = max(self.end, index + 1)


_PUSH = None  # the segment of `[]`
_Segment = str | int | None


def _shown(name: str) -> str:
    return name if len(name) <= _MAX_SHOWN else name[:_MAX_SHOWN] + "..."


def _decode(raw: bytes, what: str) -> str:
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PixelError(f"{what} is not valid UTF-8 after percent-decoding (byte {exc.start})") from None


def _index(text: str, name: str) -> int:
    digits = text.lstrip("0") or "0"
    # Checked on the digits before int(): a huge index costs nothing and never reaches int's limits.
    if len(digits) > len(str(MAX_INDEX)) or int(digits) > MAX_INDEX:
        raise PixelError(f"parameter {_shown(name)}: list index {_shown(text)} is over {MAX_INDEX}")
    return int(digits)


def _segments(name: str) -> list[_Segment]:
    """`items[0][product][]` -> ["items", 0, "product", None]."""
    if not name:
        raise PixelError("a parameter has an empty name")
    open_at = name.find("[")
    base = name if open_at < 0 else name[:open_at]
    if not base:
        raise PixelError(f"parameter {_shown(name)}: empty name before '['")
    if "]" in base:
        raise PixelError(f"parameter {_shown(name)}: ']' without a matching '['")
    out: list[_Segment] = [base]
    pos = open_at
    while 0 <= pos < len(name):
        if name[pos] != "[":
            raise PixelError(f"parameter {_shown(name)}: unexpected text after ']' (only '[...]' may follow)")
        close = name.find("]", pos + 1)
        if close < 0:
            raise PixelError(f"parameter {_shown(name)}: '[' without a matching ']'")
        key = name[pos + 1 : close]
        if "[" in key:
            raise PixelError(f"parameter {_shown(name)}: '[' inside brackets")
        if len(out) > MAX_DEPTH:
            raise PixelError(f"parameter {_shown(name)}: nested more than {MAX_DEPTH} levels deep")
        if key == "":
            out.append(_PUSH)
        elif key.isascii() and key.isdigit():
            out.append(_index(key, name))
        else:
            out.append(key)
        pos = close + 1
    return out


def _describe(segments: list[_Segment]) -> str:
    first, *rest = segments
    return _shown(str(first) + "".join("[]" if s is None else f"[{s}]" for s in rest))


def _shape(node: Any) -> str:
    return "a list" if isinstance(node, _List) else "an object" if isinstance(node, dict) else "a value"


def _insert(root: dict[str, Any], segments: list[_Segment], value: str, name: str) -> None:
    node: dict[str, Any] | _List = root
    last = len(segments) - 1
    for depth, segment in enumerate(segments):
        here = _describe(segments[: depth + 1])
        key: str | int
        if isinstance(node, _List):
            # Unreachable while shapes are checked below before descending; kept as a guard.
            if isinstance(segment, str):
                raise PixelError(f"parameter {_shown(name)}: {_describe(segments[:depth])} is a list")
            key = node.end if segment is None else segment
            if key > MAX_INDEX:
                raise PixelError(
                    f"parameter {_shown(name)}: {_describe(segments[:depth])} would have more than "
                    f"{MAX_INDEX + 1} elements"
                )
            existing = node.items.get(key)
        else:
            if not isinstance(segment, str):
                raise PixelError(f"parameter {_shown(name)}: {_describe(segments[:depth])} is an object")
            key = segment
            existing = node.get(key)
        if depth == last:
            if existing is None:
                _put(node, key, value)
                return
            if isinstance(existing, str):
                raise PixelError(f"parameter {here} is given more than once")
            raise PixelError(
                f"parameter {_shown(name)}: {here} is already {_shape(existing)} (set by another parameter), "
                "here a value"
            )
        wanted = dict if isinstance(segments[depth + 1], str) else _List
        if existing is None:
            existing = wanted()
            _put(node, key, existing)
        elif not isinstance(existing, wanted):
            raise PixelError(
                f"parameter {_shown(name)}: {here} is already {_shape(existing)} (set by another parameter), "
                f"here {'an object' if wanted is dict else 'a list'}"
            )
        node = existing


def _put(node: dict[str, Any] | _List, key: str | int, child: Any) -> None:
    if isinstance(node, _List):
        node.put(int(key), child)
    else:
        node[str(key)] = child


def _typed(name: str, value: str) -> Any:
    if name in NUMBER_PROPERTIES:
        match = _DECIMAL.fullmatch(value)
        if match and len(match[1]) + len(match[2] or "") <= MAX_NUMBER_DIGITS:
            return float(value) if match[2] is not None else int(value)
    elif name in BOOLEAN_PROPERTIES and value in ("true", "false"):
        return value == "true"
    return value


def _finish(node: Any, name: str | None) -> Any:
    if isinstance(node, str):
        return node if name is None else _typed(name, node)
    if isinstance(node, _List):
        return [_finish(node.items[i], None) for i in sorted(node.items)]
    return {key: _finish(child, key) for key, child in node.items()}


def event_from_query(raw_query: bytes) -> PixelQuery:
    """The event, site id and key of a pixel hit's raw (percent-encoded) query string."""
    root: dict[str, Any] = {}
    auth: dict[str, str] = {}
    for position, pair in enumerate(raw_query.split(b"&"), start=1):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        name = _decode(raw_name, f"the name of parameter {position}")
        value = _decode(raw_value, f"the value of parameter {_shown(name) or position}")
        segments = _segments(name)
        if segments[0] in AUTH_PARAMETERS:
            if len(segments) > 1:
                raise PixelError(f"parameter {segments[0]} must be a plain value, without brackets")
            if segments[0] in auth:
                raise PixelError(f"parameter {segments[0]} is given more than once")
            auth[str(segments[0])] = value
            continue
        _insert(root, segments, value, name)
    try:
        event = msgspec.json.encode(_finish(root, None))
    except (msgspec.EncodeError, RecursionError, OverflowError) as exc:  # bounded depth: not expected
        raise PixelError(f"the query does not make an event: {exc}") from None
    return PixelQuery(site_id=auth.get("tc_s") or None, token=auth.get("token") or None, event=event)
