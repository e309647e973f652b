"""Strict HTTP/1.1 framing for the gateway: heads, Content-Length and chunked bodies.

The gateway decides on what it parsed and forwards only what it parsed, re-framed by itself:
a request head is rebuilt from the parsed fields and every body is re-sent with framing the
gateway wrote. Anything ambiguous (both Content-Length and Transfer-Encoding, repeated or
malformed Content-Length, obs-fold, bare CR/LF, invalid chunk sizes, a body over the limit)
is a 400 before anything reaches the daemon, so no request can be smuggled past a check.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Optional

from ..record import field, record

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
PIECE = 256 * 1024  # bytes asked of a socket at once when streaming a body

# Whole-value patterns: always used with fullmatch.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD = re.compile(rb"[A-Z]{1,20}")
_VERSION = re.compile(rb"HTTP/1\.[01]")
# origin-form (RFC 9112 §3.2.1): "/" then visible ASCII only (no '#', no obs-text, no controls)
_TARGET = re.compile(rb"/[\x21\x22\x24-\x7e]*")
_STATUS = re.compile(rb"HTTP/1\.[01] [1-5][0-9]{2}(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:=[^\x00-\x1f\x7f;]*)?)*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class HttpError(Exception):
    """A request the gateway refuses to interpret; answered with ``status`` and the sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@record
