"""``ds01 why``: when does a GPU free up, and which containers to remove to get under a quota (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from .. import config as config_mod
from .. import docker
from .. import lifecycle as lc
from ..record import record
from .accounting import container_gpueq, container_type, held_slots
from .records import SWEEP_MARGIN, iso, to_float


@record(frozen=True)
class Release:
    container: str
    user: Optional[str]
    slots: tuple
    gpueq: float
    at: Optional[dt.datetime]  # None: no cap applies, nobody can tell
    reason: str

    def as_dict(self) -> dict:
        return {
            "container": self.container,
            "user": self.user,
            "slots": list(self.slots),
            "gpueq": self.gpueq,
            "expected_free_at": iso(self.at),
            "reason": self.reason,
        }


def estimate_release(
    holder: docker.ContainerInfo,
    limits: Optional[config_mod.Limits],
    state: Mapping[str, Any],
    now: dt.datetime,
    weights: Mapping[str, float],
) -> Release:
    """The earliest time the lifecycle frees ``holder``'s GPU, from its owner's limits and its
    lifecycle state (first start, idle streak); pure. ``weights``: slot → gpueq (``slot_weights``)."""
    candidates: list = []
    ctype = container_type(holder)
    if limits is not None:
        hold_h = limits.gpu_hold_after_stop_h
        if holder.state in lc.STOPPED_STATES:
            finished = lc.parse_time(holder.finished_at) or lc.parse_time(state.get("finished_at"))
            if hold_h is not None and not limits.exemption_for("gpu_hold_after_stop_h", now, holder.name):
                base = finished or now
                candidates.append(
                    (base + dt.timedelta(hours=hold_h), f"stopped; its GPU is released {hold_h:g} h after the stop")
                )
        elif holder.state in lc.RUNNING_STATES:
            run_h = lc.effective_timeout(limits, ctype, "max_runtime_h")
            first = lc.parse_time(state.get("first_started_at")) or lc.parse_time(holder.started_at)
            if run_h is not None and first is not None and not limits.exemption_for("max_runtime_h", now, holder.name):
                at = first + dt.timedelta(hours=run_h) + dt.timedelta(hours=hold_h or 0.0)
                candidates.append((at, f"max runtime {run_h:g} h since its first start"))
            idle_h = lc.effective_timeout(limits, ctype, "idle_timeout_h")
            streak = int(state.get("idle_streak", 0) or 0)
            if idle_h is not None and streak > 0 and not limits.exemption_for("idle_timeout_h", now, holder.name):
                since = lc.parse_time(state.get("last_active")) or first or now
                candidates.append((since + dt.timedelta(hours=idle_h), f"idle; stopped after {idle_h:g} h idle"))
        elif holder.state == "created":
            timeout_m = limits.policies.created_container_timeout_m
            created = lc.parse_time(holder.created)
            if timeout_m is not None and created is not None:
                candidates.append(
                    (created + dt.timedelta(minutes=timeout_m), "never started; removed after the created timeout")
                )
    slots, gpueq = held_slots(holder), container_gpueq(holder, weights)
    if not candidates:
        return Release(holder.name, holder.owner, slots, gpueq, None, "no runtime cap or idle stop applies")
    at, reason = min(candidates, key=lambda c: c[0])
    at = max(at, now) + SWEEP_MARGIN
    return Release(holder.name, holder.owner, slots, gpueq, at, reason)


def removal_advice(
    code: str,
    mine: Sequence[docker.ContainerInfo],
    details: Mapping[str, Any],
    limits: config_mod.Limits,
    weights: Mapping[str, float],
) -> list:
    """Which of the user's containers to remove to get under a quota (stopped ones first)."""
    gpueq = {id(h): container_gpueq(h, weights) for h in mine}

    def order(h: docker.ContainerInfo) -> tuple:
        return (h.state in lc.RUNNING_STATES, -gpueq[id(h)], h.name)

    if code in ("USER_AT_LIMIT", "AGGREGATE_GPU_QUOTA_EXCEEDED"):
        quota = limits.gpu_quota
        held = sum(gpueq[id(h)] for h in mine)
        want = to_float(details.get("requested_gpueq") or details.get("gpueq") or details.get("requested"), 0.0)
        need = held + want - quota if quota is not None else 0.0
        out, freed = [], 0.0
        for h in sorted((h for h in mine if gpueq[id(h)] > 0), key=order):
            if freed >= need - 1e-9 and out:
                break
            out.append(h)
            freed += gpueq[id(h)]
        return out
    if code == "CONTAINER_LIMIT":
        cap = limits.max_containers_per_user or 0
        extra = max(1, len(mine) - cap + 1)
        return sorted(mine, key=order)[:extra]
    return []
