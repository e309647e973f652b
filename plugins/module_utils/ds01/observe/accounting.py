"""GPU slots and their holders, per-user usage against quota (pure over gathered facts; the slot
table comes from ``gpu.py``'s inventory). Containers are ``docker.ContainerInfo``, from Docker or the
detector's inventory; what observability reads of one (the slots it holds, its GPU-equivalents, its
type for the limits, whether it uses GPUs without an allocation) is worked out here."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from .. import config as config_mod
from .. import docker, gpu
from .. import lifecycle as lc
from .records import to_float, weigh

_ORIGIN_TYPES = {"devcontainer": "devcontainer", "compose": "compose", "raw-docker": "docker"}


def _labels_only(info: docker.ContainerInfo) -> bool:
    """Read from a list summary: no inspect, no cached facts, no detector entry (its labels are its record)."""
    return info.facts is None and info.attrs is None and info.detected is None


def held_slots(info: docker.ContainerInfo) -> tuple:
    """The slot ids a container holds: its DeviceRequests resolved against the inventory (or the
    detector's ``gpu_slots``), else its ``ds01.gpu.slots`` label."""
    return tuple(info.slots) or info.labelled_slots


def holds_gpu(info: docker.ContainerInfo) -> bool:
    return bool(held_slots(info) or info.uuids)


def container_gpueq(info: docker.ContainerInfo, weights: Mapping[str, float]) -> float:
    """GPU-equivalents a container holds: its resolved slots weighed by the inventory's weights
    (``slot_weights``). Slots known only from the label: its ``ds01.gpu.gpueq`` label, read from
    Docker only for a container labelled with slots; from a list summary, the label when it is a
    number of at least 0, else the labelled slots weighed."""
    if info.slots:
        return weigh(info.slots, weights)
    label = info.labels.get(docker.GPUEQ_LABEL)
    if _labels_only(info):
        value = to_float(label, -1.0)
        return value if value >= 0 else weigh(info.labelled_slots, weights)
    return to_float(label, 0.0) if info.labelled_slots else 0.0


def container_type(info: docker.ContainerInfo) -> str:
    """Its type for the limits (``lifecycle.container_type_of`` of its labels); from the detector's
    inventory: the entry's ``container_type`` when it names one of the config's types, else its origin's."""
    if info.detected is not None:
        origin = info.detected.get("origin") or "unknown"
        ctype = info.detected.get("container_type") or origin
        return ctype if ctype in config_mod.CONTAINER_TYPES else _ORIGIN_TYPES.get(origin, "unknown")
    return lc.container_type_of(info.labels)


def unmanaged_gpu(info: docker.ContainerInfo) -> bool:
    """It reaches GPUs without a ds01 allocation: the detector's finding for an inventory entry; read
    from Docker, it asked for GPUs and has no ``ds01.gpu.slots`` label and is not infrastructure
    (``ds01.protected`` / ``ds01.monitoring``); a list summary says nothing of it (False)."""
    if info.detected is not None:
        return bool(info.detected.get("unmanaged_gpu"))
    if _labels_only(info):
        return False
    labels = info.labels
    infra = (
        str(labels.get("ds01.protected", "")).lower() == "true"
        or str(labels.get("ds01.monitoring", "")).lower() == "true"
    )
    return bool(info.has_gpu and docker.SLOTS_LABEL not in labels and not infra)


def slot_table(inventory: Any) -> list:
    """``[{gpu, slot, uuid, kind, profile, gpueq}]`` for every allocatable slot of ``gpu.Inventory``
    (weights from ``gpu.gpueq``, the one weight function)."""
    rows = []
    for slot in inventory.slots():
        rows.append(
            {
                "gpu": int(slot.gpu_index),
                "slot": str(slot.slot_id),
                "uuid": str(slot.uuid),
                "kind": slot.kind,
                "profile": slot.profile,
                "gpueq": float(gpu.gpueq(slot)),
            }
        )
    return rows


def load_gpu_inventory(config: config_mod.Config) -> Any:
    return gpu.inventory_from_config(config)


def assign_holders(slots: Sequence[Mapping[str, Any]], holdings: Iterable[docker.ContainerInfo]) -> list:
    """Each slot row with ``container``/``user`` of the container holding it (by UUID, else slot id), and
    ``holders``: how many containers hold it (more than one is a double booking, alerted on)."""
    by_uuid: dict = {}
    by_slot: dict = {}
    for h in holdings:
        for uuid in h.uuids:
            by_uuid.setdefault(uuid, []).append(h)
        for slot in held_slots(h):
            by_slot.setdefault(slot, []).append(h)
    out = []
    for slot in slots:
        row = dict(slot)
        found = {id(h): h for h in by_uuid.get(row.get("uuid"), []) + by_slot.get(row["slot"], [])}
        holders = list(found.values())
        if holders:
            row["container"], row["user"] = holders[0].name, holders[0].owner
        row["holders"] = len(holders)
        out.append(row)
    return out


def slot_weights(slots: Iterable[Mapping[str, Any]]) -> dict:
    return {row["slot"]: float(row["gpueq"]) for row in slots}


def user_totals(holdings: Iterable[docker.ContainerInfo], weights: Mapping[str, float]) -> dict:
    """login → {gpueq, slots, containers} over every container the login owns (any state); gpueq by
    ``container_gpueq`` with the inventory's ``weights``."""
    out: dict = {}
    for h in holdings:
        if not h.owner:
            continue
        row = out.setdefault(h.owner, {"gpueq": 0.0, "slots": 0, "containers": 0})
        row["containers"] += 1
        row["gpueq"] = round(row["gpueq"] + container_gpueq(h, weights), 6)
        row["slots"] += len(held_slots(h))
    return out


def memory_limit_bytes(value: Optional[str], total_ram: Optional[int] = None) -> Optional[int]:
    """A systemd size (``64G``, ``80%``, ``infinity``) in bytes; None when unlimited or unknown."""
    if value is None:
        return None
    text = str(value).strip()
    if text in ("", "infinity"):
        return None
    if text.endswith("%"):
        if not total_ram:
            return None
        return int(total_ram * float(text[:-1]) / 100.0)
    try:
        return config_mod.parse_size(text)
    except (ValueError, TypeError):
        return None


def host_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def quota_measures(totals: Mapping[str, Any], limits: config_mod.Limits, memory_current: Optional[int]) -> dict:
    """The three measures the quota alerts watch: ``{name: (used, limit or None)}``."""
    aggregate_max = limits.aggregate.memory_max if limits.aggregate else None
    measures = {
        "gpu": (float(totals.get("gpueq", 0.0)), limits.gpu_quota),
        "containers": (float(totals.get("containers", 0)), limits.max_containers_per_user),
    }
    mem_limit = memory_limit_bytes(aggregate_max, host_memory_bytes())
    if memory_current is not None and mem_limit:
        measures["memory"] = (float(memory_current), float(mem_limit))
    return measures


def usage_bar(used: float, limit: Optional[float], width: int = 10) -> str:
    """``[#####.....] 50%``; unlimited: ``(no limit)``."""
    if limit is None:
        return "(no limit)"
    ratio = used / limit if limit > 0 else 1.0
    filled = min(width, max(0, round(ratio * width)))
    return "[" + "#" * filled + "." * (width - filled) + f"] {ratio * 100:.0f}%"
