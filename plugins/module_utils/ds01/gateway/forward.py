"""Forwarding a decided request to the daemon, on the connection's own upstream connection.

The request goes out re-framed (Content-Length or chunked, never the client's framing). Responses stream back
unchanged, except the few the gateway must rewrite (``GET /system/df``, listings). Upgrades (``attach``/``exec``
with a TTY, BuildKit sessions) and Docker's older hijack without 101 are spliced byte for byte both ways, with
half-close passed on.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable
from typing import Any, Callable, Optional

from .. import logs
from . import canonical, http, objects, policy
from .upstream import UpstreamError, gather_more

log = logs.get(__name__)

HIJACK_ACTIONS = ("attach", "start")  # container attach, exec start
SPLICE_GRACE_S = 5.0
HIJACK_TYPES = ("application/vnd.docker.raw-stream", "application/vnd.docker.multiplexed-stream")


CLIENT_CHECK_S = 5.0  # while a streamed answer is quiet, how often the client is looked at


class ClientGone(ConnectionError):
    """The client closed its end while its answer was streaming (an interrupted ``docker logs -f``, ``events``)."""


class _ClientWatch:
    """The daemon's side of a streamed answer, read until the client goes away: while no byte comes, the client
    is looked at every ``CLIENT_CHECK_S``, and a client that closed its end ends the read (``ClientGone``).
    Without it, an interrupted ``docker events`` or ``logs -f`` held its connection and the daemon's until the
    daemon said something, which may be never, and each counted against the user's connection cap."""

    def __init__(self, reader: asyncio.StreamReader, gone: Callable[[], bool]) -> None:
        self.reader = reader
        self.gone = gone

    async def _watch(self, make: Callable[[], Awaitable[Any]]) -> Any:
        while True:
            try:
                return await asyncio.wait_for(make(), CLIENT_CHECK_S)
            except asyncio.TimeoutError:
                if self.gone():
                    raise ClientGone("the client closed its connection during a streamed answer") from None

    async def read(self, n: int) -> bytes:
        return await self._watch(lambda: self.reader.read(n))

    async def readuntil(self, separator: bytes) -> bytes:
        return await self._watch(lambda: self.reader.readuntil(separator))

    async def readexactly(self, n: int) -> bytes:
        return await self._watch(lambda: self.reader.readexactly(n))


