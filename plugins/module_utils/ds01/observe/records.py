"""The records observability works on: ``docker.ContainerInfo`` built from Docker's list call or the
detector's inventory (the same record the allocator and the lifecycle take), the constants of the
package, and the small value helpers."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from .. import docker, identity
from .. import lifecycle as lc
from ..record import replace

FRESH_S = 90.0  # the detector watcher saves every 30 s sweep: three missed sweeps is stale
WINDOW_S = 24 * 3600.0
EXPORTER_SUBDIR = "exporter"
OOM_FILE = "oom-counts.json"
SLOTS_FILE = "gpu-slots.json"
GATEWAY_COUNTERS = os.path.join("gateway", "metrics.json")  # under run_dir, when the gateway publishes it
REFUSAL_EVENTS = frozenset({"gpu.reject", "auth.denied", "gateway.refused"})
OOM_EVENT = "resource.oom_kill"
ALERT_EVENT = "quota.alert"
QUOTA_CODES = frozenset({"USER_AT_LIMIT", "AGGREGATE_GPU_QUOTA_EXCEEDED", "CONTAINER_LIMIT"})
SWEEP_MARGIN = dt.timedelta(minutes=5)  # the lifecycle timer's period: actions land within one sweep


def split_list(value: Any) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value if str(v).strip())
    return tuple(v.strip() for v in str(value or "").split(",") if v.strip())


def to_float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def iso(when: Optional[dt.datetime]) -> Optional[str]:
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z") if when else None


def epoch_iso(value: Any) -> Optional[str]:
    if isinstance(value, (int, float)) and value > 0:
        return iso(dt.datetime.fromtimestamp(value, dt.timezone.utc))
    parsed = lc.parse_time(value) if value else None
    return iso(parsed)


def weigh(slots: Iterable[str], weights: Mapping[str, float]) -> float:
    """GPU-equivalents of slot ids from the inventory's weights; an unknown whole-GPU id is 1.0."""
    total = 0.0
    for slot in slots:
        if slot in weights:
            total += weights[slot]
        elif "." not in slot:
            total += 1.0
    return total


def container_from_summary(summary: Mapping[str, Any]) -> docker.ContainerInfo:
    """The record of one entry of Docker's list call (``GET /containers/json?all=1``): a summary
    carries no DeviceRequests, so its ds01 labels are what it holds (``uuids`` from
    ``ds01.gpu.uuids``; ``slots`` stay unresolved and ``accounting.held_slots`` reads the label)
    and its owner is its ``ds01.user`` label as written."""
    labels = dict(summary.get("Labels") or {})
    names = summary.get("Names") or []
    cid = str(summary.get("Id", ""))
    owner = labels.get(identity.OWNER_LABEL) or None
    claim = docker.gpu_claim({}, labels)
    info = docker.ContainerInfo(
        id=cid,
        name=names[0].lstrip("/") if names else cid[:12],
        state=str(summary.get("State") or "unknown").lower(),
        owner=owner,
        owner_method=identity.OWNER_BY_LABEL if owner else identity.OWNER_UNKNOWN,
        labels=labels,
        image=str(summary.get("Image") or ""),
        created=docker.parse_time(summary.get("Created")),
        gpu=claim,
    )
    return replace(info, uuids=info.labelled_uuids)


def containers_from_summaries(summaries: Iterable[Mapping[str, Any]]) -> list:
    """Records of Docker's list call entries (``container_from_summary``)."""
    return [container_from_summary(s) for s in summaries]


def containers_from_inventory(doc: Mapping[str, Any]) -> list:
    """Records of the detector's inventory entries (``docker.ContainerInfo.from_inventory``)."""
    return [docker.ContainerInfo.from_inventory(record) for record in (doc.get("containers") or {}).values()]


def count_error(snap: dict, component: str) -> None:
    errors = snap.setdefault("errors", {})
    errors[component] = errors.get(component, 0) + 1
