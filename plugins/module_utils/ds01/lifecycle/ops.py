"""The lifecycle's Docker adapter: ``DockerOps``, the only code of the lifecycle that talks to Docker.
Containers are read through the docker package (``docker.list_containers``, ``docker.ContainerInfo``)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Callable, Optional

from .. import docker
from .model import parse_time


def _started(summary: Mapping[str, Any]) -> bool:
    """A container that has run has times the rules read (only a full inspect gives them)."""
    return str(summary.get("State") or "").lower() != "created"


class DockerOps:
    """The only code here that talks to Docker: one list call (through ``docker.list_containers``;
    running and stopped containers are inspected for their times, pid and mounts), keep-alive stat
    (HEAD of the archive endpoint), and the actions — each scoped to one container."""

    def __init__(
        self, client: Any, filters: Optional[Mapping[str, Any]] = None, cache: Optional[docker.InspectCache] = None
    ) -> None:
        self.client = client
        self.api = client.api
        self.filters = dict(filters or {})  # e.g. {"label": ["ds01.test=1"]}: tests see only their own
        self.cache = cache if cache is not None else docker.InspectCache()

    def list_containers(self, on_error: Optional[Callable[[Mapping[str, Any], Exception], None]] = None) -> list:
        """Every container as ``docker.ContainerInfo``; a container that could not be read goes to
        ``on_error(summary, error)`` and is left out."""
        return docker.list_containers(
            self.client,
            cache=self.cache,
            detail=_started,
            filters=self.filters or None,
            on_error=on_error,
        )

    def path_stat(self, cid: str, path: str) -> Optional[dict]:
        """``docker cp``'s stat of a path inside the container (no copy), or None when absent."""
        url = self.api._url("/containers/{0}/archive", cid)
        response = self.api.head(url, params={"path": path})
        if response.status_code == 404:
            return None
        try:
            self.api._raise_for_status(response)
        except docker.NotFound:
            return None
        header = response.headers.get("X-Docker-Container-Path-Stat")
        if not header:
            return None
        try:
            return json.loads(base64.b64decode(header))
        except (ValueError, binascii.Error):
            return None

    def keepalive_mtime(self, cid: str, path: str) -> Optional[dt.datetime]:
        stat = self.path_stat(cid, path)
        return parse_time(stat.get("mtime")) if stat else None

    def kill(self, cid: str, signal: str) -> bool:
        """Signal the container's PID 1 (Docker signals nothing else); False when it is gone."""
        try:
            self.api.kill(cid, signal=signal)
        except docker.NotFound:
            return False
        return True

    def stop(self, cid: str, grace_s: float) -> bool:
        """SIGTERM to the container, SIGKILL after ``grace_s``; False when it is already gone."""
        try:
            self.api.stop(cid, timeout=round(grace_s))
        except docker.NotFound:
            return False
        return True

    def remove(self, cid: str) -> bool:
        """Remove a stopped container (its volumes stay); False when someone removed it first."""
        try:
            self.api.remove_container(cid, v=False, force=False)
        except docker.NotFound:
            return False
        return True
