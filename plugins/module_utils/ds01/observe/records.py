"""The records observability works on: ``Holding`` (one container, whichever source described it),
the constants of the package, and the small value helpers."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .. import config as config_mod
from .. import lifecycle as lc

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


@dataclass
class Holding:
    """One container as observability needs it, whichever source described it."""

    id: str
    name: str
    user: Optional[str]
    state: str
    type: str
    slots: tuple = ()
    uuids: tuple = ()
    gpueq: float = 0.0
    managed: bool = False
    unmanaged_gpu: bool = False
    started_at: Optional[str] = None
    created_at: Optional[str] = None
    finished_at: Optional[str] = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def holds_gpu(self) -> bool:
        return bool(self.slots or self.uuids)

    @property
    def owner(self) -> Optional[str]:  # the name docker_state.ContainerInfo and the allocator use
        return self.user

    def as_dict(self) -> dict:
        out = asdict(self)
        out["slots"], out["uuids"] = list(self.slots), list(self.uuids)
        out.pop("labels")
        return out


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


def holding_from_labels(
    cid: str,
    name: str,
    state: str,
    labels: Mapping[str, str],
    *,
    started_at: Any = None,
    created_at: Any = None,
    finished_at: Any = None,
    unmanaged_gpu: bool = False,
    weights: Optional[Mapping[str, float]] = None,
) -> Holding:
    """A ``Holding`` from a container's ds01 labels (``ds01.user``, ``ds01.gpu.*``, type)."""
    slots = split_list(labels.get("ds01.gpu.slots"))
    gpueq = to_float(labels.get("ds01.gpu.gpueq"), -1.0)
    if gpueq < 0:
        gpueq = weigh(slots, weights or {})
    return Holding(
        id=cid,
        name=name,
        user=labels.get("ds01.user") or None,
        state=(state or "unknown").lower(),
        type=lc.container_type_of(labels),
        slots=slots,
        uuids=split_list(labels.get("ds01.gpu.uuids") or labels.get("ds01.gpu.uuid")),
        gpueq=gpueq,
        managed=str(labels.get("ds01.managed", "")).lower() in ("1", "true", "yes"),
        unmanaged_gpu=unmanaged_gpu,
        started_at=epoch_iso(started_at),
        created_at=epoch_iso(created_at),
        finished_at=epoch_iso(finished_at),
        labels=dict(labels),
    )


def weigh(slots: Iterable[str], weights: Mapping[str, float]) -> float:
    """GPU-equivalents of slot ids from the inventory's weights; an unknown whole-GPU id is 1.0."""
    total = 0.0
    for slot in slots:
        if slot in weights:
            total += weights[slot]
        elif "." not in slot:
            total += 1.0
    return total


def holdings_from_summaries(summaries: Iterable[Mapping[str, Any]], weights: Mapping[str, float]) -> list:
    """Holdings from Docker's list call (``GET /containers/json?all=1``) entries."""
    out = []
    for s in summaries:
        names = s.get("Names") or []
        name = names[0].lstrip("/") if names else str(s.get("Id", ""))[:12]
        out.append(
            holding_from_labels(
                str(s.get("Id", "")),
                name,
                str(s.get("State") or ""),
                s.get("Labels") or {},
                created_at=s.get("Created"),
                weights=weights,
            )
        )
    return out


def holdings_from_inventory(doc: Mapping[str, Any], weights: Mapping[str, float]) -> list:
    """Holdings from the detector's inventory records (see the ``detector`` package docstring)."""
    out = []
    for record in (doc.get("containers") or {}).values():
        slots = split_list(record.get("gpu_slots"))
        uuids = tuple(d for d in split_list(record.get("gpu_devices")) if d.startswith(("GPU-", "MIG-")))
        origin = record.get("origin") or "unknown"
        ctype = record.get("container_type") or origin
        out.append(
            Holding(
                id=str(record.get("id") or ""),
                name=str(record.get("name") or ""),
                user=record.get("user") or None,
                state=str(record.get("status") or "unknown"),
                type=ctype if ctype in config_mod.CONTAINER_TYPES else _origin_type(origin),
                slots=slots,
                uuids=uuids if slots else (),
                gpueq=weigh(slots, weights),
                managed=bool(record.get("managed")),
                unmanaged_gpu=bool(record.get("unmanaged_gpu")),
                started_at=epoch_iso(record.get("started_at")),
                created_at=epoch_iso(record.get("created")),
            )
        )
    return out


def _origin_type(origin: str) -> str:
    return {"devcontainer": "devcontainer", "compose": "compose", "raw-docker": "docker"}.get(origin, "unknown")


def count_error(snap: dict, component: str) -> None:
    errors = snap.setdefault("errors", {})
    errors[component] = errors.get(component, 0) + 1
