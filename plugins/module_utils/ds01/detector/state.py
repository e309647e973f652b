"""The detector's state: the inventory in memory, its transitions (event-log entries), the two-sweep
rule for host processes, unmanaged-GPU flags and the atomic inventory file."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from .. import fsutil, logs
from .attribution import GpuProcess
from .classification import RUNNING_STATES, container_name, container_record, iso, utcnow
from .host import ProcReader, grant_active

log = logs.get("ds01.detector")

SCHEMA_VERSION = "1"
INVENTORY_FILE = "workloads.json"

Emit = Callable[..., Any]  # emit(event_type, user, **details)


def _no_events(event_type: str, user: Optional[str] = None, **details: Any) -> None:
    log.info("%s user=%s %s", event_type, user, details)


def read_inventory(path: str) -> Optional[dict]:
    """The inventory file, or None when there is none (a garbled file raises ValueError)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path} is not a ds01 workload inventory (schema {SCHEMA_VERSION})")
    return data


class Detector:
    """The inventory and its transitions. Feed it ``docker inspect`` dicts (``upsert``/``remove``/
    ``full_sync``) and NVML processes (``sweep``); it emits events and ``save`` writes the file.

    Not thread-safe: the watcher calls it from one thread.
    """

    def __init__(
        self,
        inventory_path: str,
        owner_of: Callable[[Mapping[str, Any]], tuple],
        *,
        emit: Emit = _no_events,
        proc: Optional[ProcReader] = None,
        exempt_users: Iterable[str] = (),
        grant_dir: Optional[str] = None,
        infra_label: str = "ds01.protected",
        infra_names: Iterable[str] = (),
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.inventory_path = inventory_path
        self.owner_of = owner_of
        self.emit = emit
        self.proc = proc or ProcReader()
        self.exempt_users = frozenset(exempt_users)
        self.grant_dir = grant_dir
        self.infra_label = infra_label
        self.infra_names = tuple(infra_names)
        self.clock = clock
        self.containers: dict = {}
        self.host_processes: dict = {}
        self.pending: dict = {}
        self.last_sync: Optional[str] = None
        self.last_sweep: Optional[str] = None
        self.docker_status: dict = {"ok": False, "error": "not connected yet"}
        self.gpu_status: dict = {"ok": False, "error": "not swept yet"}
        self._attrs: dict = {}  # id -> last inspect dict (memory only)
        self._container_gpu: dict = {}  # id -> [{pid, gpu_uuid, used_memory_mib}] from the last sweep

    # -- persistence -----------------------------------------------------------------------
    def load(self) -> None:
        """Start from the last inventory, so a restart neither re-announces nor forgets anything."""
        try:
            data = read_inventory(self.inventory_path)
        except (OSError, ValueError) as exc:
            log.warning("starting with an empty inventory: %s", exc)
            return
        if not data:
            return
        self.containers = dict(data.get("containers") or {})
        self.host_processes = dict(data.get("host_processes") or {})
        self.pending = dict(data.get("pending_processes") or {})
        self.last_sync = data.get("last_sync")
        self.last_sweep = data.get("last_sweep")
        for cid, record in self.containers.items():
            if record.get("gpu_processes"):
                self._container_gpu[cid] = list(record["gpu_processes"])

    def snapshot(self, writer: str) -> dict:
        now = self.clock()
        return {
            "schema_version": SCHEMA_VERSION,
            "updated_at": iso(now),
            "updated_at_epoch": now.timestamp(),
            "last_sync": self.last_sync,
            "last_sweep": self.last_sweep,
            "writer": writer,
            "pid": os.getpid(),
            "docker": dict(self.docker_status),
            "gpu": dict(self.gpu_status),
            "containers": self.containers,
            "host_processes": self.host_processes,
            "pending_processes": self.pending,
        }

    def save(self, writer: str = "watch") -> None:
        fsutil.atomic_write_json(self.inventory_path, self.snapshot(writer), fsync=True)

    # -- containers ------------------------------------------------------------------------
    def _owner(self, attrs: Mapping[str, Any]) -> tuple:
        try:
            owner, source = self.owner_of(attrs)
        except (KeyError, ValueError, TypeError, OSError) as exc:
            log.warning("owner of %s unresolved: %s", container_name(attrs), exc)
            return None, "error"
        return owner, source

    def upsert(self, attrs: Mapping[str, Any]) -> bool:
        """Record one container's current inspect data; returns True when its GPU holding changed."""
        cid = attrs.get("Id") or ""
        if not cid:
            return False
        self._attrs[cid] = attrs
        previous = self.containers.get(cid)
        owner, source = self._owner(attrs)
        prev_for_record = dict(previous or {})
        prev_for_record["gpu_processes"] = self._container_gpu.get(cid, [])
        record = container_record(
            attrs,
            owner,
            source,
            self.clock(),
            previous=prev_for_record,
            infra_label=self.infra_label,
            infra_names=self.infra_names,
        )
        self.containers[cid] = record
        base = {
            "container_id": record["short_id"],
            "container_name": record["name"],
            "origin": record["origin"],
        }
        if previous is None:
            self.emit(
                "detection.container_discovered",
                owner,
                **base,
                has_gpu=record["has_gpu"],
                gpu_devices=record["gpu_devices"],
                status=record["status"],
                image=record["image"],
            )
        elif previous.get("status") != record["status"]:
            self.emit(
                "detection.container_status_changed",
                owner,
                **base,
                old_status=previous.get("status"),
                new_status=record["status"],
            )
            if record["status"] in ("exited", "dead"):
                self.emit("detection.container_exited", owner, **base, exit_code=record["exit_code"])
        shared = self._sharing(cid, record)
        if shared and set(shared) != set((previous or {}).get("gpu_shared_with") or ()):
            # one GPU device held by two containers at once: the allocator never grants that, so a grant
            # was lost (a gateway killed mid-create) or a container took a device around it
            self.emit(
                "detection.gpu_double_booked",
                owner,
                **base,
                gpu_devices=record["gpu_devices"],
                shared_with=[
                    {
                        "container_id": self.containers[other]["short_id"],
                        "container_name": self.containers[other]["name"],
                        "user": self.containers[other].get("user"),
                    }
                    for other in shared
                ],
            )
        record["gpu_shared_with"] = shared
        if record["unmanaged_gpu"] and not (previous or {}).get("unmanaged_gpu"):
            self.emit(
                "detection.unmanaged_gpu",
                owner,
                **base,
                kind="container",
                gpu_devices=record["gpu_devices"],
                gpu_all=record["gpu_all"],
                gpu_sources=record["gpu_sources"],
                reason="GPU access without a ds01 allocation (no ds01.gpu.slots label)",
            )
        return _holding(previous) != _holding(record)

    def _sharing(self, cid: str, record: Mapping[str, Any]) -> list:
        """Ids of the other running or created containers that name one of ``record``'s GPU devices."""
        devices = set(record.get("gpu_devices") or ())
        if not devices or record.get("status") not in (*RUNNING_STATES, "created"):
            return []
        return sorted(
            other
            for other, rec in self.containers.items()
            if other != cid
            and rec.get("status") in (*RUNNING_STATES, "created")
            and devices & set(rec.get("gpu_devices") or ())
        )

    def remove(self, cid: str) -> bool:
        """A container is gone; returns True when it held GPUs."""
        record = self.containers.pop(cid, None)
        self._attrs.pop(cid, None)
        self._container_gpu.pop(cid, None)
        if record is None:
            return False
        self.emit(
            "detection.container_removed",
            record.get("user"),
            container_id=record.get("short_id"),
            container_name=record.get("name"),
            origin=record.get("origin"),
            had_gpu=record.get("has_gpu"),
        )
        return bool(record.get("has_gpu"))

    def full_sync(self, all_attrs: Iterable[Mapping[str, Any]]) -> bool:
        """Every container Docker knows (all states): upsert each, drop what is gone."""
        changed = False
        seen = set()
        for attrs in all_attrs:
            cid = attrs.get("Id")
            if cid:
                seen.add(cid)
                changed = self.upsert(attrs) or changed
        for cid in [c for c in self.containers if c not in seen]:
            changed = self.remove(cid) or changed
        self.last_sync = iso(self.clock())
        self.docker_status = {"ok": True, "error": None}
        return changed

    def resolve_container_id(self, short: str) -> Optional[str]:
        if short in self.containers:
            return short
        for cid in self.containers:
            if cid.startswith(short):
                return cid
        return None

    # -- host sweep ------------------------------------------------------------------------
    def sweep(self, gpu_processes: Optional[Sequence[GpuProcess]], gpu_error: Optional[str] = None) -> bool:
        """One look at NVML's compute processes. ``None`` means NVML could not be read: the host
        part keeps its last state (nothing is announced as exited on a read failure)."""
        now = self.clock()
        self.last_sweep = iso(now)
        if gpu_processes is None:
            self.gpu_status = {"ok": False, "error": gpu_error or "GPU processes unavailable"}
            return False
        self.gpu_status = {"ok": True, "error": None}
        by_pid: dict = {}
        for gp in gpu_processes:
            by_pid.setdefault(int(gp.pid), []).append(gp)
        container_gpu: dict = {}
        observed: dict = {}
        for pid in sorted(by_pid):
            gps = by_pid[pid]
            att = self.proc.attribute(pid)
            usage = [
                {"gpu_uuid": g.gpu_uuid, "gpu_index": g.gpu_index, "slot": g.slot, "used_memory_mib": g.used_memory_mib}
                for g in gps
            ]
            if att.kind == "container":
                cid = self.resolve_container_id(att.container_id or "") or att.container_id
                for u in usage:
                    container_gpu.setdefault(cid, []).append({"pid": pid, **u})
            elif att.kind == "user":
                observed[str(pid)] = (att, usage)
            else:
                log.debug("GPU process %s not a workload: %s %s", pid, att.kind, att.reason)
        changed = self._update_container_gpu(container_gpu)
        self._update_host(observed, now)
        return changed

    def _update_container_gpu(self, container_gpu: dict) -> bool:
        changed = False
        for cid in set(self._container_gpu) | set(container_gpu):
            new = sorted(container_gpu.get(cid, []), key=lambda p: (p["pid"], p["gpu_uuid"] or ""))
            if self._container_gpu.get(cid, []) == new:
                continue
            if new:
                self._container_gpu[cid] = new
            else:
                self._container_gpu.pop(cid, None)
            attrs = self._attrs.get(cid)
            if attrs is not None:
                changed = self.upsert(attrs) or changed
            elif cid in self.containers:
                self.containers[cid]["gpu_processes"] = new
            else:
                log.info("GPU process in container %s which is not in the inventory yet", cid[:12])
        return changed

    def _update_host(self, observed: dict, now: dt.datetime) -> None:
        pending: dict = {}
        for key, (att, usage) in observed.items():
            known = self.host_processes.get(key)
            if known is not None and known.get("start_time") == att.start_time:
                known["gpus"] = usage
                known["used_memory_mib"] = _total_memory(usage)
                self._refresh_access(known)
                continue
            if known is not None:  # the pid was reused: the old process is gone
                self._host_exited(key)
            was_pending = self.pending.get(key)
            if was_pending is None or was_pending.get("start_time") != att.start_time:
                pending[key] = {"pid": att.pid, "start_time": att.start_time, "first_seen": iso(now)}
                continue
            record = {
                "pid": att.pid,
                "start_time": att.start_time,
                "user": att.login,
                "uid": att.uid,
                "comm": att.comm,
                "cmdline": att.cmdline[:512],
                "scope": att.scope,
                "cgroup": att.cgroup,
                "gpus": usage,
                "used_memory_mib": _total_memory(usage),
                "first_seen": was_pending.get("first_seen"),
                "detected_at": iso(now),
            }
            self.host_processes[key] = record
            self._refresh_access(record, announce=False)
            self.emit(
                "detection.host_gpu_process_discovered",
                att.login,
                pid=att.pid,
                uid=att.uid,
                cmdline=record["cmdline"][:200],
                scope=att.scope,
                gpu_uuids=[u["gpu_uuid"] for u in usage],
                gpu_memory_mib=record["used_memory_mib"],
                unmanaged=record["unmanaged_gpu"],
            )
            if record["unmanaged_gpu"]:
                self._announce_unmanaged_host(record)
        for key in [k for k in self.host_processes if k not in observed]:
            self._host_exited(key)
        self.pending = pending

    def _refresh_access(self, record: dict, announce: bool = True) -> None:
        login = record.get("user") or ""
        was = record.get("unmanaged_gpu")
        record["exempt"] = login in self.exempt_users
        record["granted"] = bool(self.grant_dir) and grant_active(self.grant_dir or "", login, self.clock())
        record["unmanaged_gpu"] = not (record["exempt"] or record["granted"])
        if announce and record["unmanaged_gpu"] and not was:
            self._announce_unmanaged_host(record)

    def _announce_unmanaged_host(self, record: dict) -> None:
        self.emit(
            "detection.unmanaged_gpu",
            record.get("user"),
            kind="host_process",
            pid=record.get("pid"),
            cmdline=(record.get("cmdline") or "")[:200],
            gpu_uuids=[u.get("gpu_uuid") for u in record.get("gpus") or []],
            reason="GPU use on the host by a login that is neither exempt nor granted bare-metal access",
        )

    def _host_exited(self, key: str) -> None:
        record = self.host_processes.pop(key, None)
        if record is None:
            return
        self.emit(
            "detection.host_gpu_process_exited",
            record.get("user"),
            pid=record.get("pid"),
            cmdline=(record.get("cmdline") or "")[:200],
            gpu_uuids=[u.get("gpu_uuid") for u in record.get("gpus") or []],
        )


def _total_memory(usage: Sequence[Mapping[str, Any]]) -> Optional[float]:
    values = [u["used_memory_mib"] for u in usage if u.get("used_memory_mib") is not None]
    return float(sum(values)) if values else None


def _holding(record: Optional[Mapping[str, Any]]) -> tuple:
    """What GPU holding a record describes (for 'did this event change GPU holdings')."""
    if not record:
        return ()
    return (
        bool(record.get("has_gpu")),
        tuple(record.get("gpu_devices") or ()),
        bool(record.get("gpu_all")),
        tuple(record.get("gpu_slots") or ()),
        record.get("status") in RUNNING_STATES,
    )
