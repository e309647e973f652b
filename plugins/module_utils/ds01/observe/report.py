"""``ds01 limits``: quota and usage side by side, and the one-line login brief (pure over gathered
facts)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from .. import config as config_mod
from .. import docker, notify, quota_alerts
from .accounting import (
    container_gpueq,
    container_type,
    held_slots,
    holds_gpu,
    host_memory_bytes,
    memory_limit_bytes,
    usage_bar,
)
from .records import iso, to_float


def limits_report(
    limits: config_mod.Limits,
    *,
    mine: Sequence[docker.ContainerInfo],
    weights: Mapping[str, float],
    slice_usage: Optional[Mapping[str, Any]],
    alerts: Mapping[str, Any],
    grant: Optional[Mapping[str, Any]],
    exempt_bare_metal: bool,
    now: dt.datetime,
    source: str,
    errors: Sequence[str] = (),
) -> dict:
    """The ``ds01 limits --json`` document (shape in ``cli.observe``'s docstring); ``weights``: slot →
    gpueq (``slot_weights``)."""
    gpueq = {id(h): container_gpueq(h, weights) for h in mine}
    held = round(sum(gpueq.values()), 6)
    agg = limits.aggregate if limits.slice_caps else None  # enforcement.aggregate_limits: false = no caps
    usage = slice_usage or {}
    mem_max = memory_limit_bytes(agg.memory_max if agg else None, host_memory_bytes())
    if mem_max is None:
        mem_max = usage.get("memory_max")
    types = limits.lifecycle_table()
    note = None
    if limits.safe_defaults:
        note = "no valid configuration could be loaded: the safe default limits apply"
    elif not limits.listed:
        note = f"{limits.user} is not listed in any group: the default group's limits ({limits.group}) apply"
    alert_rows = []
    for measure, entry in sorted(alerts.items()):
        alert = quota_alerts.Alert(
            measure, int(entry.get("level", 0)), to_float(entry.get("used")), to_float(entry.get("limit"))
        )
        alert_rows.append(
            {
                "measure": measure,
                "level": alert.level,
                "used": alert.used,
                "limit": alert.limit,
                "sent_at": entry.get("sent_at"),
                "sentence": alert.sentence() if measure in quota_alerts.LABELS else "",
            }
        )
    return {
        "schema_version": "1",
        "user": limits.user,
        "group": limits.group,
        "listed": limits.listed,
        "note": note,
        "now": iso(now),
        "source": source,
        "gpu": {
            "used_gpueq": held,
            "quota_gpueq": limits.gpu_quota,
            "slots": sum(len(held_slots(h)) for h in mine),
            "max_slots_per_container": limits.max_gpu_slots_per_container,
            "allow_full_gpu": limits.allow_full_gpu,
            "holders": [
                {"container": h.name, "state": h.state, "slots": list(held_slots(h)), "gpueq": gpueq[id(h)]}
                for h in sorted(mine, key=lambda h: h.name)
                if holds_gpu(h)
            ],
        },
        "containers": {
            "count": len(mine),
            "max": limits.max_containers_per_user,
            "items": [
                {"name": h.name, "state": h.state, "type": container_type(h), "gpueq": gpueq[id(h)]}
                for h in sorted(mine, key=lambda h: h.name)
            ],
        },
        "aggregate": {
            "slice": limits.slice_name,
            "slice_exists": bool(usage.get("exists")),
            "capped": limits.slice_caps,
            "memory": {
                "used_bytes": usage.get("memory_current"),
                "max_bytes": mem_max,
                "high": agg.memory_high if agg else None,
            },
            "cpu": {"quota": agg.cpu_quota if agg else None, "usage_seconds": usage.get("cpu_usage_seconds")},
            "tasks": {
                "current": usage.get("tasks_current"),
                "max": usage.get("tasks_max")
                if usage.get("tasks_max") is not None
                else (agg.tasks_max if agg else None),
            },
            "oom_kills": usage.get("oom_kills"),
        },
        "per_container": {
            "max_cpus": limits.max_cpus,
            "memory_bytes": limits.memory,
            "shm_size_bytes": limits.shm_size,
            "pids_limit": limits.pids_limit,
        },
        "lifecycle": {
            "idle_timeout_h": limits.idle_timeout_h,
            "max_runtime_h": limits.max_runtime_h,
            "gpu_hold_after_stop_h": limits.gpu_hold_after_stop_h,
            "container_hold_after_stop_h": limits.container_hold_after_stop_h,
            "by_type": types,
        },
        "exemptions": [e.as_dict() for e in limits.active_exemptions(now)],
        "bare_metal": {
            "exempt": exempt_bare_metal,
            "grant": dict(grant) if grant else None,
            "gpu_on_host": exempt_bare_metal or bool(grant and grant.get("active")),
        },
        "alerts": alert_rows,
        "errors": list(errors),
    }


def gib_text(n: Optional[float]) -> str:
    return "?" if n is None else f"{n / 1024**3:.1f}"


def num_text(value: Optional[float]) -> str:
    return "∞" if value is None else f"{value:g}"


def brief_line(report: Mapping[str, Any]) -> str:
    """The login greeting's one line: group, GPU and container usage vs quota, memory, alerts."""
    gpu, cont, mem = report["gpu"], report["containers"], report["aggregate"]["memory"]
    parts = [
        f"{report['user']} ({report['group']}{'' if report['listed'] else ', default group'})",
        f"GPU {num_text(gpu['used_gpueq'])}/{num_text(gpu['quota_gpueq'])} gpueq "
        + usage_bar(gpu["used_gpueq"], gpu["quota_gpueq"]),
        f"containers {cont['count']}/{num_text(cont['max'])}",
    ]
    if mem["used_bytes"] is not None or mem["max_bytes"] is not None:
        limit = "" if mem["max_bytes"] is None else f"/{gib_text(mem['max_bytes'])}"
        parts.append(f"memory {gib_text(mem['used_bytes'])}{limit} GiB")
    if report["alerts"]:
        alerts = ", ".join(f"{a['measure']} {a['level']}%" for a in report["alerts"])
        parts.append(f"QUOTA ALERT: {alerts} (ds01 limits)")
    line = " | ".join(parts)
    notices = report.get("notices") or []
    if not notices:
        return line
    head = f"{len(notices)} notice(s) for you since you last looked (all of the last week: ds01 limits):"
    return "\n".join([line, head] + [notify.render_record(n).rstrip("\n") for n in notices])


def hours_text(value: Optional[float]) -> str:
    return "none" if value is None else f"{value:g} h"


def limits_text(report: Mapping[str, Any]) -> str:
    """The human rendering of ``ds01 limits``."""
    gpu, cont, agg = report["gpu"], report["containers"], report["aggregate"]
    out = [f"{report['user']} — group {report['group']}"]
    if report.get("note"):
        out.append(f"  note: {report['note']}")
    full = "whole GPUs allowed" if gpu["allow_full_gpu"] else "MIG slices only"
    per = num_text(gpu["max_slots_per_container"])
    out.append(
        f"GPU         {num_text(gpu['used_gpueq'])} / {num_text(gpu['quota_gpueq'])} GPU-equivalents  "
        f"{usage_bar(gpu['used_gpueq'], gpu['quota_gpueq'])}   {gpu['slots']} slot(s); max {per} per container, {full}"
    )
    for h in gpu["holders"]:
        out.append(
            f"              {h['container']} ({h['state']}): slot {','.join(h['slots']) or '?'}, {h['gpueq']:g} gpueq"
        )
    out.append(f"Containers  {cont['count']} / {num_text(cont['max'])}  {usage_bar(cont['count'], cont['max'])}")
    for c in cont["items"]:
        out.append(f"              {c['name']} ({c['state']}, {c['type']})")
    mem = agg["memory"]
    out.append(
        f"Memory      {gib_text(mem['used_bytes'])} / {gib_text(mem['max_bytes']) if mem['max_bytes'] else '∞'} GiB  "
        + (usage_bar(mem["used_bytes"] or 0, mem["max_bytes"]) if mem["max_bytes"] else "(no limit)")
        + "   all your containers together"
    )
    cpu = agg["cpu"]
    used = "unknown" if cpu["usage_seconds"] is None else f"{cpu['usage_seconds']:.0f} s used"
    out.append(f"CPU         quota {cpu['quota'] or 'none'}; {used}")
    tasks = agg["tasks"]
    out.append(f"Tasks       {tasks['current'] if tasks['current'] is not None else '?'} / {tasks['max'] or '∞'}")
    if not agg["slice_exists"]:
        out.append(f"              (your slice {agg['slice']} has no cgroup yet: nothing running)")
    pc = report["per_container"]
    out.append(
        f"Per container: {num_text(pc['max_cpus'])} CPUs, {gib_text(pc['memory_bytes'])} GiB memory, "
        f"{gib_text(pc['shm_size_bytes'])} GiB shm, {num_text(pc['pids_limit'])} processes"
    )
    lcy = report["lifecycle"]
    out.append(
        f"Lifecycle: GPU released {hours_text(lcy['gpu_hold_after_stop_h'])} after a stop, stopped containers "
        f"removed after {hours_text(lcy['container_hold_after_stop_h'])}; GPU containers, by how they were started:"
    )
    for name, v in lcy["by_type"].items():
        out.append(
            f"  {name:<13} "
            + ("never stopped for idleness" if v["idle_timeout_h"] is None else f"idle {v['idle_timeout_h']:g} h")
            + f" ({v['idle_timeout_h_from']}), max runtime {hours_text(v['max_runtime_h'])}"
            + f" ({v['max_runtime_h_from']})"
        )
    for e in report["exemptions"]:
        scope = f"container {e['container']}" if e["container"] else "all your containers"
        until = f"until {e['expires_on']}" if e["expires_on"] else "no end date"
        out.append(
            f"Exemption: {', '.join(e['exempt_from'])} for {scope}, {until}"
            + (f" ({e['reason']})" if e["reason"] else "")
        )
    bm = report["bare_metal"]
    if bm["exempt"]:
        out.append("Bare metal: you may use the GPUs outside containers (exempt)")
    elif bm["grant"]:
        g = bm["grant"]
        state = "active" if g["active"] else "expired"
        out.append(f"Bare metal: grant {state} ({g['type']}, until {g['expires_at'] or 'revoked'})")
    for a in report["alerts"]:
        out.append(f"ALERT {a['measure']} {a['level']}%: {a['sentence']}")
    notices = report.get("notices") or []
    if notices:
        out.append(f"Notices sent to you in the last week ({len(notices)}, newest last):")
        out.extend(f"  {n['at']}  [{n.get('level', '')}] {n.get('title', '')}" for n in notices)
    for err in report["errors"]:
        out.append(f"(incomplete: {err})")
    return "\n".join(out)