class Head:
    """A parsed request or response head. ``headers`` keeps order and original spelling."""

    start: tuple  # (method, target, version) or (version, status, reason)
    headers: list = field(default_factory=list)

    # -- header access --------------------------------------------------------------------
    def get_all(self, name: str) -> list:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        values = self.get_all(name)
        return values[-1] if values else default

    def remove(self, *names: str) -> None:
        lower = {n.lower() for n in names}
        self.headers = [(k, v) for k, v in self.headers if k.lower() not in lower]

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.headers.append((name, value))

    # -- request fields -------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.start[0]

    @property
    def target(self) -> str:
        return self.start[1]

    @target.setter
    def target(self, value: str) -> None:
        self.start = (self.start[0], value, self.start[2])

    @property
    def status(self) -> int:
        return self.start[1]

    def connection_tokens(self) -> set:
        tokens = set()
        for value in self.get_all("Connection"):
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
        return tokens

    def serialize_request(self) -> bytes:
        lines = [f"{self.start[0]} {self.start[1]} {self.start[2]}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def serialize_response(self) -> bytes:
        version, status, reason = self.start
        lines = [f"{version} {status} {reason}".rstrip()]
        lines += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _split_lines(data: bytes) -> list:
    if not data.endswith(b"\r\n\r\n"):
        raise HttpError(400, "the request head is not terminated by an empty line")
    lines = data[:-4].split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise HttpError(400, "bare CR or LF in the request head")
    return lines


def _parse_headers(lines: list) -> list:
    if len(lines) > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding (obs-fold) in a header is not accepted")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError(400, f"malformed header line {line[:60]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HttpError(400, f"control character in header {name.decode('latin-1')}")
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return headers


def check_trailer_field(line: bytes, error_status: int = 400) -> None:
    """One chunked trailer field line: well-formed, and not a framing field (RFC 9110 §6.5.1)."""
    try:
        ((name, _value),) = _parse_headers([line])
    except HttpError as exc:
        raise HttpError(error_status, f"malformed chunked trailer: {exc.message}") from None
    if name.lower() in ("content-length", "transfer-encoding", "trailer", "host"):
        raise HttpError(error_status, f"the chunked trailer sets {name}, which may only be sent in the head")


def parse_request_head(data: bytes) -> Head:
    lines = _split_lines(data)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
    target = parts[1]
    if not _TARGET.fullmatch(target):
        raise HttpError(400, "the request target must be an absolute path of visible ASCII characters")
    return Head((parts[0].decode(), target.decode("latin-1"), parts[2].decode()), _parse_headers(lines[1:]))


def parse_response_head(data: bytes) -> Head:
    lines = _split_lines(data)
    if not _STATUS.fullmatch(lines[0]):
        raise HttpError(502, f"the Docker daemon sent a malformed status line {lines[0][:80]!r}")
    version, status, reason = [*lines[0].split(b" ", 2), b""][:3]
    return Head((version.decode(), int(status), reason.decode("latin-1")), _parse_headers(lines[1:]))


@record(frozen=True)
class Framing:
    """How a message body is delimited: ``none``, ``length`` (with ``length``), ``chunked``, ``close``."""

    kind: str
    length: int = 0


NO_BODY = Framing("none")


def request_framing(head: Head) -> Framing:
    """The body framing of a request, refusing every ambiguous form (RFC 9112 §6)."""
    te = head.get_all("Transfer-Encoding")
    cl = head.get_all("Content-Length")
    if te and cl:
        raise HttpError(400, "both Transfer-Encoding and Content-Length are set; send only one")
    if te:
        if head.start[2] == "HTTP/1.0":
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if len(te) != 1 or te[0].strip().lower() != "chunked":
            raise HttpError(400, f"unsupported Transfer-Encoding {', '.join(te)!r}; only 'chunked' is accepted")
        return Framing("chunked")
    if cl:
        if len(cl) != 1:
            raise HttpError(400, "more than one Content-Length header")
        value = cl[0]
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            raise HttpError(400, f"invalid Content-Length {value!r}")
        length = int(value)
        return Framing("length", length) if length else NO_BODY
    return NO_BODY


def response_framing(head: Head, request_method: str) -> Framing:
    """The body framing of a daemon response; the framing fields are checked even when no body follows."""
    te = head.get_all("Transfer-Encoding")
    # dockerd (Go net/http) only ever sends "chunked"; any other coding is refused rather than
    # read to the close (RFC 9112 §6.3 rule 4), so gateway and client never disagree on the end
    if te and (len(te) != 1 or te[0].strip().lower() != "chunked"):
        raise HttpError(502, f"the Docker daemon sent an unsupported Transfer-Encoding {', '.join(te)!r}")
    cl = head.get_all("Content-Length")
    values = {v.strip() for v in cl}
    value = next(iter(values)) if len(values) == 1 else ""
    if cl and (not value.isdigit() or not value.isascii() or len(value) > 18):  # as for requests (int64)
        raise HttpError(502, "the Docker daemon sent an invalid Content-Length")
    status = head.status
    if request_method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return NO_BODY
    if te:
        return Framing("chunked")
    if cl:
        return Framing("length", int(next(iter(values))))
    return Framing("close")


HEAD_TIMEOUT_S = 30.0  # from a request head's first byte to its empty line
IDLE_TIMEOUT_S = 120.0  # for a request head's first byte (a kept-alive connection between requests)
# Between two pieces of a request body: a client that stops sending mid-body is cut off, so the daemon's half of a
# streamed request (which may hold a lock, e.g. on the container of an archive upload) ends with it.
BODY_TIMEOUT_S = 60.0
BODY_MIN_BYTES = 64 << 10  # ... and a body must bring at least this much in each BODY_TIMEOUT_S (about 1 KiB/s)


async def read_head(
    reader: asyncio.StreamReader, idle_timeout_s: Optional[float] = None, head_timeout_s: Optional[float] = None
) -> Optional[bytes]:
    """The next head (through the empty line), or None on a clean EOF before any byte.

    With timeouts (a client's request): None as well when no byte came within ``idle_timeout_s``
    (an idle connection is closed quietly), and a 408 when the head was not complete within
    ``head_timeout_s`` of its first byte (a trickled head is cut off).
    """
    if idle_timeout_s is None and head_timeout_s is None:
        first = b""
    else:
        try:
            first = await asyncio.wait_for(reader.readexactly(1), idle_timeout_s)
        except asyncio.TimeoutError:
            return None
        except asyncio.IncompleteReadError:
            return None
    try:
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), head_timeout_s if first else None)
    except asyncio.TimeoutError:
        raise HttpError(
            408, f"the request head did not arrive whole within {head_timeout_s:g} seconds; send it at once"
        ) from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial and not first:
            return None
        raise HttpError(400, "the connection closed in the middle of a request head") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes") from None
    return first + rest if first else rest


