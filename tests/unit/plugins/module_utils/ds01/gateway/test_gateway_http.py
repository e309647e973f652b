"""The gateway's HTTP framing parser: every ambiguous form is a 400 before anything is forwarded."""

from __future__ import annotations

import asyncio

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import http


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=http.MAX_HEAD_BYTES)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def _run(coro):
    return asyncio.run(coro)


async def _parse_all(data: bytes, limit: int = 1 << 20) -> list:
    """Every (method, target, body) on one connection, the way the gateway reads pipelined requests."""
    reader = _reader(data)
    out = []
    while True:
        raw = await http.read_head(reader)
        if raw is None:
            return out
        head = http.parse_request_head(raw)
        body = await http.read_body(reader, http.request_framing(head), limit)
        out.append((head.method, head.target, body))


GOOD = [
    (b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n", [("GET", "/_ping", b"")]),
    (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}",
        [("POST", "/v1.41/containers/create", b"{}")],
    ),
    (
        b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
        [("POST", "/build", b"abcde")],
    ),
    (
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n",
        [("POST", "/x", b"0123456789")],
    ),
    # pipelined: each request is parsed (and so checked) on its own
    (
        b"GET /_ping HTTP/1.1\r\n\r\n"
        b"POST /containers/create HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /info HTTP/1.1\r\n\r\n",
        [("GET", "/_ping", b""), ("POST", "/containers/create", b"abc"), ("GET", "/info", b"")],
    ),
    (b"GET / HTTP/1.0\r\nContent-Length: 0\r\n\r\n", [("GET", "/", b"")]),
]


@pytest.mark.parametrize(("data", "expected"), GOOD)
def test_well_framed_requests_parse(data, expected):
    assert _run(_parse_all(data)) == expected


BAD = [
    ("both framings", b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("duplicate equal CL", b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("conflicting CL", b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc", 400),
    ("CL list", b"POST /c HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    ("signed CL", b"POST /c HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("hex CL", b"POST /c HTTP/1.1\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    ("obs-fold", b"POST /c HTTP/1.1\r\nContent-Length: 3\r\n X-Folded: yes\r\n\r\nabc", 400),
    ("space before colon", b"POST /c HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc", 400),
    ("TE gzip", b"POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE twice", b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE in 1.0", b"POST /c HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("bad chunk size", b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400),
    ("negative chunk", b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nab\r\n0\r\n\r\n", 400),
    ("chunk size space", b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nab\r\n0\r\n\r\n", 400),
    ("huge chunk size", b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\nab", 400),
    ("chunk overrun", b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", 400),
    ("truncated chunked", b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 400),
    ("truncated CL", b"POST /c HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 400),
    ("bare LF in head", b"GET /a HTTP/1.1\r\nX: a\nContent-Length: 1\r\n\r\n", 400),
    ("absolute-form target", b"GET http://docker/containers/json HTTP/1.1\r\n\r\n", 400),
    ("lower-case method", b"get / HTTP/1.1\r\n\r\n", 400),
    ("HTTP/2 line", b"GET / HTTP/2.0\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    ("too big", b"POST /c HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", 413),
    (
        "too big chunked",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n" + b"a" * 0x100001 + b"\r\n0\r\n\r\n",
        413,
    ),
]


@pytest.mark.parametrize(("name", "data", "status"), BAD, ids=[b[0] for b in BAD])
def test_ambiguous_or_oversize_framing_is_refused(name, data, status):
    with pytest.raises(http.HttpError) as info:
        _run(_parse_all(data, limit=1 << 20))
    assert info.value.status == status


def test_head_over_the_limit_is_431():
    data = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * (http.MAX_HEAD_BYTES + 10) + b"\r\n\r\n"
    with pytest.raises(http.HttpError) as info:
        _run(_parse_all(data))
    assert info.value.status == 431


def test_large_chunked_body_streams_in_bounded_pieces():
    size = 5 * 1024 * 1024
    data = b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % size + b"x" * size + b"\r\n0\r\n\r\n"

    async def pieces():
        reader = _reader(data)
        head = http.parse_request_head(await http.read_head(reader))
        return [len(p) async for p in http.iter_body(reader, http.request_framing(head))]

    sizes = _run(pieces())
    assert sum(sizes) == size
    assert max(sizes) <= http.PIECE


@pytest.mark.parametrize(
    ("head", "method", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET", http.Framing("length", 5)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", http.Framing("chunked")),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n", "POST", http.Framing("close")),
        (b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n", "POST", http.NO_BODY),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "POST", http.NO_BODY),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", http.NO_BODY),
    ],
)
def test_response_framing(head, method, expected):
    assert http.response_framing(http.parse_response_head(head), method) == expected


def test_rebuilt_head_carries_only_the_gateway_framing():
    head = http.parse_request_head(b"POST /x HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\nUser-Agent: t\r\n\r\n")
    head.remove("Content-Length")
    head.headers.append(("Content-Length", "10"))
    assert head.serialize_request() == b"POST /x HTTP/1.1\r\nHost: d\r\nUser-Agent: t\r\nContent-Length: 10\r\n\r\n"


def test_error_response_is_docker_shaped():
    raw = http.json_response(403, {"message": "NOT_OWNER: no"}, close=True)
    head, _sep, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden")
    assert b"Connection: close" in head
    assert body == b'{"message": "NOT_OWNER: no"}'
