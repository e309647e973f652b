"""A read-only window on the Docker engine in the standard library: list and inspect, nothing else.

Why not the SDK here: importing ``docker`` (requests, urllib3) costs about 150 ms, three times a
whole ``docker ps -a``; a one-shot reader (``ds01 gpu plan``/``status``/``users``) pays it on every
run. ``Engine`` speaks the same two GETs over the engine's Unix socket with ``http.client`` and
answers with the same documents, under the names the SDK's low-level client uses
(``engine.api.containers(all=True)``, ``engine.api.inspect_container(id)``), so ``read.list_containers``
takes either. Anything that changes Docker goes through the SDK (``sdk.py``).

``engine_from_env`` returns one when ``$DOCKER_HOST`` is unset or a ``unix://`` socket, else None
(tcp, ssh, TLS: the caller takes the SDK, which knows them).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any, Optional

DEFAULT_SOCKET = "/var/run/docker.sock"


class EngineError(Exception):
    """The engine answered with an error status (``status``), or not with JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status_code = status
        self.explanation = message


class EngineNotFound(EngineError):
    """404: the container (or object) does not exist (any more)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Engine:
    """GET-only client of the engine's Unix socket (one keep-alive connection, not thread-safe)."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._conn: Optional[_UnixConnection] = None

    @property
    def api(self) -> Engine:  # the SDK's low-level client is ``client.api``: the same calls here
        return self

    def _get(self, url: str) -> Any:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = _UnixConnection(self.path, self.timeout)
            try:
                self._conn.request("GET", url, headers={"Accept": "application/json"})
                response = self._conn.getresponse()
                body = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the engine closed: once more on a new one
                if attempt:
                    raise
        else:  # pragma: no cover - the loop breaks or raises
            raise OSError("no answer from the Docker engine")
        if response.will_close:
            self.close()
        if response.status >= 400:
            try:
                message = str(json.loads(body).get("message") or "")
            except (ValueError, AttributeError):
                message = body.decode("utf-8", "replace")[:200]
            cls = EngineNotFound if response.status == 404 else EngineError
            raise cls(response.status, message or response.reason)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise EngineError(0, f"the engine at {self.path} did not answer with JSON ({exc})") from exc

    def containers(self, all: bool = False, filters: Optional[Mapping[str, Any]] = None) -> list:
        """``GET /containers/json``: the list summaries (``all``: every state)."""
        query = {"all": "1" if all else "0"}
        if filters:
            query["filters"] = json.dumps({k: v if isinstance(v, list) else [v] for k, v in filters.items()})
        return self._get("/containers/json?" + urllib.parse.urlencode(query))

    def inspect_container(self, container: str) -> dict:
        """``GET /containers/{id}/json``: the inspect document; ``EngineNotFound`` when it is gone."""
        return self._get(f"/containers/{urllib.parse.quote(str(container), safe='')}/json")

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