async def iter_body(
    reader: asyncio.StreamReader, framing: Framing, error_status: int = 400, stall_timeout_s: Optional[float] = None
) -> AsyncIterator[bytes]:
    """Yield the body's bytes in pieces (never more than PIECE at once), validating the framing.

    ``stall_timeout_s`` (a client's body): a 408 when no byte arrives for that long."""
    if stall_timeout_s is not None:
        reader = _Stalling(reader, stall_timeout_s)  # type: ignore[assignment]
    if framing.kind == "none":
        return
    if framing.kind == "length":
        remaining = framing.length
        while remaining:
            piece = await reader.read(min(remaining, PIECE))
            if not piece:
                raise HttpError(error_status, "the connection closed before the whole body arrived")
            remaining -= len(piece)
            yield piece
        return
    if framing.kind == "close":
        while True:
            piece = await reader.read(PIECE)
            if not piece:
                return
            yield piece
    # chunked
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise HttpError(error_status, "the connection closed inside a chunked body") from None
        except asyncio.LimitOverrunError:
            raise HttpError(error_status, "a chunk-size line is too long") from None
        match = _CHUNK_SIZE.fullmatch(line[:-2])
        if not match or b"\r" in line[:-2] or b"\n" in line[:-2]:
            raise HttpError(error_status, f"invalid chunk size line {line[:40]!r}")
        size = int(match.group(1), 16)
        if size == 0:
            break
        remaining = size
        while remaining:
            piece = await reader.read(min(remaining, PIECE))
            if not piece:
                raise HttpError(error_status, "the connection closed inside a chunk")
            remaining -= len(piece)
            yield piece
        try:
            end = await reader.readexactly(2)
        except asyncio.IncompleteReadError:
            raise HttpError(error_status, "the connection closed inside a chunked body") from None
        if end != b"\r\n":
            raise HttpError(error_status, "a chunk is longer than its declared size")
    # trailer section: header lines up to an empty line; checked, then dropped
    count = 0
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise HttpError(error_status, "malformed chunked trailer") from None
        if line == b"\r\n":
            return
        count += 1
        if count > MAX_HEADERS:
            raise HttpError(error_status, "too many trailer fields")
        check_trailer_field(line[:-2], error_status)


class _Stalling:
    """A reader of a client's body that ends in a 408 when no byte came within ``timeout_s``, or when fewer than
    ``BODY_MIN_BYTES`` came in a whole ``timeout_s``: a body trickled in a byte at a time never stalls, and the
    daemon's half of the request would hold what it holds (an archive upload, its container) for as long."""

    def __init__(self, reader: asyncio.StreamReader, timeout_s: float) -> None:
        self.reader = reader
        self.timeout_s = timeout_s
        self.window_start = time.monotonic()
        self.window_bytes = 0

    async def _within(self, pending: Any) -> Any:
        try:
            data = await asyncio.wait_for(pending, self.timeout_s)
        except asyncio.TimeoutError:
            raise HttpError(
                408, f"no byte of the request body arrived for {self.timeout_s:g} seconds; the request was cut off"
            ) from None
        self.window_bytes += len(data)
        now = time.monotonic()
        if now - self.window_start >= self.timeout_s:
            if self.window_bytes < BODY_MIN_BYTES:
                raise HttpError(
                    408,
                    f"the request body arrived at {self.window_bytes} bytes in {now - self.window_start:.0f} seconds, "
                    f"under {BODY_MIN_BYTES // 1024} KiB in {self.timeout_s:g} seconds; the request was cut off",
                )
            self.window_start, self.window_bytes = now, 0
        return data

    async def read(self, n: int) -> bytes:
        return await self._within(self.reader.read(n))

    async def readuntil(self, separator: bytes) -> bytes:
        return await self._within(self.reader.readuntil(separator))

    async def readexactly(self, n: int) -> bytes:
        return await self._within(self.reader.readexactly(n))


