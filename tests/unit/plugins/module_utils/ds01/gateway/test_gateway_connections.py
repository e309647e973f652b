"""The gateway's connection handling against a stand-in daemon: timeouts, the per-uid cap, calm
accept errors, streams that end cleanly, and chunked bodies passed through byte for byte.

Each test runs a real Gateway (its own accept loop, real Unix sockets) in front of a small asyncio
Unix-socket server that plays the daemon, with timeouts of a fraction of a second.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import logging
import socket
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import http as ghttp
from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import listener, server

GUARD_S = 20.0  # a deadlock guard only: every wait below ends long before it when the code works
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A daemon that answers every request with 200 {} on a kept-alive connection."""
    try:
        while await ghttp.read_head(reader):
            writer.write(OK)
            await writer.drain()
    except (ConnectionError, ghttp.HttpError):
        pass
    writer.close()


def _scenario(tmp_path, daemon: Callable, body: Callable, **gateway_kw: Any) -> Any:
    """Run ``body(gateway, socket_path)`` with a gateway in front of the stand-in ``daemon``."""

    async def main() -> Any:
        up_path, gw_path = str(tmp_path / "daemon.sock"), str(tmp_path / "gw.sock")
        daemon_server = await asyncio.start_unix_server(daemon, path=up_path)
        gw = server.Gateway(
            str(tmp_path / "no-config.yaml"),
            listen=gw_path,
            upstream=up_path,
            socket_group="root",
            event_log=lambda *a, **k: None,
            **gateway_kw,
        )
        await gw.start()
        try:
            return await asyncio.wait_for(body(gw, gw_path), GUARD_S)
        finally:
            gw.server.close()
            daemon_server.close()

    return asyncio.run(main())


async def _request(path: str, data: bytes = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n") -> tuple:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    parsed = ghttp.parse_response_head(head)
    return head + await reader.readexactly(int(parsed.get("Content-Length") or 0))


# ---------------------------------------------------------------------------------------------
# timeouts


def test_a_trickled_head_is_cut_off_with_408(tmp_path):
    async def body(gw, path):
        reader, writer = await _request(path, b"GET /_ping HTTP/1.1\r\n")

        async def trickle():
            try:
                while True:  # one byte at a time, much faster than the idle timeout
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.02)
            except ConnectionError:
                pass

        trickler = asyncio.ensure_future(trickle())
        answer = await reader.read()  # until the gateway closes
        trickler.cancel()
        return answer

    answer = _scenario(tmp_path, _answer_ok, body, head_timeout_s=0.3, idle_timeout_s=10)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"did not arrive whole within 0.3 seconds" in answer


def test_idle_connections_are_closed_quietly(tmp_path):
    async def body(gw, path):
        reader, _writer = await _request(path)
        first = await _response(reader)
        after_idle = await reader.read()  # kept alive, then closed by the gateway
        silent_reader, _w = await asyncio.open_unix_connection(path)  # never sends a byte
        return first, after_idle, await silent_reader.read()

    first, after_idle, silent = _scenario(tmp_path, _answer_ok, body, head_timeout_s=5, idle_timeout_s=0.2)
    assert first.endswith(b"{}") and after_idle == b"" and silent == b""


def test_read_head_timeouts():
    async def main():
        quiet = asyncio.StreamReader()
        assert await ghttp.read_head(quiet, idle_timeout_s=0.05, head_timeout_s=5) is None
        partial = asyncio.StreamReader()
        partial.feed_data(b"GET / HTTP/1.1\r\n")
        with pytest.raises(ghttp.HttpError) as exc:
            await ghttp.read_head(partial, idle_timeout_s=5, head_timeout_s=0.05)
        whole = asyncio.StreamReader()
        whole.feed_data(b"GET / HTTP/1.1\r\n\r\nrest")
        return exc.value.status, await ghttp.read_head(whole, 5, 5)

    assert asyncio.run(main()) == (408, b"GET / HTTP/1.1\r\n\r\n")


# ---------------------------------------------------------------------------------------------
# the per-uid cap


@pytest.mark.parametrize(
    ("limit", "exempt", "entries", "admitted"),
    [
        (2, (0,), [1000, 1000, 1000, 1001], [True, True, False, True]),
        (2, (0,), [0, 0, 0], [True, True, True]),  # root is exempt
        (None, (0,), [7] * 5, [True] * 5),
    ],
)
def test_connection_cap_counts_per_uid(limit, exempt, entries, admitted):
    cap = listener.ConnectionCap(limit, exempt)
    assert [cap.enter(uid) for uid in entries] == admitted
    cap.leave(entries[0])
    assert cap.enter(entries[0])


