"""GPU slots and their holders, per-user usage against quota (pure over gathered facts; the slot
table comes from ``gpu.py``'s inventory)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from .. import config as config_mod
from .. import gpu
from .records import Holding


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


def assign_holders(slots: Sequence[Mapping[str, Any]], holdings: Iterable[Holding]) -> list:
    """Each slot row with ``container``/``user`` of the container holding it (by UUID, else slot id), and
    ``holders``: how many containers hold it (more than one is a double booking, alerted on)."""
    by_uuid: dict = {}
    by_slot: dict = {}
    for h in holdings:
        for uuid in h.uuids:
            by_uuid.setdefault(uuid, []).append(h)
        for slot in h.slots:
            by_slot.setdefault(slot, []).append(h)
    out = []
    for slot in slots:
        row = dict(slot)
        found = {id(h): h for h in by_uuid.get(row.get("uuid"), []) + by_slot.get(row["slot"], [])}
        holders = list(found.values())
        if holders:
            row["container"], row["user"] = holders[0].name, holders[0].user
        row["holders"] = len(holders)
        out.append(row)
    return out


def slot_weights(slots: Iterable[Mapping[str, Any]]) -> dict:
    return {row["slot"]: float(row["gpueq"]) for row in slots}


def user_totals(holdings: Iterable[Holding]) -> dict:
    """login → {gpueq, slots, containers} over every container the login owns (any state)."""
    out: dict = {}
    for h in holdings:
        if not h.user:
            continue
        row = out.setdefault(h.user, {"gpueq": 0.0, "slots": 0, "containers": 0})
        row["containers"] += 1
        row["gpueq"] = round(row["gpueq"] + h.gpueq, 6)
        row["slots"] += len(h.slots)
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
