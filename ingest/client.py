"""Who sent a request: the client's address and user agent, and what a source's `ip_mode` leaves of them.

Pure functions (strings in, strings out). The address is the TCP peer's, unless the peer is one of
`edge.trusted_proxies`: then the `Forwarded` (RFC 7239, `for=`) or `X-Forwarded-For` chain is walked
from the right, skipping hops that are trusted proxies themselves; the first other hop is the client.
Headers from anyone else are ignored (anyone can write them), and so is a chain that cannot be read
(the peer is used then).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

import msgspec

IpMode = Literal["keep", "anonymize", "drop"]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

USER_AGENT_MAX = 512  # characters kept of a User-Agent (real ones are ~150; the rest is padding or abuse)
_IPV4_KEEP = ipaddress.IPv4Network("0.0.0.0/24").netmask  # anonymize: the last octet zeroed
_IPV6_KEEP = ipaddress.IPv6Network("::/48").netmask  # anonymize: the last 80 bits zeroed


def parse_address(text: str) -> Address | None:
    """An IP address, with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, dual-stack sockets) as IPv4."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id:  # fe80::1%eth0: the zone means nothing off this machine
            return ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
    return address


def anonymize(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv4Address(int(address) & int(_IPV4_KEEP))
    return ipaddress.IPv6Address(int(address) & int(_IPV6_KEEP))


def apply_ip_mode(text: str | None, mode: IpMode) -> str | None:
    """What a source keeps of an address: itself (keep), its network part (anonymize) or nothing (drop).
    Anything that is not an IP address is kept as is under keep and dropped otherwise."""
    if text is None or mode == "drop":
        return None
    address = parse_address(text)
    if mode == "keep":
        return text if address is None else str(address)
    return None if address is None else str(anonymize(address))


class TrustedProxies:
    """`edge.trusted_proxies`, parsed once (config checks already refused anything that is not a CIDR)."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: Address) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)


def _hop_of_xff(item: str) -> Address | None:
    """One X-Forwarded-For entry: an address, `a.b.c.d:port` or `[v6]:port`."""
    item = item.strip()
    if item.startswith("["):
        host, bracket, _ = item[1:].partition("]")
        return parse_address(host) if bracket else None
    if item.count(":") == 1:  # IPv4 with a port; bare IPv6 has two colons or more
        item = item.split(":", 1)[0]
    return parse_address(item)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _hop_of_forwarded(element: str) -> Address | None:
    """The `for=` node of one Forwarded element; None when missing, `unknown`, obfuscated or malformed."""
    node = None
    for pair in _split_outside_quotes(element, ";"):
        name, equals, value = pair.strip().partition("=")
        if equals and name.strip().lower() == "for":
            node = value.strip()
    if node is None:
        return None
    if len(node) >= 2 and node[0] == node[-1] == '"':
        node = node[1:-1].replace("\\", "")
    return _hop_of_xff(node)


def forwarded_chain(forwarded: str | None, x_forwarded_for: str | None) -> list[Address] | None:
    """The hops a proxy reports, leftmost (the original client) first; None when absent or unreadable.
    `Forwarded` (the standard) wins over `X-Forwarded-For` when a proxy sent both."""
    if forwarded is not None:
        hops = [_hop_of_forwarded(e) for e in _split_outside_quotes(forwarded, ",")]
    elif x_forwarded_for is not None:
        hops = [_hop_of_xff(e) for e in x_forwarded_for.split(",")]
    else:
        return None
    if not hops or any(h is None for h in hops):
        return None
    return hops  # type: ignore[return-value]  (no None left)


def client_address(
    peer: str | None, forwarded: str | None, x_forwarded_for: str | None, trusted: TrustedProxies
) -> str | None:
    """The client's address as the edge believes it (see the module's docstring); None when unknown."""
    if not trusted or (forwarded is None and x_forwarded_for is None):
        return peer or None
    peer_address = parse_address(peer) if peer else None
    if peer_address is None or peer_address not in trusted:
        return peer or None
    chain = forwarded_chain(forwarded, x_forwarded_for)
    if chain is None:
        return str(peer_address)
    for hop in reversed(chain):
        if hop not in trusted:
            return str(hop)
    return str(chain[0])  # every hop a trusted proxy: the leftmost is the closest to the client


def user_agent(raw: bytes | None) -> str | None:
    if not raw:
        return None
    return raw[: USER_AGENT_MAX * 4].decode("utf-8", "replace")[:USER_AGENT_MAX]


# -- an address the event carries itself ----------------------------------------------------------

_top = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encode = msgspec.json.Encoder().encode
_PATHS = (("context", "device"), ("device",))  # v2's context.device.ip, v1's root device.ip


def _rewritten_ip(value: object, mode: IpMode) -> tuple[bool, object]:
    """(keep the key?, its new value) for an `ip` the event carries."""
    if mode == "drop" or not isinstance(value, str):
        return False, None
    kept = apply_ip_mode(value, mode)
    return kept is not None, kept


def _rewrite(obj: dict[str, msgspec.Raw], path: tuple[str, ...], mode: IpMode) -> bool:
    """Rewrites `<path>.ip` inside obj (decoding only the objects on the way); True when it changed."""
    raw = obj.get(path[0])
    if raw is None or bytes(raw).lstrip()[:1] != b"{":
        return False
    inner = _top.decode(raw)
    if len(path) > 1:
        changed = _rewrite(inner, path[1:], mode)
    elif "ip" in inner:
        carried = msgspec.json.decode(inner["ip"])
        keep, value = _rewritten_ip(carried, mode)
        if keep and value == carried:
            return False  # already anonymized
        if keep:
            inner["ip"] = msgspec.Raw(_encode(value))
        else:
            del inner["ip"]
        changed = True
    else:
        return False
    if changed:
        obj[path[0]] = msgspec.Raw(_encode(inner))
    return changed


def scrub_event_ip(event: bytes, mode: IpMode) -> bytes:
    """The event with the address it carries (`context.device.ip`, root `device.ip`) anonymized or removed
    per the source's mode; every other byte of the JSON is kept as it was. `keep` never calls this."""
    if b'"ip"' not in event and b"\\" not in event:  # no such key, not even spelt with escapes
        return event
    try:
        top = _top.decode(event)
        changed = False
        for path in _PATHS:
            changed |= _rewrite(top, path, mode)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return event  # checked JSON before; should it fail here anyway, there is no object to scrub
    return _encode(top) if changed else event
