"""The gateway's HTTP/1.1 framing, fuzzed against a second parser (h11).

Property, for requests (http.py as server) and responses (http.py reading the daemon, h11 as client):
whenever http.py accepts a message, h11 accepts it too, with the same start line, headers, body bytes
and the same end of message (what is left on the connection after it). Where h11 refuses, http.py
refuses. http.py may refuse more (bare LF, obs-fold, repeated Content-Length, lower-case methods...).

Deliberate exception: h11 refuses an HTTP/1.1 request without exactly one Host field (RFC 9112 §3.2).
That is not a framing question: the gateway decides nothing on Host and forwards the field lines it
parsed, and dockerd's Go server answers 400 to such a request itself. Those cases are compared
only where both parse (so the rest of the message is still checked).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import http

FUZZ = settings(
    max_examples=600,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMIT = 1 << 20

# -- building messages ----------------------------------------------------------------------------
# A message is valid except for the faults drawn for it (none for about a third of them), so that
# both outcomes are common and each malformation is met on its own as well as in pairs.

REQUEST_FAULTS = [
    "method", "target", "version", "sep", "host-missing", "host-twice", "bad-field", "odd-value", "obs-fold",
    "line-end", "content-length", "transfer-encoding", "te-and-cl", "chunk-size", "chunk-ext", "trailer",
]  # fmt: skip
RESPONSE_FAULTS = [
    "version", "status", "reason", "bad-field", "odd-value", "obs-fold", "line-end",
    "content-length", "transfer-encoding", "te-and-cl", "chunk-size", "chunk-ext", "trailer",
]  # fmt: skip

GOOD_METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD"]
BAD_METHODS = [b"get", b"G\x00T", b"M-SEARCH", b"", b"GET/"]
GOOD_TARGETS = [b"/", b"/v1.41/containers/create", b"/a?b=c&d", b"/%2e%2e/x", b"//x", b"/~!$&'()*+,;=:@"]
BAD_TARGETS = [b"/a#frag", b"http://docker/v1.41/info", b"*", b"/\x80", b"/a\tb", b"/a\x00", b"/\x7f", b"", b"a/"]
BAD_VERSIONS = [b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1", b"HTTP/01.1"]
GOOD_NAMES = [b"X-A", b"User-Agent", b"Accept", b"x_b", b"Content-Type", b"X-Registry-Auth"]
BAD_FIELDS = [b"Bad Name: 1", b": empty-name", b"X\x00: 1", b"X\x80: 1", b"NoColon", b"X-A : 1", b"X-A\t: 1"]
GOOD_VALUE = st.lists(st.sampled_from([b"a", b"1", b" ", b"\t", b"\x80", b",", b'"', b"="]), max_size=5)
ODD_VALUES = [b"a\x01b", b"\x7f", b"a\x00", b"a\x0bb", b"\x0c", b"a\x1fb"]
GOOD_TE = [b"chunked", b"Chunked", b" chunked ", b"CHUNKED"]
BAD_TE = [b"gzip, chunked", b"chunked, gzip", b"gzip", b"identity", b"", b"chunked, chunked", b"chunked;q=1"]
BAD_CL = [b"+%d", b"%d, %d", b"0x%x", b"\xb3", b"-1", b"9" * 25, b"%d ", b"1%d", b"", b"%d.0"]
GOOD_EXTS = [b";a=b", b';a="q"', b";a", b";a=b;c=d", b";a=\x80"]
BAD_EXTS = [b"; a", b";", b" ", b"\t", b";a=\x01", b";a b", b";\x80"]
GOOD_TRAILERS = [b"X-T: 1", b"X-Checksum: abc"]
BAD_TRAILERS = [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked", b"Content-Length: 5", b" folded",
                b"Bad Name: 1", b"X-U:\x01", b"NoColon"]  # fmt: skip


class Faults:
    def __init__(self, draw, names: list) -> None:
        self.draw = draw
        clean = draw(st.integers(0, 2)) == 0
        self.active = set() if clean else draw(st.sets(st.sampled_from(names), min_size=1, max_size=2))

    def pick(self, fault: str, good: list, bad: list) -> bytes:
        return self.draw(st.sampled_from(bad if fault in self.active else good))


def field_value(draw, faults: Faults) -> bytes:
    value = b"".join(draw(GOOD_VALUE))
    if "odd-value" in faults.active and draw(st.booleans()):
        value += draw(st.sampled_from(ODD_VALUES))
    return value


def chunked_body(draw, faults: Faults, payload: bytes) -> bytes:
    out = b""
    rest = payload
    while rest:
        n = draw(st.integers(1, len(rest)))
        piece, rest = rest[:n], rest[n:]
        size = b"%x" % n
        if draw(st.booleans()):
            size = size.upper() if draw(st.booleans()) else b"0" * draw(st.integers(1, 13)) + size
        if "chunk-size" in faults.active and draw(st.booleans()):
            size = draw(st.sampled_from([b"%x" % (n + 1), b"%x" % (n - 1), b"0x" + size, b" " + size,
                                         size + b" ", b"f" * 20, b"0" * 16 + size, b"-" + size]))  # fmt: skip
        ext = faults.pick("chunk-ext", [b"", b"", b"", *GOOD_EXTS], BAD_EXTS) if draw(st.booleans()) else b""
        out += size + ext + b"\r\n" + piece + b"\r\n"
    out += b"0" + (faults.pick("chunk-ext", [b"", *GOOD_EXTS], BAD_EXTS) if draw(st.booleans()) else b"") + b"\r\n"
    trailers = draw(st.lists(st.sampled_from(GOOD_TRAILERS), max_size=1))
    if "trailer" in faults.active:
        trailers.append(draw(st.sampled_from(BAD_TRAILERS)))
    return out + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


def framed(draw, faults: Faults, lines: list, payload: bytes) -> bytes:
    """Adds the framing field lines to ``lines``; returns the body bytes that go with them."""
    if "te-and-cl" in faults.active:
        mode = "both"
    elif faults.active & {"transfer-encoding", "chunk-size", "chunk-ext", "trailer"}:
        mode = "chunked"
    elif "content-length" in faults.active:
        mode = "length"
    else:
        mode = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b""
    if mode in ("length", "both"):
        size = len(payload)
        if "content-length" in faults.active:
            kind = draw(st.sampled_from(["short", "long", "twice", "conflict", "odd", "odd"]))
            values = {
                "short": [b"%d" % max(size - 1, 0)],
                "long": [b"%d" % (size + 1)],
                "twice": [b"%d" % size] * 2,
                "conflict": [b"%d" % size, b"%d" % (size + 1)],
            }.get(kind) or [draw(st.sampled_from(BAD_CL)).replace(b"%d", b"%d" % size).replace(b"%x", b"%x" % size)]
        else:
            values = [draw(st.sampled_from([b"%d", b"0%d", b" %d "])) % size]
        lines += [b"Content-Length: " + v for v in values]
        body = payload
    if mode in ("chunked", "both"):
        lines.append(b"Transfer-Encoding: " + faults.pick("transfer-encoding", GOOD_TE, BAD_TE))
        if "transfer-encoding" in faults.active and draw(st.booleans()):
            lines.append(b"Transfer-Encoding: chunked")
        body = chunked_body(draw, faults, payload)
    return body


def assemble(draw, faults: Faults, start: bytes, lines: list, body: bytes) -> bytes:
    lines = list(lines)
    lines += [
        draw(st.sampled_from(GOOD_NAMES)) + b": " + field_value(draw, faults)
        for _unused in range(draw(st.integers(0, 2)))
    ]
    if "bad-field" in faults.active:
        lines.append(draw(st.sampled_from(BAD_FIELDS)))
    draw(st.randoms(use_true_random=False)).shuffle(lines)
    if "obs-fold" in faults.active and lines:
        lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from([b" folded", b"\tfolded", b" "])))
    ends = [b"\r\n"] * (len(lines) + 2)
    if "line-end" in faults.active:
        ends[draw(st.integers(0, len(ends) - 1))] = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"]))
    head = start + ends[0] + b"".join(line + end for line, end in zip(lines, ends[1:])) + ends[-1]
    tail = draw(st.sampled_from([b"", b"", b"GET /next HTTP/1.1\r\nHost: d\r\n\r\n", b"garbage", b"\r\n"]))
    return head + body + tail


@st.composite
def requests(draw) -> bytes:
    faults = Faults(draw, REQUEST_FAULTS)
    method = faults.pick("method", GOOD_METHODS, BAD_METHODS)
    target = faults.pick("target", GOOD_TARGETS, BAD_TARGETS)
    version = faults.pick("version", [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"], BAD_VERSIONS)
    sep = faults.pick("sep", [b" "], [b"  ", b"\t", b" \t"])
    lines = (
        []
        if "host-missing" in faults.active
        else [b"Host: " + draw(st.sampled_from([b"docker", b"api.moby.localhost"]))]
    )
    if "host-twice" in faults.active:
        lines.append(b"Host: other")
    body = framed(draw, faults, lines, draw(st.binary(max_size=12)))
    return assemble(draw, faults, method + sep + target + sep + version, lines, body)


@st.composite
def responses(draw) -> tuple:
    faults = Faults(draw, RESPONSE_FAULTS)
    method = draw(st.sampled_from([b"GET", b"GET", b"POST", b"HEAD"]))
    version = faults.pick("version", [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"], BAD_VERSIONS)
    status = faults.pick("status", [b"200", b"201", b"204", b"304", b"400", b"404", b"500", b"599"],
                         [b"2000", b"20", b"600", b"099", b"2OO", b" 200"])  # fmt: skip
    reason = faults.pick("reason", [b" OK", b"", b" ", b" Not\tFound", b" \x80"], [b" a\x01b", b" a\x00", b"\tOK"])
    lines: list = []
    body = framed(draw, faults, lines, draw(st.binary(max_size=12)))
    return method, assemble(draw, faults, version + b" " + status + reason, lines, body)


# -- the two parsers --------------------------------------------------------------------------------


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=http.MAX_HEAD_BYTES)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def ours_request(data: bytes):
    """(method, target, version, headers, body, rest) as http.py reads it, or the HttpError."""

    async def parse():
        reader = _reader(data)
        raw = await http.read_head(reader)
        if raw is None:
            raise http.HttpError(400, "no request")
        head = http.parse_request_head(raw)
        body = await http.read_body(reader, http.request_framing(head), LIMIT)
        rest = await reader.read()
        return head.method, head.target, head.start[2], head.headers, body, rest

    try:
        return asyncio.run(parse())
    except http.HttpError as exc:
        return exc


def ours_response(method: bytes, data: bytes):
    async def parse():
        reader = _reader(data)
        raw = await http.read_head(reader)
        if raw is None:
            raise http.HttpError(502, "no response")
        head = http.parse_response_head(raw)
        framing = http.response_framing(head, method.decode())
        body = b"".join([piece async for piece in http.iter_body(reader, framing, 502)])
        rest = await reader.read()
        return head.start[0], head.status, head.start[2], head.headers, body, rest

    try:
        return asyncio.run(parse())
    except http.HttpError as exc:
        return exc


def _events(conn: h11.Connection, data: bytes):
    """One whole message from h11: (start event, body, rest) or the h11 error as a string."""
    conn.receive_data(data)
    start, body, eof = None, b"", False
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if eof:
                    return "h11 needs more data at EOF"
                conn.receive_data(b"")
                eof = True
            elif isinstance(event, (h11.Request, h11.Response)):
                start = event
            elif isinstance(event, h11.InformationalResponse):
                return "informational response"
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return start, body, conn.trailing_data[0]
            else:
                return f"h11 event {event!r}"
    except h11.RemoteProtocolError as exc:
        return f"h11: {exc}"


def theirs_request(data: bytes):
    result = _events(h11.Connection(h11.SERVER, max_incomplete_event_size=http.MAX_HEAD_BYTES), data)
    if isinstance(result, str):
        return result
    event, body, rest = result
    return event.method, event.target, event.http_version, event.headers.raw_items(), body, rest


def theirs_response(method: bytes, data: bytes):
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=http.MAX_HEAD_BYTES)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "docker")]))
    conn.send(h11.EndOfMessage())
    result = _events(conn, data)
    if isinstance(result, str):
        return result
    event, body, rest = result
    return event.http_version, event.status_code, event.reason, event.headers.raw_items(), body, rest


def _headers(headers) -> list:
    """Field lines as (name, value) bytes, written the way h11 reports them: Transfer-Encoding's
    value in lower case, and a Content-Length repeated with the same value kept once."""
    out = []
    for name, value in headers:
        name = name.encode("latin-1") if isinstance(name, str) else bytes(name)
        value = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        if name.lower() == b"transfer-encoding":
            value = value.lower()
        if name.lower() == b"content-length" and any(n.lower() == b"content-length" for n, _unused in out):
            continue
        out.append((name, value))
    return out


def host_exception(data: bytes, theirs) -> bool:
    return isinstance(theirs, str) and ("Host: header" in theirs)


# -- the properties ---------------------------------------------------------------------------------


@FUZZ
@given(requests())
def test_requests_agree_with_h11(data: bytes) -> None:
    ours = ours_request(data)
    theirs = theirs_request(data)
    if isinstance(ours, http.HttpError):
        assert ours.message and ours.status in (400, 413, 431)
        return
    if host_exception(data, theirs):
        return  # RFC 9112 §3.2: see the module docstring
    assert not isinstance(theirs, str), f"http.py accepted what h11 refuses ({theirs}): {data!r}"
    method, target, version, headers, body, rest = ours
    assert (method.encode(), target.encode("latin-1"), version.encode()) == (
        theirs[0],
        theirs[1],
        b"HTTP/" + theirs[2],
    )
    assert _headers(headers) == _headers(theirs[3])
    assert body == theirs[4], "different body bytes: a smuggling boundary"
    assert rest == theirs[5], "different end of message: a smuggling boundary"


@FUZZ
@given(responses())
def test_responses_agree_with_h11(case: tuple) -> None:
    method, data = case
    ours = ours_response(method, data)
    theirs = theirs_response(method, data)
    if isinstance(ours, http.HttpError):
        assert ours.message  # read_head says 400 or 431; the server answers 502 for the daemon
        return
    assert not isinstance(theirs, str), f"http.py accepted a response h11 refuses ({theirs}): {data!r}"
    version, status, reason, headers, body, rest = ours
    assert (version.encode(), status, reason.encode("latin-1")) == (b"HTTP/" + theirs[0], theirs[1], theirs[2])
    assert _headers(headers) == _headers(theirs[3])
    assert body == theirs[4]
    assert rest == theirs[5]


def test_generators_reach_both_outcomes() -> None:
    """The fuzzing means something only if accepted and refused messages are both common."""
    counts: Counter = Counter()

    @FUZZ
    @given(requests(), responses())
    def run(request: bytes, response: tuple) -> None:
        counts["request", isinstance(ours_request(request), http.HttpError)] += 1
        counts["response", isinstance(ours_response(*response), http.HttpError)] += 1

    run()
    for kind in ("request", "response"):
        for refused in (False, True):
            assert counts[kind, refused] >= FUZZ.max_examples // 5, counts
