"""The lifecycle's Docker adapter: facts from the list call (and inspect), and ``DockerOps``, the only
code of the lifecycle that talks to Docker."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Optional

from .. import config as config_mod
from .. import docker
from .model import OWNER_LABEL, TYPE_LABEL, WORKSPACE, ContainerFacts, parse_time


def container_type_of(labels: Mapping[str, str]) -> str:
    value = labels.get(TYPE_LABEL)
    if value in config_mod.CONTAINER_TYPES:
        return value
    if any(k.startswith("devcontainer.") for k in labels):
        return "devcontainer"
    if "com.docker.compose.project" in labels:
        return "compose"
    return "unknown"


def _split(value: Optional[str]) -> tuple:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _gpueq(labels: Mapping[str, str]) -> float:
    try:
        return float(labels.get("ds01.gpu.gpueq") or 0.0)
    except ValueError:
        return 0.0


def facts_from_api(summary: Mapping[str, Any], inspect: Optional[Mapping[str, Any]] = None) -> ContainerFacts:
    """Facts from one entry of the list call (and, when read, its inspect document)."""
    labels = dict(summary.get("Labels") or {})
    names = summary.get("Names") or []
    name = names[0].lstrip("/") if names else summary["Id"][:12]
    state = str(summary.get("State") or "").lower()
    created = parse_time(summary.get("Created")) or dt.datetime.fromtimestamp(0, dt.timezone.utc)
    started = finished = pid = None
    workspace = device_gpu = False
    if inspect:
        st = inspect.get("State") or {}
        state = str(st.get("Status") or state).lower()
        started = parse_time(st.get("StartedAt"))
        finished = parse_time(st.get("FinishedAt"))
        pid = int(st.get("Pid") or 0) or None
        workspace = any((m.get("Destination") == WORKSPACE) for m in inspect.get("Mounts") or [])
        device_gpu = any(
            isinstance(req, Mapping) and docker.device_request_reaches_gpu(req)
            for req in (inspect.get("HostConfig") or {}).get("DeviceRequests") or []
        )
    return ContainerFacts(
        id=summary["Id"],
        name=name,
        state=state,
        owner=labels.get(OWNER_LABEL) or None,
        container_type=container_type_of(labels),
        labels=labels,
        created_at=created,
        started_at=started,
        finished_at=finished,
        gpu_slots=_split(labels.get("ds01.gpu.slots")),
        gpu_uuids=_split(labels.get("ds01.gpu.uuids") or labels.get("ds01.gpu.uuid")),
        gpueq=_gpueq(labels),
        device_request_gpu=device_gpu,
        pid=pid,
        workspace_mounted=workspace,
    )


class DockerOps:
    """The only code here that talks to Docker: one list call, inspect where a rule needs times,
    keep-alive stat (HEAD of the archive endpoint), and the actions — each scoped to one container."""

    def __init__(self, client: Any, filters: Optional[Mapping[str, Any]] = None) -> None:
        self.client = client
        self.api = client.api
        self.filters = dict(filters or {})  # e.g. {"label": ["ds01.test=1"]}: tests see only their own

    def list_containers(self) -> list:
        return self.api.containers(all=True, filters=self.filters or None)

    def inspect(self, cid: str) -> Optional[dict]:
        """The inspect document, or None when the container was removed since the list call."""
        try:
            return self.api.inspect_container(cid)
        except docker.NotFound:
            return None

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
