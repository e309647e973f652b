"""Containers read from Docker (through the ``docker`` package) when the detector's inventory is stale."""

from __future__ import annotations

from typing import Any

from .. import docker
from ..record import replace


def inspect_cache() -> Any:
    """A ``docker.InspectCache`` for a long-lived reader (the exporter's ``Observer``)."""
    return docker.InspectCache()


def docker_containers(client: Any, inventory: Any = None, cache: Any = None) -> list:
    """``docker.ContainerInfo`` of every container from ``docker.list_containers`` (one list call;
    inspects only of containers the ``InspectCache`` does not know yet), slots resolved against the
    GPU inventory; a container Docker gave no state is ``unknown``."""
    return [
        info if info.state else replace(info, state="unknown")
        for info in docker.list_containers(client, inventory, cache=cache, on_error=docker.skip_unreadable)
    ]


def docker_client_from_env(timeout: float = 10.0) -> Any:
    return docker.client_from_env(timeout)
