"""The gateway's own questions to the daemon (as root, on the daemon's socket): inspect, list, count."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional
from urllib.parse import quote

from .. import identity
from . import http

QUERY_TIMEOUT_S = 15.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# The daemon writes a streamed log one line per write(): read as they come, 100 MB of log is a
# million wake-ups. After a small piece, reading pauses this long so the next read takes what
# accumulated meanwhile; a line arriving after a quiet spell still passes at once.
GATHER_S = 0.001
GATHER_BELOW = 64 * 1024


async def gather_more(transport: asyncio.BaseTransport, got: int) -> None:
    """After a piece of ``got`` bytes read from ``transport`` (a stream's daemon side): let more arrive."""
    if got >= GATHER_BELOW or not isinstance(transport, asyncio.ReadTransport) or transport.is_closing():
        return
    transport.pause_reading()
    try:
        await asyncio.sleep(GATHER_S)
    finally:
        if not transport.is_closing():
            transport.resume_reading()


class UpstreamError(Exception):
    """The daemon could not be asked (socket missing, timeout, garbage)."""


class DaemonRefused(UpstreamError):
    """The daemon answered a question the gateway asked for a request with a 4xx: the request named something it
    does not take (an ambiguous id prefix, a malformed image reference). The client's error, not a fault."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def failure(what: str, status: int, data: Any) -> UpstreamError:
    """The error for a question (``what``: "inspecting network 'x'") the daemon answered with ``status``."""
    said = str(data.get("message") or "") if isinstance(data, dict) else ""
    if 400 <= status < 500:
        return DaemonRefused(status, f"{what}: the Docker daemon says: {said or f'HTTP {status}'}")
    return UpstreamError(f"{what} failed with HTTP {status}")


class Upstream:
    def __init__(self, path: str, timeout_s: float = QUERY_TIMEOUT_S) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def open(self) -> tuple:
        try:
            return await asyncio.open_unix_connection(self.path, limit=http.MAX_HEAD_BYTES)
        except OSError as exc:
            raise UpstreamError(f"cannot reach the Docker daemon at {self.path}: {exc.strerror or exc}") from None

    async def request(self, method: str, target: str, body: Optional[Any] = None) -> tuple:
        """(status, parsed JSON or None) for one request on a fresh connection."""
        try:
            return await asyncio.wait_for(self._request(method, target, body), self.timeout_s)
        except asyncio.TimeoutError:
            raise UpstreamError(
                f"the Docker daemon did not answer {method} {target} within {self.timeout_s:g}s"
            ) from None

    async def _request(self, method: str, target: str, body: Optional[Any]) -> tuple:
        reader, writer = await self.open()
        try:
            payload = b"" if body is None else json.dumps(body).encode()
            head = f"{method} {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            writer.write(head.encode() + b"\r\n" + payload)
            await writer.drain()
            try:
                raw = await http.read_head(reader)
                if raw is None:
                    raise UpstreamError("the Docker daemon closed the connection without answering")
                response = http.parse_response_head(raw)
                framing = http.response_framing(response, method)
                parts, total = [], 0
                async for piece in http.iter_body(reader, framing, error_status=502):
                    parts.append(piece)
                    total += len(piece)
                    if total > MAX_ANSWER_BYTES:
                        raise UpstreamError("the Docker daemon's answer is too large")
                data = b"".join(parts)
            except http.HttpError as exc:
                raise UpstreamError(f"the Docker daemon sent a malformed answer: {exc.message}") from None
            parsed = None
            if data:
                try:
                    parsed = json.loads(data)
                except ValueError:
                    parsed = None
            return response.status, parsed
        except OSError as exc:
            raise UpstreamError(f"lost the connection to the Docker daemon: {exc}") from None
        finally:
            writer.close()

    # -- questions ----------------------------------------------------------------------------
    async def inspect_container(self, ref: str) -> Optional[dict]:
        # "/name" is how the daemon writes names; in a path, "%2Fname" gets a redirect instead of the container
        status, data = await self.request("GET", f"/containers/{quote(ref.lstrip('/'), safe='')}/json")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise failure(f"inspecting container {ref!r}", status, data)
        return data

    async def inspect_exec(self, exec_id: str) -> Optional[dict]:
        status, data = await self.request("GET", f"/exec/{quote(exec_id, safe='')}/json")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise failure(f"inspecting exec {exec_id!r}", status, data)
        return data

    async def image_config(self, image: str) -> Optional[dict]:
        """The image's Config (Env, Labels, User, …), or None when the image is not present."""
        status, data = await self.request("GET", f"/images/{quote(image, safe='/:@')}/json")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise failure(f"inspecting image {image!r}", status, data)
        return dict(data.get("Config") or {})

    async def image_env(self, image: str) -> Optional[list]:
        """The image's default Env, or None when the image is not present (create will fail on it)."""
        config = await self.image_config(image)
        return None if config is None else list(config.get("Env") or [])

    async def labels_of(self, kind: str, name: str) -> Optional[dict]:
        """Labels of a volume or network; None when it does not exist."""
        status, data = await self.request("GET", f"/{kind}s/{quote(name, safe='')}")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise failure(f"inspecting {kind} {name!r}", status, data)
        return data.get("Labels") or {}

    async def containers_of(self, login: str) -> list:
        filters = json.dumps({"label": [f"ds01.user={login}"]})
        status, data = await self.request("GET", f"/containers/json?all=1&filters={quote(filters)}")
        if status != 200 or not isinstance(data, list):
            raise failure("listing containers", status, data)
        return data

    async def image_tags(self, name: str) -> Optional[tuple]:
        """(image id, RepoTags, labels) of the image ``name`` selects (tag, id, id prefix or digest); None if none."""
        status, data = await self.request("GET", f"/images/{quote(name, safe='/:@')}/json")
        if status in (400, 404):
            return None
        if status != 200 or not isinstance(data, dict):
            raise failure(f"inspecting image {name!r}", status, data)
        return (
            str(data.get("Id") or ""),
            list(data.get("RepoTags") or []),
            dict((data.get("Config") or {}).get("Labels") or {}),
        )

    async def inspect_network(self, ref: str) -> Optional[dict]:
        """A network's inspect answer (Id, Name, Labels ...); None when there is no such network."""
        status, data = await self.request("GET", f"/networks/{quote(ref, safe='')}")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise failure(f"inspecting network {ref!r}", status, data)
        return data

    async def container_owners_of_volume(self, name: str) -> list:
        """The owners (``identity.container_owner``) of every container that mounts volume ``name``."""
        filters = json.dumps({"volume": [name]})
        status, data = await self.request("GET", f"/containers/json?all=1&filters={quote(filters)}")
        if status != 200 or not isinstance(data, list):
            raise failure(f"listing the containers of volume {name!r}", status, data)
        owners = []
        for item in data:
            names = (item.get("Names") or [""]) if isinstance(item, dict) else [""]
            attrs = {"Name": names[0], "Config": {"Labels": (item or {}).get("Labels") or {}}}
            owners.append(identity.container_owner(attrs)[0] or "")
        return owners
