"""A read-only window on the Docker engine in the standard library: list and inspect, nothing else.

Why not the SDK here: importing ``docker`` (requests, urllib3) costs about 150 ms, three times a
whole ``docker ps -a``; a one-shot reader (``ds01 gpu plan``/``status``/``users``) pays it on every
run. ``Engine`` speaks the same two GETs over the engine's Unix socket in a few lines of HTTP/1.1
(importing ``http.client`` alone costs about 10 ms) and answers with the same documents, under the
names the SDK's low-level client uses (``engine.api.containers(all=True)``,
``engine.api.inspect_container(id)``), so ``read.list_containers`` takes either. Anything that
changes Docker goes through the SDK (``sdk.py``).

``engine_from_env`` returns one when ``$DOCKER_HOST`` is unset or a ``unix://`` socket, else None
(tcp, ssh, TLS: the caller takes the SDK, which knows them).
"""

from __future__ import annotations

import _socket  # the socket module's own C core: ``socket`` adds ~3 ms of imports (selectors, enum conversions)
import json
import os
from collections.abc import Mapping
from typing import Any, Optional

DEFAULT_SOCKET = "/var/run/docker.sock"
_MAX_HEAD = 64 << 10
_MAX_BODY = 256 << 20
# RFC 3986 unreserved characters: everything else in a query value or a path segment is percent-encoded (what
# ``urllib.parse.quote(value, safe="")`` does; importing urllib.parse costs a cold command about 3 ms).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote(value: str) -> str:
    """``value`` percent-encoded (UTF-8) for one path segment or query value."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in value.encode("utf-8"))


class EngineError(Exception):
    """The engine answered with an error status (``status``), or not in a way this reader takes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status_code = status
        self.explanation = message


class EngineNotFound(EngineError):
    """404: the container (or object) does not exist (any more)."""


class _Connection:
    """One HTTP/1.1 connection to the engine's socket: GET, then the answer (Content-Length, chunked,
    or to the end of the connection)."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.buf = bytearray()
        self.open = True

    def close(self) -> None:
        self.open = False
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionResetError("the Docker engine closed the connection")
        self.buf += data

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > _MAX_HEAD:
                raise EngineError(0, "the engine's answer has a line too long for this reader")
            self._fill()

    def _exactly(self, n: int) -> bytes:
        if n > _MAX_BODY:
            raise EngineError(0, f"the engine's answer is too big for this reader ({n} bytes)")
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def get(self, url: str) -> tuple:
        """``(status, reason, body)`` of ``GET url``."""
        self.sock.sendall(f"GET {url} HTTP/1.1\r\nHost: docker\r\nAccept: application/json\r\n\r\n".encode("ascii"))
        status_line = self._line().decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise EngineError(0, f"the engine did not answer in HTTP/1.1 ({status_line[:80]!r})")
        status, reason = int(parts[1]), (parts[2] if len(parts) > 2 else "")
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            key, _sep, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self._line().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self._line():  # trailers, then the empty line
                        pass
                    break
                chunks.append(self._exactly(size))
                self._line()
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        else:  # no length: the body runs to the end of the connection
            while True:
                try:
                    self._fill()
                except ConnectionResetError:
                    break
            body, self.buf = bytes(self.buf), bytearray()
            self.open = False
        if headers.get("connection", "").lower() == "close":
            self.open = False
        return status, reason, body


class Engine:
    """GET-only client of the engine's Unix socket (one keep-alive connection, not thread-safe)."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._conn: Optional[_Connection] = None

    @property
    def api(self) -> Engine:  # the SDK's low-level client is ``client.api``: the same calls here
        return self

    def _get(self, url: str) -> Any:
        for attempt in (0, 1):
            fresh = self._conn is None
            if self._conn is None:
                self._conn = _Connection(self.path, self.timeout)
            try:
                status, reason, body = self._conn.get(url)
                break
            except (ConnectionResetError, BrokenPipeError):
                self.close()  # a kept-alive connection the engine closed: once more on a new one
                if fresh or attempt:
                    raise
            except (OSError, ValueError, EngineError):
                self.close()
                raise
        else:  # pragma: no cover - the loop breaks or raises
            raise OSError("no answer from the Docker engine")
        if self._conn is not None and not self._conn.open:
            self.close()
        if status >= 400:
            try:
                message = str(json.loads(body).get("message") or "")
            except (ValueError, AttributeError):
                message = body.decode("utf-8", "replace")[:200]
            cls = EngineNotFound if status == 404 else EngineError
            raise cls(status, message or reason)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise EngineError(0, f"the engine at {self.path} did not answer with JSON ({exc})") from exc

    def containers(self, all: bool = False, filters: Optional[Mapping[str, Any]] = None) -> list:
        """``GET /containers/json``: the list summaries (``all``: every state)."""
        query = {"all": "1" if all else "0"}
        if filters:
            query["filters"] = json.dumps({k: v if isinstance(v, list) else [v] for k, v in filters.items()})
        return self._get("/containers/json?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items()))

    def inspect_container(self, container: str) -> dict:
        """``GET /containers/{id}/json``: the inspect document; ``EngineNotFound`` when it is gone."""
        return self._get(f"/containers/{quote(str(container))}/json")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def socket_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The engine's Unix socket from ``$DOCKER_HOST`` (unset: the default), None when it is not one."""
    env = os.environ if environ is None else environ
    host = (env.get("DOCKER_HOST") or "").strip()
    if not host or host == "unix://":
        return DEFAULT_SOCKET
    for scheme in ("unix://", "http+unix://"):
        if host.startswith(scheme):
            return host[len(scheme) :] or DEFAULT_SOCKET
    return None


def engine_from_env(timeout: float = 30.0, environ: Optional[Mapping[str, str]] = None) -> Optional[Engine]:
    """An ``Engine`` for ``$DOCKER_HOST``'s Unix socket, or None when Docker is reached another way."""
    path = socket_from_env(environ)
    return Engine(path, timeout) if path else None