class Forwarding:
    """The forwarding half of a client connection (connection.Connection): its upstream connection and
    what is sent on it."""

    async def upstream_connection(self) -> tuple:
        if self.up_writer is None or self.up_writer.is_closing() or (self.up_reader and self.up_reader.at_eof()):
            if self.up_writer is not None:
                self.up_writer.close()
            self.up_reader, self.up_writer = await self.gw.upstream.open()
        return self.up_reader, self.up_writer

    async def forward(
        self,
        head: http.Head,
        framing: http.Framing,
        route: policy.Route,
        body: Any = None,
        rewrite: Optional[Callable[[Any], Any]] = None,
        capture: bool = False,
        body_filter: Optional[Callable[[Optional[bytes]], bytes]] = None,
        upload: Optional[Any] = None,
        before_answer: Optional[Callable[[str], Awaitable[None]]] = None,
    ) -> Any:
        """Send the request upstream and the answer back. Returns keep-alive (and status, id if capture).

        ``upload``: a spooled body (a file object at its start) sent instead of the client's.
        ``before_answer`` (with ``capture``): awaited with the new object's id after a 2xx, before the client
        has the answer."""
        up_reader, up_writer = await self.upstream_connection()
        head.remove("Content-Length", "Transfer-Encoding", "Expect")
        payload: Optional[bytes] = None
        if upload is not None:
            size = os.fstat(upload.fileno()).st_size
            head.headers.append(("Content-Length", str(size)))
            up_writer.write(head.serialize_request())
            while True:
                piece = upload.read(http.PIECE)
                if not piece:
                    break
                up_writer.write(piece)
                await up_writer.drain()
            head = _Sent(head)  # the head went out with the body; below only the answer is read
            framing = http.NO_BODY
        elif body is not None:
            payload = canonical.encode(body)
            head.set("Content-Type", "application/json")
            head.headers.append(("Content-Length", str(len(payload))))
        elif framing.kind == "length":
            head.headers.append(("Content-Length", str(framing.length)))
        elif framing.kind == "chunked":
            head.headers.append(("Transfer-Encoding", "chunked"))
        client_close = "close" in head.connection_tokens() or head.start[2] == "HTTP/1.0"
        if not isinstance(head, _Sent):
            up_writer.write(head.serialize_request())
        else:
            head = head.head
        sender: Optional[asyncio.Task] = None
        if payload is not None:
            up_writer.write(payload)
            await up_writer.drain()
        elif framing.kind != "none":
            sender = asyncio.ensure_future(self._send_body(framing, up_writer, body_filter))
        else:
            await up_writer.drain()
        try:
            answer = asyncio.ensure_future(self._answer_head(up_reader))
            if sender is not None:
                # The client's body may end before the daemon answers (a client gone or stalled mid-upload): the
                # daemon would wait for the rest for ever, holding what the request holds (an archive upload locks
                # its container against every inspect, the allocator's included). Its connection ends with the body.
                await asyncio.wait((answer, sender), return_when=asyncio.FIRST_COMPLETED)
                failed = sender.exception() if sender.done() else None
                # (a refused archive entry is not that: its body was finished, and the daemon answers it)
                if failed is not None and not isinstance(failed, objects.BodyRefused) and not answer.done():
                    answer.cancel()
                    await asyncio.gather(answer, return_exceptions=True)
                    up_writer.close()
                    self.up_writer = None
                    sender.result()  # raises the client-side error (a 408, a 400 or the connection's end)
            response = await answer
            if sender is not None:
                if response.status >= 300 and not sender.done():
                    client_close = True
                else:
                    await sender
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                client_close = True
        rframing = http.response_framing(response, head.method)
        hijack = (
            response.status == 101
            or (
                route.kind in ("container", "exec")
                and route.action in HIJACK_ACTIONS
                and rframing.kind == "close"
                and (response.get("Content-Type") or "").split(";")[0].strip() in HIJACK_TYPES
            )
            or (route.path in ("/session", "/grpc") and rframing.kind == "close")
        )
        if hijack:
            self.response_started = True
            await self.send(response.serialize_response())
            await self.splice(up_reader, up_writer)
            return (False, response.status, None) if capture else False
        upstream_close = "close" in response.connection_tokens() or rframing.kind == "close"
        captured: Optional[str] = None
        if rewrite is not None or capture:
            data = b"".join([piece async for piece in http.iter_body(up_reader, rframing, error_status=502)])
            if rewrite is not None and 200 <= response.status < 300:
                try:
                    data = json.dumps(rewrite(json.loads(data))).encode()
                except ValueError:
                    pass
            if capture:
                try:
                    captured = (json.loads(data) or {}).get("Id")
                except (ValueError, AttributeError):
                    captured = None
                if before_answer is not None and captured and 200 <= response.status < 300:
                    await before_answer(str(captured))
            response.remove("Content-Length", "Transfer-Encoding")
            response.headers.append(("Content-Length", str(len(data))))
            if client_close or rframing.kind == "close":
                # the body had no length of its own (it ended with the daemon's connection): the client
                # connection ends after this answer too, and the client is told, so it does not send its next
                # request into a connection about to close
                response.set("Connection", "close")
            self.response_started = True
            await self.send(response.serialize_response() + data)
        else:
            # Streamed as it arrives, bytes unchanged: a chunked body keeps the daemon's framing,
            # validated on the way (http.ChunkedCopy), so `logs -f` lines pass at once and a 100 MB
            # log is copied once rather than de-chunked and re-chunked.
            self.response_started = True
            self.writer.write(response.serialize_response())
            streamed: Any = _ClientWatch(up_reader, self.client_gone)
            if rframing.kind == "chunked":
                copier = http.ChunkedCopy(error_status=502)
                while not copier.done:
                    data = await streamed.read(http.PIECE)
                    if not data:
                        raise UpstreamError("the Docker daemon closed the connection inside a chunked body")
                    out = copier.feed(data)
                    if out:
                        self.writer.write(out)
                        await self.writer.drain()
                    await gather_more(up_writer.transport, len(data))
                if copier.excess:
                    log.warning("the Docker daemon sent bytes after a response; dropping that connection")
                    upstream_close = True
            else:
                async for piece in http.iter_body(streamed, rframing, error_status=502):
                    self.writer.write(piece)
                    await self.writer.drain()
                    await gather_more(up_writer.transport, len(piece))
            await self.writer.drain()
        if upstream_close:
            up_writer.close()
            self.up_writer = None
        keep = not (client_close or rframing.kind == "close")
        return (keep, response.status, captured) if capture else keep

    def client_gone(self) -> bool:
        """The client closed its end of the connection (its EOF arrived, with nothing of it left to read)."""
        return self.reader.at_eof() or self.writer.transport.is_closing()

    async def _answer_head(self, up_reader: asyncio.StreamReader) -> http.Head:
        """The daemon's answer head (a 100 Continue skipped)."""
        try:
            while True:
                raw = await http.read_head(up_reader)
                if raw is None:
                    raise UpstreamError("the Docker daemon closed the connection without answering")
                response = http.parse_response_head(raw)
                if response.status == 100:
                    continue
                self.gw.stats.count("forwarded", time.monotonic() - self.started)
                return response
        except http.HttpError as exc:
            raise UpstreamError(exc.message) from None

    async def _send_body(
        self,
        framing: http.Framing,
        up_writer: asyncio.StreamWriter,
        body_filter: Optional[Callable[[Optional[bytes]], bytes]] = None,
    ) -> None:
        """Stream a body we do not need to read: exactly Content-Length bytes, or re-chunked.

        ``body_filter`` (objects.ArchiveRewriter.filter) rewrites each piece and is called with None
        at the end; when that raises BodyRefused, the (rewritten) body is still finished and then
        the refusal is raised, so forward() answers the client with it instead of the daemon."""
        chunked = framing.kind == "chunked"
        refused: Optional[Exception] = None
        async for piece in http.iter_body(self.reader, framing, stall_timeout_s=self.gw.body_timeout_s):
            if body_filter is not None:
                piece = body_filter(piece)
            up_writer.write(http.chunk(piece) if chunked else piece)
            await up_writer.drain()
        if body_filter is not None:
            try:
                up_writer.write(http.chunk(body_filter(None)) if chunked else body_filter(None))
            except objects.BodyRefused as exc:
                refused = exc
        if chunked:
            up_writer.write(http.LAST_CHUNK)
            await up_writer.drain()
        if refused is not None:
            raise refused

    async def splice(self, up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        """Copy bytes both ways until the daemon's side ends; pass half-closes on."""

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await src.read(http.PIECE)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                pass

        to_daemon = asyncio.ensure_future(pump(self.reader, up_writer))
        to_client = asyncio.ensure_future(pump(up_reader, self.writer))
        await to_client
        try:
            await asyncio.wait_for(to_daemon, SPLICE_GRACE_S)
        except asyncio.TimeoutError:
            pass
        self.up_writer = None
        up_writer.close()


class _Sent:
    """A request head already written upstream (with a spooled body)."""

    def __init__(self, head: http.Head) -> None:
        self.head = head

    def connection_tokens(self) -> set:
        return self.head.connection_tokens()

    @property
    def start(self) -> Any:
        return self.head.start