async def read_body(reader: asyncio.StreamReader, framing: Framing, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes (413) before reading them all."""
    if framing.kind == "length" and framing.length > limit:
        raise HttpError(413, f"the request body ({framing.length} bytes) is larger than the gateway accepts ({limit})")
    parts = []
    total = 0
    async for piece in iter_body(reader, framing):
        total += len(piece)
        if total > limit:
            raise HttpError(413, f"the request body is larger than the gateway accepts ({limit} bytes)")
        parts.append(piece)
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"

MAX_CHUNK_LINE = 4096
# one chunk-size line, CRLF included: the grammar iter_body reads, matched in place at an offset
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:=[^\x00-\x1f\x7f;]*)?)*\r\n")
_SIZE, _DATA, _CRLF, _TRAILER = range(4)


class ChunkedCopy:
    """Validates a chunked body fed in pieces of any size and hands back the same bytes, unchanged.

    For passing a daemon's chunked response through without de-chunking and re-chunking it: the
    bytes come back only once their framing is known to be valid (the grammar of ``iter_body``:
    size lines, chunk data ending in CRLF, trailer fields), so a client never sees a message
    boundary the gateway did not see. An incomplete size line or trailer line is held back until
    the rest arrives. ``done`` is set after the empty line ending the trailer section; bytes fed
    after it are kept in ``excess`` (a daemon must not send any: the caller drops the connection).
    """

    def __init__(self, error_status: int = 502) -> None:
        self.error_status = error_status
        self.done = False
        self.excess = b""
        self._state = _SIZE
        self._data = 0  # chunk-data bytes still to come
        self._pending = b""  # bytes held back: the start of a size line, CRLF or trailer line
        self._trailers = 0

    def feed(self, data: bytes) -> memoryview:
        """The validated bytes of ``data`` (and of what was held back before it) to pass on."""
        if self.done:
            self.excess += data
            return memoryview(b"")
        buf = self._pending + data if self._pending else data
        pos, end = 0, len(buf)
        match = _CHUNK_LINE.match
        state = self._state
        while pos < end:
            if state == _SIZE:
                found = match(buf, pos)
                if found is None:
                    line_end = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
                    if line_end >= 0 or end - pos >= MAX_CHUNK_LINE:
                        raise HttpError(self.error_status, f"invalid chunk size line {bytes(buf[pos : pos + 40])!r}")
                    break  # the size line is not complete yet
                size = int(found.group(1), 16)
                pos = found.end()
                if size == 0:
                    state = _TRAILER
                    continue
                stop = pos + size
                if stop + 2 <= end:  # the whole chunk is here: the common case, one step
                    if not buf.startswith(b"\r\n", stop):
                        raise HttpError(self.error_status, "a chunk is longer than its declared size")
                    pos = stop + 2
                    continue
                self._data = size
                state = _DATA
            elif state == _DATA:
                take = min(self._data, end - pos)
                pos += take
                self._data -= take
                if not self._data:
                    state = _CRLF
            elif state == _CRLF:
                if end - pos < 2:
                    break
                if not buf.startswith(b"\r\n", pos):
                    raise HttpError(self.error_status, "a chunk is longer than its declared size")
                pos += 2
                state = _SIZE
            else:  # trailer section: header lines up to an empty line
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    if end - pos > MAX_HEAD_BYTES:
                        raise HttpError(self.error_status, "a chunked trailer line is too long")
                    break
                line = bytes(buf[pos:line_end])
                pos = line_end + 2
                if not line:
                    self.done = True
                    self.excess = bytes(buf[pos:])
                    end = pos
                    break
                self._trailers += 1
                if self._trailers > MAX_HEADERS:
                    raise HttpError(self.error_status, "too many trailer fields")
                check_trailer_field(line, self.error_status)
        self._state = state
        self._pending = b"" if self.done else bytes(buf[pos:])
        view = memoryview(buf)
        return view if pos == len(buf) else view[:pos]


REASONS = {
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def json_response(status: int, body: object, close: bool = False, extra: Optional[list] = None) -> bytes:
    """A complete response with a JSON body (Docker's error shape is ``{"message": "..."}``)."""
    payload = json.dumps(body).encode()
    headers = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Server: ds01-gateway",
    ]
    headers += list(extra or [])
    if close:
        headers.append("Connection: close")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + payload
