"""``ds01 detect watch|once`` (the detector service and its one-shot form) and ``ds01 workloads``.

``ds01 workloads`` reads only the inventory file the detector writes
(``<paths.state_dir>/workloads.json``): no Docker call, so it answers at once and works while
Docker is down. It says how old the inventory is.

``ds01 workloads --json`` (stable, schema "1")::

    {"schema_version": "1", "inventory": "<path>", "updated_at": ISO|null, "age_s": float|null,
     "stale": bool, "writer": "watch"|"once"|null,
     "docker": {"ok": bool, "error": str|null}, "gpu": {"ok": bool, "error": str|null},
     "filters": {"user": str|null, "type": str|null, "gpu_only": bool, "all": bool},
     "workloads": [<workload>, ...],
     "counts": {"workloads": int, "gpu": int, "unmanaged_gpu": int, "by_type": {<type>: int}},
     "by_user": {<login or "unknown">: {"workloads": int, "gpu": int, "unmanaged_gpu": int}}}

Every ``<workload>`` has the same keys (null where they do not apply)::

    {"kind": "container"|"host-process", "type": "ds01-managed"|"devcontainer"|"compose"|
     "raw-docker"|"infrastructure"|"host-process", "id": <full container id | "pid:<pid>">,
     "short_id": str, "name": str, "user": str|null, "owner_source": str|null, "status": str,
     "running": bool, "container_type": str|null, "image": str|null, "has_gpu": bool,
     "gpu_all": bool, "gpu_devices": [str], "gpu_sources": [str], "gpu_slots": [str],
     "gpu_memory_mib": float|null, "unmanaged_gpu": bool, "pid": int|null, "cmdline": str|null,
     "scope": str|null, "started_at": ISO|null, "detected_at": ISO|null}

Workloads are sorted by user (unknown last), then type, then name. Without ``--all`` only running
containers (running, paused, restarting) and host processes are listed.

``ds01 detect once --json``: ``{"schema_version": "1", "inventory", "containers", "gpu_containers",
"host_processes", "pending_processes", "unmanaged", "docker_error", "gpu_error"}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from typing import Any, Optional

from .. import cli, detector, logs
from . import table

SCHEMA_VERSION = "1"
STALE_AFTER_S = 120.0  # four missed 30 s sweeps
TYPES = (
    detector.ORIGIN_MANAGED,
    detector.ORIGIN_DEVCONTAINER,
    detector.ORIGIN_COMPOSE,
    detector.ORIGIN_RAW,
    detector.ORIGIN_INFRA,
    detector.ORIGIN_HOST,
)
SERVICE = "ds01-detector.service"

log = logs.get("ds01.detector")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("detect", help="run the workload detector (service, or one pass)")
    actions = parser.add_subparsers(dest="detect_action", metavar="ACTION")

    watch = actions.add_parser("watch", help="follow Docker's event stream and sweep host GPU processes (the service)")
    watch.add_argument(
        "--sweep-interval",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between host-process and drift sweeps (default 30)",
    )
    watch.set_defaults(func=cmd_watch)

    once = actions.add_parser("once", help="one full sync and one sweep, then write the inventory")
    cli.add_json_flag(once)
    once.set_defaults(func=cmd_once)
    parser.set_defaults(func=lambda ctx: _usage(parser))

    wl = subparsers.add_parser("workloads", help="every workload on the host and whose it is (admin view)")
    wl.add_argument("--user", metavar="U", help="only this user's workloads")
    wl.add_argument("--type", choices=TYPES, metavar="T", help="only this type: " + ", ".join(TYPES))
    wl.add_argument("--gpu-only", action="store_true", help="only workloads with GPU access")
    wl.add_argument("--all", action="store_true", help="include stopped and never-started containers")
    wl.add_argument("--by-user", action="store_true", help="group the table by user")
    wl.add_argument("--wide", "-w", action="store_true", help="more columns: id, image, GPU devices, how found")
    cli.add_json_flag(wl)
    wl.set_defaults(func=cmd_workloads)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return cli.EXIT_USAGE


# --------------------------------------------------------------------------------------------
# detect
# --------------------------------------------------------------------------------------------


def cmd_once(ctx: cli.Context) -> int:
    config = ctx.config
    lock = detector.inventory_lock(config)
    if not lock.acquire(10.0, poll_s=0.05, note=str(os.getpid())):
        raise cli.CommandError(
            f"another detector (pid {lock.holder() or '?'}) is writing {detector.inventory_path(config)}; "
            f"the inventory is kept current by {SERVICE}, so `ds01 workloads` already has the answer.",
            cli.EXIT_NO,
        )
    try:
        result = detector.run_once(config)
    except OSError as exc:
        raise cli.CommandError(f"could not write the inventory: {exc}") from exc
    finally:
        lock.release()
    data = {"schema_version": SCHEMA_VERSION, "inventory": result.path, **result.as_dict()}
    data.pop("path")

    def human(d: dict) -> str:
        lines = [
            f"ds01: {d['containers']} containers ({d['gpu_containers']} with GPU access), "
            f"{d['host_processes']} host GPU processes ({d['pending_processes']} waiting for a second sweep), "
            f"{d['unmanaged']} unmanaged GPU workloads; written to {d['inventory']}."
        ]
        if d["docker_error"]:
            lines.append(f"  Docker could not be read: {d['docker_error']}")
        if d["gpu_error"]:
            lines.append(f"  GPU processes could not be read: {d['gpu_error']}")
        return "\n".join(lines)

    ctx.emit(data, human)
    return cli.EXIT_FAULT if result.docker_error else cli.EXIT_OK


def cmd_watch(ctx: cli.Context) -> int:
    config = ctx.config
    if ctx.args.sweep_interval <= 0:
        raise cli.CommandError("--sweep-interval must be more than 0 seconds.", cli.EXIT_USAGE)
    logging.getLogger("ds01").setLevel(logging.INFO)
    lock = detector.inventory_lock(config)
    if not lock.acquire(0, note=str(os.getpid())):
        raise cli.CommandError(
            f"another detector (pid {lock.holder() or '?'}) already watches; stop it first.", cli.EXIT_NO
        )
    try:
        source = detector.DockerSource()
    except detector.DockerUnavailable as exc:
        lock.release()
        raise cli.CommandError(f"cannot watch Docker: {exc}.") from exc
    watcher = detector.Watcher(
        detector.build_detector(config),
        source,
        detector.gpu_process_reader(config),
        sweep_interval_s=ctx.args.sweep_interval,
        hook=detector.allocator_hook(config),
    )

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signum)
        watcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "watching Docker events; sweeping every %ss; inventory %s",
        ctx.args.sweep_interval,
        watcher.detector.inventory_path,
    )
    try:
        watcher.run()
    finally:
        lock.release()
    return cli.EXIT_OK


# --------------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------------


def _workload_from_container(c: dict) -> dict:
    processes = c.get("gpu_processes") or []
    memory = [p.get("used_memory_mib") for p in processes if p.get("used_memory_mib") is not None]
    return {
        "kind": "container",
        "type": c.get("origin"),
        "id": c.get("id"),
        "short_id": c.get("short_id"),
        "name": c.get("name"),
        "user": c.get("user"),
        "owner_source": c.get("owner_source"),
        "status": c.get("status"),
        "running": bool(c.get("running")),
        "container_type": c.get("container_type"),
        "image": c.get("image"),
        "has_gpu": bool(c.get("has_gpu")),
        "gpu_all": bool(c.get("gpu_all")),
        "gpu_devices": list(c.get("gpu_devices") or []),
        "gpu_sources": list(c.get("gpu_sources") or []),
        "gpu_slots": list(c.get("gpu_slots") or []),
        "gpu_memory_mib": float(sum(memory)) if memory else None,
        "unmanaged_gpu": bool(c.get("unmanaged_gpu")),
        "pid": c.get("pid"),
        "cmdline": None,
        "scope": None,
        "started_at": c.get("started_at"),
        "detected_at": c.get("detected_at"),
    }


def _workload_from_process(p: dict) -> dict:
    gpus = p.get("gpus") or []
    return {
        "kind": "host-process",
        "type": detector.ORIGIN_HOST,
        "id": f"pid:{p.get('pid')}",
        "short_id": str(p.get("pid")),
        "name": p.get("comm") or "",
        "user": p.get("user"),
        "owner_source": "proc_uid",
        "status": "running",
        "running": True,
        "container_type": None,
        "image": None,
        "has_gpu": True,
        "gpu_all": False,
        "gpu_devices": [g.get("gpu_uuid") for g in gpus if g.get("gpu_uuid")],
        "gpu_sources": ["nvml"],
        "gpu_slots": [g.get("slot") for g in gpus if g.get("slot") is not None],
        "gpu_memory_mib": p.get("used_memory_mib"),
        "unmanaged_gpu": bool(p.get("unmanaged_gpu")),
        "pid": p.get("pid"),
        "cmdline": p.get("cmdline"),
        "scope": p.get("scope"),
        "started_at": p.get("first_seen"),
        "detected_at": p.get("detected_at"),
    }


def _sort_key(w: dict) -> tuple:
    user = w.get("user")
    return (user is None, user or "", TYPES.index(w["type"]) if w["type"] in TYPES else 99, w.get("name") or "")


def select_workloads(
    inventory: dict, user: Optional[str], wtype: Optional[str], gpu_only: bool, include_all: bool
) -> list:
    """Pure: inventory + filters → the workloads list of the JSON document."""
    rows = [_workload_from_container(c) for c in (inventory.get("containers") or {}).values()]
    rows += [_workload_from_process(p) for p in (inventory.get("host_processes") or {}).values()]
    out = []
    for w in rows:
        if not include_all and not w["running"]:
            continue
        if user is not None and w["user"] != user:
            continue
        if wtype is not None and w["type"] != wtype:
            continue
        if gpu_only and not w["has_gpu"]:
            continue
        out.append(w)
    out.sort(key=_sort_key)
    return out


def workloads_document(
    inventory: Optional[dict],
    path: str,
    *,
    user: Optional[str] = None,
    wtype: Optional[str] = None,
    gpu_only: bool = False,
    include_all: bool = False,
    now: Optional[float] = None,
) -> dict:
    now = time.time() if now is None else now
    inventory = inventory or {}
    updated = inventory.get("updated_at_epoch")
    age = round(max(0.0, now - float(updated)), 3) if updated is not None else None
    rows = select_workloads(inventory, user, wtype, gpu_only, include_all)
    by_type: dict = {}
    by_user: dict = {}
    for w in rows:
        by_type[w["type"]] = by_type.get(w["type"], 0) + 1
        entry = by_user.setdefault(w["user"] or "unknown", {"workloads": 0, "gpu": 0, "unmanaged_gpu": 0})
        entry["workloads"] += 1
        entry["gpu"] += int(w["has_gpu"])
        entry["unmanaged_gpu"] += int(w["unmanaged_gpu"])
    return {
        "schema_version": SCHEMA_VERSION,
        "inventory": path,
        "updated_at": inventory.get("updated_at"),
        "age_s": age,
        "stale": age is None or age > STALE_AFTER_S,
        "writer": inventory.get("writer"),
        "docker": inventory.get("docker") or {"ok": False, "error": "no inventory"},
        "gpu": inventory.get("gpu") or {"ok": False, "error": "no inventory"},
        "filters": {"user": user, "type": wtype, "gpu_only": gpu_only, "all": include_all},
        "workloads": rows,
        "counts": {
            "workloads": len(rows),
            "gpu": sum(1 for w in rows if w["has_gpu"]),
            "unmanaged_gpu": sum(1 for w in rows if w["unmanaged_gpu"]),
            "by_type": by_type,
        },
        "by_user": by_user,
    }


def format_age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _since(text: Optional[str], now: float) -> Optional[float]:
    when = detector.parse_iso(text)
    return None if when is None else now - when.timestamp()


def _gpu_cell(w: dict) -> str:
    if not w["has_gpu"]:
        return "-"
    if w["gpu_slots"]:
        text = ",".join(w["gpu_slots"])
    elif w["gpu_all"]:
        text = "all"
    else:
        text = ",".join(_short_device(d) for d in w["gpu_devices"]) or "yes"
    return text + (" !" if w["unmanaged_gpu"] else "")


def _short_device(device: str) -> str:
    return device[:12] if device.startswith(("GPU-", "MIG-")) else device


def render_table(doc: dict, by_user: bool, wide: bool, now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    columns = ["TYPE", "USER", "NAME", "STATUS", "GPU", "AGE"]
    if wide:
        columns = ["ID", *columns, "IMAGE/COMMAND", "HOW FOUND"]
    rows = []
    for w in doc["workloads"]:
        cells = {
            "ID": w["short_id"] or "",
            "TYPE": w["type"],
            "USER": w["user"] or "unknown",
            "NAME": w["name"] or "",
            "STATUS": w["status"] or "",
            "GPU": _gpu_cell(w),
            "AGE": format_age(_since(w["started_at"] or w["detected_at"], now)),
            "IMAGE/COMMAND": w["image"] or w["cmdline"] or "",
            "HOW FOUND": ",".join(w["gpu_sources"]) + (f" owner:{w['owner_source']}" if w["owner_source"] else ""),
        }
        rows.append([cells[c] for c in columns])
    lines = []
    if not rows:
        lines.append("No workloads match." if any(doc["filters"].values()) else "No workloads.")
    else:
        limits = [60 if c == "IMAGE/COMMAND" else None for c in columns]
        header, *laid = table.lines(columns, rows, max_width=limits)
        if by_user:
            current = object()
            for w, line in zip(doc["workloads"], laid):
                owner = w["user"] or "unknown"
                if owner != current:
                    counts = doc["by_user"][owner]
                    if lines:
                        lines.append("")
                    lines.append(
                        f"{owner}: {counts['workloads']} workloads, {counts['gpu']} with GPU"
                        + (f", {counts['unmanaged_gpu']} unmanaged" if counts["unmanaged_gpu"] else "")
                    )
                    lines.append("  " + header)
                    current = owner
                lines.append("  " + line)
        else:
            lines.append(header)
            lines.extend(laid)
    counts = doc["counts"]
    lines.append("")
    lines.append(
        f"{counts['workloads']} workloads, {counts['gpu']} with GPU access"
        + (
            f", {counts['unmanaged_gpu']} unmanaged (marked !: GPU use without a ds01 allocation or grant)"
            if counts["unmanaged_gpu"]
            else ""
        )
        + "."
    )
    lines.append(_freshness(doc))
    return "\n".join(lines)


def _freshness(doc: dict) -> str:
    text = f"Inventory updated {format_age(doc['age_s'])} ago ({doc['updated_at']}, by `ds01 detect {doc['writer']}`)."
    if doc["stale"]:
        text += f" That is old: is {SERVICE} running? (systemctl status {SERVICE})"
    if not doc["docker"].get("ok"):
        text += f" Docker was not readable at the last update: {doc['docker'].get('error')}."
    if not doc["gpu"].get("ok"):
        text += f" GPU processes were not readable: {doc['gpu'].get('error')}."
    return text


def cmd_workloads(ctx: cli.Context) -> int:
    path = detector.inventory_path(ctx.config)
    try:
        inventory = detector.read_inventory(path)
    except (OSError, ValueError) as exc:
        raise cli.CommandError(f"cannot read the workload inventory: {exc}.") from exc
    if inventory is None:
        raise cli.CommandError(
            f"there is no workload inventory at {path} yet: start the detector "
            f"(systemctl enable --now {SERVICE}) or run `ds01 detect once`.",
            cli.EXIT_FAULT,
        )
    args = ctx.args
    doc = workloads_document(
        inventory, path, user=args.user, wtype=args.type, gpu_only=args.gpu_only, include_all=args.all
    )
    ctx.emit(doc, lambda d: render_table(d, args.by_user, args.wide))
    return cli.EXIT_OK
