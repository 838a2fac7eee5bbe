"""A lean Redis connection for the edge's one write path: send a few commands, read the replies.

redis-py's asyncio client spends ~150 µs of CPU on a single LLEN and ~350 µs on the edge's
write transaction (pure-Python command packing, reply parsing and timeout bookkeeping), which
capped the edge at well under half of what uvicorn alone serves. Here hiredis packs and parses in C
and a write is one socket write plus reads. Everything else at the edge (health, backlog poll)
keeps using redis-py.

One exchange at a time per connection (the group committer never overlaps writes). After any
error or timeout the connection is dropped, since its state is unknown, and the next write
reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from trackpipe.connection import SentinelTarget, is_sentinel_url, parse_sentinel_url


class WireError(Exception):
    """The transaction failed or its outcome is unknown; nothing may be answered 200 for it."""


def pack(command: tuple[Any, ...]) -> bytes:
    """RESP for one command; hiredis takes str (str enums by value), bytes, int and float."""
    return hiredis.pack_command(command)


def first_error(replies: list[Any]) -> hiredis.ReplyError | None:
    """The first error reply, also inside nested replies (EXEC answers a list of replies)."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            return reply
        if isinstance(reply, list):
            nested = first_error(reply)
            if nested is not None:
                return nested
    return None


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """TLS as redis-py would do it for the same rediss:// URL (its ssl_* query options)."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path"))
    reqs = options.get("ssl_cert_reqs", "required")
    reqs = _CERT_REQS.get(reqs, reqs) if isinstance(reqs, str) else reqs
    if reqs == ssl.CERT_NONE:
        context.check_hostname = False
    context.verify_mode = reqs
    if options.get("ssl_check_hostname") is False:
        context.check_hostname = False
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password"))
    return context


async def master_address(target: SentinelTarget, timeout: float) -> tuple[str, int]:
    """The current primary of `target.service`, asking each sentinel in turn (the first that knows
    answers); WireError when none does, so the write is answered 503 like any other lost write."""
    problems: list[str] = []
    for host, port in target.sentinels:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(pack(("SENTINEL", "get-master-addr-by-name", target.service)))
                parser = hiredis.Reader()
                reply: Any = False
                while reply is False:
                    data = await reader.read(4096)
                    if not data:
                        raise ConnectionError("the sentinel closed the connection")
                    parser.feed(data)
                    reply = parser.gets()
        except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
            problems.append(f"{host}:{port}: {type(exc).__name__}")
            continue
        finally:
            if writer is not None:
                writer.close()
        if isinstance(reply, list) and len(reply) == 2:
            return reply[0].decode(), int(reply[1])
        problems.append(f"{host}:{port}: no primary known for {target.service!r}")
    raise WireError("no sentinel named a primary (" + "; ".join(problems) + ")")


class WireConnection:
    def __init__(self, url: str, *, connect_timeout: float = 2.0, timeout: float = 5.0) -> None:
        # A Sentinel URL: the primary's address is asked of the sentinels at every (re)connect.
        self._sentinel: SentinelTarget | None = None
        if is_sentinel_url(url):
            self._sentinel = parse_sentinel_url(url)
            target = self._sentinel
            self._options: dict[str, Any] = {"db": target.db, "username": target.username, "password": target.password}
        else:
            self._options = parse_url(url)
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        # Counts connections made; ingest.store's replica wait checks it did not change (WAITAOF
        # only waits for the writes of the connection it is sent on).
        self.generation = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        options = self._options
        if self._sentinel is not None:
            host, port = await master_address(self._sentinel, self._connect_timeout)
            options = {**options, "host": host, "port": port}
        kind = options.get("connection_class")
        async with asyncio.timeout(self._connect_timeout):
            if kind is UnixDomainSocketConnection:
                reader, writer = await asyncio.open_unix_connection(options["path"])
            else:
                context = tls_context(options) if kind is SSLConnection else None
                reader, writer = await asyncio.open_connection(
                    options.get("host", "localhost"), options.get("port", 6379), ssl=context
                )
        self._reader, self._writer = reader, writer
        self.generation += 1
        setup: list[tuple[Any, ...]] = []
        if options.get("password") is not None:
            user = options.get("username")
            setup.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if options.get("db"):
            setup.append(("SELECT", options["db"]))
        if setup:
            await self._exchange(setup)
        return reader, writer

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send the commands in one write; return one reply per command (errors as values)."""
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join(pack(c) for c in commands))
        parser = hiredis.Reader()
        replies: list[Any] = []
        async with asyncio.timeout(self._timeout):
            while len(replies) < len(commands):
                reply = parser.gets()
                if reply is False:
                    data = await self._reader.read(65536)
                    if not data:
                        raise ConnectionError("Redis closed the connection")
                    parser.feed(data)
                    continue
                replies.append(reply)
        error = first_error(replies)
        if error is not None:
            raise WireError(str(error))
        return replies

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send the commands pipelined; their replies, or WireError if any failed."""
        try:
            return await self._exchange(commands)
        except BaseException as exc:
            self.close()  # replies may still be in flight: this connection's state is unknown
            if isinstance(exc, WireError | OSError | TimeoutError | EOFError | hiredis.ProtocolError):
                raise WireError(f"{type(exc).__name__}: {exc}") from exc
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