def test_connections_over_the_cap_get_one_429_sentence(tmp_path):
    async def body(gw, path):
        gw.cap.exempt = frozenset()  # the test runs as root: count root like any user here
        held = []
        for _i in range(2):
            reader, writer = await _request(path)
            assert (await _response(reader)).endswith(b"{}")
            held.append((reader, writer))
        over, _w = await _request(path)
        refusal = await over.read()
        held[0][1].close()
        for _i in range(200):  # the slot frees once the gateway has seen the close
            reader, writer = await _request(path)
            again = await reader.read(12)
            if again.startswith(b"HTTP/1.1 200"):
                return refusal, again, gw.server.refused
            await asyncio.sleep(0.02)
        return refusal, b"never admitted again", gw.server.refused

    refusal, again, refused = _scenario(tmp_path, _answer_ok, body, max_connections_per_uid=2)
    head, _sep, payload = refusal.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests") and b"Connection: close" in head
    assert b"you already have 2 connections open to the Docker socket" in payload
    assert again.startswith(b"HTTP/1.1 200") and refused >= 1


def test_root_is_not_capped(tmp_path):
    async def body(gw, path):
        held = [await _request(path) for _i in range(4)]
        return [await _response(reader) for reader, _w in held]

    answers = _scenario(tmp_path, _answer_ok, body, max_connections_per_uid=1)
    assert all(a.endswith(b"{}") for a in answers)


# ---------------------------------------------------------------------------------------------
# accept errors


class _Exhausted:
    """A listening socket whose accept() fails with the given errnos first (descriptors run out)."""

    def __init__(self, sock: socket.socket, errnos: list) -> None:
        self.sock = sock
        self.errnos = list(errnos)

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def accept(self):
        if self.errnos:
            code = self.errnos.pop(0)
            raise OSError(code, "simulated " + errno.errorcode[code])
        return self.sock.accept()

    def close(self) -> None:
        self.sock.close()


def test_accept_failures_log_one_line_per_cause_and_service_resumes(tmp_path, caplog):
    path = str(tmp_path / "l.sock")

    async def handler(conn, cred):
        conn.sendall(b"served uid %d" % cred.uid)
        conn.close()

    async def main():
        flaky = _Exhausted(listener.listen(path), [errno.EMFILE] * 40 + [errno.ENFILE] * 40)
        lst = listener.Listener(flaky, handler, listener.ConnectionCap(None), retry_s=0.005, log_every_s=60)
        lst.start()
        reader, _w = await asyncio.open_unix_connection(path)
        try:
            return await asyncio.wait_for(reader.read(), GUARD_S), lst.accept_failures
        finally:
            lst.close()

    with caplog.at_level(logging.DEBUG):
        served, failures = asyncio.run(main())
    assert served == b"served uid 0" and failures == 80
    lines = [r for r in caplog.records if "accept() failed" in r.getMessage()]
    assert [("EMFILE" in r.getMessage(), "ENFILE" in r.getMessage()) for r in lines] == [(True, False), (False, True)]
    assert all(r.exc_info is None for r in caplog.records)  # no tracebacks


def test_rate_limited_log_counts_what_it_held_back(caplog):
    now = [0.0]
    log = listener.RateLimitedLog(logging.getLogger("t"), every_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="t"):
        logged = []
        for t, key in [(0, "a"), (1, "a"), (2, "b"), (5, "a"), (10.5, "a"), (11, "b"), (12.5, "b")]:
            now[0] = t
            logged.append(log.error(key, "failed %s", key))
    assert logged == [True, False, True, False, True, False, True]
    assert [r.getMessage() for r in caplog.records] == [
        "failed a",
        "failed b",
        "failed a (2 more since the last report)",
        "failed b (1 more since the last report)",
    ]


# ---------------------------------------------------------------------------------------------
# streams


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("docker", timeout=GUARD_S)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(GUARD_S)
        self.sock.connect(self.path)


def _read_with_http_client(path: str) -> tuple:
    """(status, body or the IncompleteRead's partial bytes, whether the read was incomplete)."""
    conn = _UnixHTTPConnection(path)
    try:
        conn.request("GET", "/v1.41/containers/c/logs?follow=1&stdout=1")
        response = conn.getresponse()
        try:
            return response.status, response.read(), False
        except http.client.IncompleteRead as exc:
            return response.status, exc.partial, True
    finally:
        conn.close()


def _dying_daemon(head: bytes, body: bytes) -> Callable:
    async def daemon(reader, writer):
        await ghttp.read_head(reader)
        writer.write(head + body)
        await writer.drain()
        writer.transport.abort()  # the daemon dies mid-response

    return daemon


CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "body", "partial"),
    [
        (CHUNKED, b"9\r\nline one\n\r\n9\r\nline two\n\r\n", b"line one\nline two\n"),
        (CHUNKED, b"9\r\nline one\n\r\n20\r\nhalf a chu", b"line one\n"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"ten bytes.", b"ten bytes."),
    ],
    ids=["chunked-between-chunks", "chunked-inside-a-chunk", "content-length"],
)
def test_a_daemon_dying_mid_stream_closes_the_client_connection(tmp_path, head, body, partial):
    async def client(gw, path):
        return await asyncio.get_running_loop().run_in_executor(None, _read_with_http_client, path)

    status, got, incomplete = _scenario(tmp_path, _dying_daemon(head, body), client)
    assert status == 200 and incomplete
    assert got.startswith(partial[:9]) and partial.startswith(got)  # what came, unchanged
    assert b"ds01 gateway" not in got and b"message" not in got


def test_a_daemon_dying_before_answering_is_a_503_sentence(tmp_path):
    async def daemon(reader, writer):
        await ghttp.read_head(reader)
        writer.transport.abort()

    async def client(gw, path):
        return await asyncio.get_running_loop().run_in_executor(None, _read_with_http_client, path)

    status, got, incomplete = _scenario(tmp_path, daemon, client)
    assert status == 503 and not incomplete
    assert b"Nothing was changed; try again" in got


def test_chunked_streams_pass_through_unchanged_and_promptly(tmp_path):
    first = b"7;name=value\r\nline 1\n\r\n"
    rest = b"7\r\nline 2\n\r\n0\r\nX-Trailer: t\r\n\r\n"
    seen_first = None

    async def daemon(reader, writer):
        await ghttp.read_head(reader)
        writer.write(CHUNKED + first)
        await writer.drain()
        await seen_first.wait()  # nothing more until the client has the first line
        writer.write(rest)
        await writer.drain()
        await _answer_ok(reader, writer)  # the same connection serves the next request

    async def body(gw, path):
        nonlocal seen_first
        seen_first = asyncio.Event()
        reader, writer = await _request(path, b"GET /v1.41/containers/c/logs?follow=1 HTTP/1.1\r\nHost: d\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        got = await reader.readexactly(len(first))
        seen_first.set()
        got += await reader.readexactly(len(rest))
        writer.write(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        return head, got, await _response(reader)

    head, got, second = _scenario(tmp_path, daemon, body)
    assert b"Transfer-Encoding: chunked" in head
    assert got == first + rest
    assert second.endswith(b"{}")


# ---------------------------------------------------------------------------------------------
# the chunked copier: same bytes out, same grammar as iter_body


def _encode(chunks: list, trailers: list) -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c, ext in chunks)
    return out + b"0\r\n" + b"".join(b"%s: %s\r\n" % t for t in trailers) + b"\r\n"


def _copy(data: bytes, cuts: list) -> tuple:
    copier = ghttp.ChunkedCopy(error_status=502)
    out, start = [], 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        out.append(bytes(copier.feed(data[start:cut])))
        start = cut
    return b"".join(out), copier.done, copier.excess


async def _iter_body_accepts(data: bytes) -> bool:
    reader = asyncio.StreamReader(limit=ghttp.MAX_HEAD_BYTES)
    reader.feed_data(data)
    reader.feed_eof()
    try:
        async for _piece in ghttp.iter_body(reader, ghttp.Framing("chunked")):
            pass
    except ghttp.HttpError:
        return False
    return True


CHUNKS = st.lists(
    st.tuples(st.binary(min_size=1, max_size=40), st.sampled_from([b"", b";a", b";a=b", b";x=1;y"])), max_size=6
)
TRAILERS = st.lists(st.tuples(st.sampled_from([b"X-T", b"Y"]), st.sampled_from([b"1", b"v w"])), max_size=2)


@settings(max_examples=300, deadline=None)
@given(CHUNKS, TRAILERS, st.lists(st.integers(0, 400), max_size=8), st.binary(max_size=5))
def test_chunked_copy_hands_back_exactly_the_message(chunks, trailers, cuts, extra):
    message = _encode(chunks, trailers)
    out, done, excess = _copy(message + extra, cuts)
    assert (out, done, excess) == (message, True, extra)


@settings(max_examples=400, deadline=None)
@given(CHUNKS, TRAILERS, st.integers(0, 300), st.binary(min_size=1, max_size=3), st.integers(0, 3))
def test_chunked_copy_accepts_what_iter_body_accepts(chunks, trailers, at, insert, drop):
    message = _encode(chunks, trailers)
    at = min(at, len(message))
    mutated = message[:at] + insert + message[at + drop :]
    expected = asyncio.run(_iter_body_accepts(mutated))
    try:
        _out, done, _excess = _copy(mutated, [at, at + 1])
    except ghttp.HttpError:
        done = False
    assert done == expected
