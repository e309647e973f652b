"""Holdings read from Docker (through the ``docker`` package) when the detector's inventory is stale."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import docker
from .. import lifecycle as lc
from .records import Holding, iso, split_list, to_float, weigh


def inspect_cache() -> Any:
    """A ``docker.InspectCache`` for a long-lived reader (the exporter's ``Observer``)."""
    return docker.InspectCache()


def docker_holdings(client: Any, weights: Mapping[str, float], inventory: Any = None, cache: Any = None) -> list:
    """Holdings from ``docker.list_containers`` (one list call; inspects only of containers the
    ``InspectCache`` does not know yet), slots resolved against the GPU inventory."""
    return [holding_from_info(info, weights) for info in docker.list_containers(client, inventory, cache=cache)]


def holding_from_info(info: Any, weights: Mapping[str, float]) -> Holding:
    """A ``Holding`` from a ``docker.ContainerInfo``: slots from its DeviceRequests (the record
    of what it holds), gpueq from the inventory's weights (the label when slots are unresolved)."""
    labels = dict(info.labels or {})
    slots = tuple(info.slots) or split_list(labels.get("ds01.gpu.slots"))
    labelled = to_float(labels.get("ds01.gpu.gpueq"), 0.0) if slots else 0.0
    gpueq = weigh(slots, weights) if info.slots else labelled
    infra = (
        str(labels.get("ds01.protected", "")).lower() == "true"
        or str(labels.get("ds01.monitoring", "")).lower() == "true"
    )
    return Holding(
        id=info.id,
        name=info.name,
        user=info.owner,
        state=(info.state or "unknown").lower(),
        type=lc.container_type_of(labels),
        slots=slots,
        uuids=tuple(info.uuids),
        gpueq=gpueq,
        managed=bool(info.managed),
        unmanaged_gpu=bool(info.has_gpu and "ds01.gpu.slots" not in labels and not infra),
        started_at=iso(info.started_at),
        created_at=iso(info.created),
        finished_at=iso(info.finished_at),
        labels=labels,
    )


def docker_client_from_env(timeout: float = 10.0) -> Any:
    return docker.client_from_env(timeout)
