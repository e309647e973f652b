"""The gateway's accept loop: connection caps per uid, a big backlog, and calm under descriptor exhaustion.

asyncio's own accept loop (``start_unix_server``) is not used: when ``accept()`` fails with
EMFILE it logs a traceback through the loop's exception handler and, because it keeps looping,
does so (and schedules a retry) once per backlog slot: with a backlog of 4096 a descriptor
shortage writes thousands of tracebacks a second. Here:

- each wake-up accepts at most ``ACCEPT_BATCH`` connections, so a flood of connects cannot hold
  the event loop away from established connections for long;
- the caller's uid comes from SO_PEERCRED straight after ``accept()``, before a byte is read; a
  uid already holding ``limit`` connections gets one short HTTP 429 sentence and the socket is
  closed (uid 0 is exempt, as are connections whose credentials cannot be read: those are
  refused later, when no identity can be established). So that the client reads the sentence
  rather than a reset, the refused socket is half-closed and what the client sends is read and
  dropped for up to ``LINGER_S`` before it is closed -- for at most ``LINGER_MAX`` sockets at once
  (beyond that they are closed at once: a flood must not turn into held descriptors);
- a failing ``accept()`` is logged once per cause (errno) per ``ERROR_LOG_EVERY_S``, with the
  count of failures in between; on a resource shortage (EMFILE, ENFILE, ENOBUFS, ENOMEM) accepting
  pauses for ``ACCEPT_RETRY_S`` and resumes by itself when descriptors are free again.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import time
from collections.abc import Awaitable
from typing import Any, Callable, Optional

from .. import logs
from . import http, peer

log = logs.get(__name__)

LISTEN_BACKLOG = 4096
ACCEPT_BATCH = 64
ACCEPT_RETRY_S = 0.25
ERROR_LOG_EVERY_S = 60.0
SOCKET_BUFFER_BYTES = 1 << 20
LINGER_S = 1.0
LINGER_MAX = 256
RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class RateLimitedLog:
    """At most one log line per key per ``every_s``; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last: dict = {}
        self._held: dict = {}

    def error(self, key: Any, message: str, *args: Any) -> bool:
        """Log ``message % args`` unless ``key`` was logged within ``every_s``; True when it was logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        if held:
            message += " (%d more since the last report)"
            args = (*args, held)
        self._last[key] = now
        self.logger.error(message, *args)
        return True


class ConnectionCap:
    """Open connections per uid, refusing a uid's connection beyond ``limit`` (None: no cap)."""

    def __init__(self, limit: Optional[int], exempt: tuple = (0,)) -> None:
        self.limit = limit
        self.exempt = frozenset(exempt)
        self.open: dict = {}

    def enter(self, uid: int) -> bool:
        count = self.open.get(uid, 0)
        if self.limit is not None and uid not in self.exempt and count >= self.limit:
            return False
        self.open[uid] = count + 1
        return True

    def leave(self, uid: int) -> None:
        count = self.open.get(uid, 0) - 1
        if count > 0:
            self.open[uid] = count
        else:
            self.open.pop(uid, None)


def cap_refusal(limit: int) -> bytes:
    return http.json_response(
        429,
        {
            "message": f"ds01 gateway: you already have {limit} connections open to the Docker socket, the most one "
            "user may hold; close idle clients (`docker logs -f`, `docker events`, stuck scripts) and try again."
        },
        close=True,
    )


def tune(sock: socket.socket) -> None:
    """Larger send/receive buffers on a Unix stream socket: fewer wake-ups per megabyte streamed."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:
            pass


Handler = Callable[[socket.socket, Optional[peer.PeerCred]], Awaitable[None]]


class Listener:
    """Accepts on a listening Unix socket and runs ``handler(conn, cred)`` as a task per admitted connection."""

    def __init__(
        self,
        sock: socket.socket,
        handler: Handler,
        cap: ConnectionCap,
        batch: int = ACCEPT_BATCH,
        retry_s: float = ACCEPT_RETRY_S,
        log_every_s: float = ERROR_LOG_EVERY_S,
    ) -> None:
        self.sock = sock
        self.handler = handler
        self.cap = cap
        self.batch = batch
        self.retry_s = retry_s
        self.errors = RateLimitedLog(log, log_every_s)
        self.refused = 0
        self.accept_failures = 0
        self.tasks: set = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._reading = False
        self._retry: Optional[asyncio.TimerHandle] = None
        self._closed = False
        self._lingering: dict = {}  # refused socket -> its close timer

    @property
    def sockets(self) -> tuple:
        return (self.sock,)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._resume()

    def _resume(self) -> None:
        self._retry = None
        if self._closed or self._reading or self._loop is None:
            return
        self._loop.add_reader(self.sock.fileno(), self._accept)
        self._reading = True

    def _pause(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False
        if self._retry is None and self._loop is not None and not self._closed:
            self._retry = self._loop.call_later(self.retry_s, self._resume)

    def _accept(self) -> None:
        for _i in range(self.batch):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self.accept_failures += 1
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                hint = (
                    "; new connections wait in the backlog and are accepted when descriptors are free again"
                    if exc.errno in RESOURCE_ERRNOS
                    else ""
                )
                self.errors.error(name, "accept() failed: %s (%s)%s", exc.strerror or exc, name, hint)
                self._pause()
                return
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            cred: Optional[peer.PeerCred] = peer.peercred(conn)
        except OSError:
            cred = None
        if cred is not None and not self.cap.enter(cred.uid):
            self.refused += 1
            self._refuse(conn)
            return
        if self._loop is None:  # _accept is registered by start(), which sets the loop
            conn.close()
            return
        tune(conn)
        task = self._loop.create_task(self.handler(conn, cred))
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, None if cred is None else cred.uid))

    def _refuse(self, conn: socket.socket) -> None:
        try:
            conn.send(cap_refusal(self.cap.limit or 0))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        if self._loop is None:
            conn.close()
            return
        if len(self._lingering) >= LINGER_MAX:
            # the oldest refused connection goes first: the newest is the likeliest to be a client still
            # sending its request, which would read a reset instead of the sentence if closed now
            self._drop(next(iter(self._lingering)))
        self._lingering[conn] = self._loop.call_later(LINGER_S, self._drop, conn)
        self._loop.add_reader(conn.fileno(), self._discard, conn)

    def _discard(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._drop(conn)  # EOF or an error: the client has its answer

    def _drop(self, conn: socket.socket) -> None:
        timer = self._lingering.pop(conn, None)
        if timer is None:
            return
        timer.cancel()
        if self._loop is not None:
            self._loop.remove_reader(conn.fileno())
        conn.close()

    def _finished(self, uid: Optional[int], task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if uid is not None:
            self.cap.leave(uid)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for conn in list(self._lingering):
            self._drop(conn)
        self.sock.close()

    async def wait_closed(self) -> None:
        """Stop accepting; connections already admitted finish on their own (their tasks are kept here)."""
        self.close()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.wait_closed()


def listen(path: str, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A bound, listening, non-blocking Unix stream socket at ``path`` (mode per the caller's umask)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
