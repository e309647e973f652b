"""Workload detection: every GPU workload on the host, whoever started it and however.

Three layers, each testable on its own:

- **Classification** (pure, over the ``docker inspect`` JSON of one container):
  ``classify(attrs)`` → origin, ``gpu_access(attrs)`` → which GPU devices it can reach and why,
  ``container_record(attrs, owner, …)`` → one inventory entry. The owner comes from the one owner
  resolver in ``identity.py``; this module never guesses owners itself.
- **Host process attribution** (pure over ``/proc`` text, with a small reader at the edge):
  ``parse_cgroup(text)`` → where a process lives (a container, a login session or user slice, a
  system service); ``attribute(pid, proc)`` adds the real uid from ``/proc/<pid>/status``, the
  command and the start time (so a reused pid is a new process). GPU processes come from NVML's
  compute-process lists (per GPU and per MIG instance) through ``gpu.py``.
- **State** (``Detector``): the inventory in memory, transitions → event-log entries, the
  two-sweep rule for host processes, unmanaged-GPU flags, the atomic inventory file. The watcher
  (``watch``) feeds it from Docker's event stream plus a periodic sweep; ``run_once`` does one
  full sync and one sweep (tests, cron, first start).

Origins (first match wins): ``infrastructure`` (``ds01.protected=true`` / ``ds01.monitoring=true``,
the config's ``monitoring.infrastructure_label`` or a ``monitoring.infrastructure_containers``
name), ``ds01-managed`` (``ds01.managed=true``: created through the gateway; its own
``ds01.container_type`` label is kept as ``container_type``), ``devcontainer`` (any
``devcontainer.*`` label or a ``vsc-`` name), ``compose`` (``com.docker.compose.project``),
``raw-docker``. Host processes have the origin ``host-process``.

GPU access (any of): a DeviceRequest for the nvidia driver or the ``gpu`` capability (its
DeviceIDs, or "all" for ``--gpus all``/a count), a CDI request for ``nvidia.com/gpu=…``,
``Runtime: nvidia`` with ``NVIDIA_VISIBLE_DEVICES`` set in the container's environment (that is
how the nvidia runtime picks devices; without it, or with ``void``/``none``, the runtime exposes
nothing — so a daemon whose *default* runtime is nvidia does not flag every container),
``/dev/nvidia*`` device mappings, ``Privileged`` (every host device), and — found by the sweep —
NVML compute processes running inside the container.

Unmanaged GPU use: a container (not infrastructure) that can reach GPU devices but carries no
``ds01.gpu.slots`` allocation label; a host GPU process whose login is neither in
``bare_metal_access.exempt_users`` nor holds an unexpired grant file
``<bare_metal_access.state_dir>/<login>.json``.

Inventory file ``<paths.state_dir>/workloads.json`` (0644, replaced atomically; the watcher is its
only writer and holds ``workloads.lock`` beside it for its lifetime), schema "1"::

    {"schema_version": "1", "updated_at": ISO, "updated_at_epoch": float,
     "last_sync": ISO|null, "last_sweep": ISO|null, "writer": "watch"|"once", "pid": int,
     "docker": {"ok": bool, "error": str|null}, "gpu": {"ok": bool, "error": str|null},
     "containers": {<full id>: <container record>},
     "host_processes": {"<pid>": <host process record>},
     "pending_processes": {"<pid>": {"pid", "start_time", "first_seen"}}}

A container record: ``{id, short_id, name, origin, container_type, user, owner_source, status,
running, image, created, started_at, has_gpu, gpu_all, gpu_devices[], gpu_sources[], gpu_slots[],
gpu_processes[{pid, gpu_uuid, used_memory_mib}], managed, unmanaged_gpu, detected_at}``.
A host process record: ``{pid, start_time, user, uid, comm, cmdline, scope, cgroup, gpus[{gpu_uuid,
gpu_index, slot, used_memory_mib}], used_memory_mib, exempt, granted, unmanaged_gpu, detected_at}``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import docker_state, fsutil, identity, profile

log = logging.getLogger("ds01.detector")

SCHEMA_VERSION = "1"
INVENTORY_FILE = "workloads.json"
LOCK_FILE = "workloads.lock"

ORIGIN_INFRA = "infrastructure"
ORIGIN_MANAGED = "ds01-managed"
ORIGIN_DEVCONTAINER = "devcontainer"
ORIGIN_COMPOSE = "compose"
ORIGIN_RAW = "raw-docker"
ORIGIN_HOST = "host-process"
ORIGINS = (ORIGIN_MANAGED, ORIGIN_DEVCONTAINER, ORIGIN_COMPOSE, ORIGIN_RAW, ORIGIN_INFRA, ORIGIN_HOST)

# Docker container events that can change what the inventory says about one container.
WATCHED_ACTIONS = frozenset(
    {"create", "start", "restart", "die", "stop", "kill", "oom", "pause", "unpause", "destroy", "rename", "update"}
)
RUNNING_STATES = frozenset({"running", "paused", "restarting"})
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})

# Host processes that use a GPU as part of the system, never a user's workload.
SYSTEM_COMMS = frozenset(
    {
        "nvidia-persistenced",
        "nv-hostengine",
        "dcgm",
        "dcgmi",
        "dcgm-exporter",
        "nvidia-smi",
        "nvidia-cuda-mps-control",
        "nvidia-cuda-mps-server",
        "Xorg",
        "X",
        "Xwayland",
        "gdm",
        "gdm3",
        "gdm-x-session",
        "gdm-wayland-session",
        "gnome-shell",
        "sddm",
        "lightdm",
    }
)

_HEX64 = r"[0-9a-f]{64}"
_CONTAINER_RES = (
    re.compile(r"(?:^|/)docker-(" + _HEX64 + r")\.scope(?:/|$)"),  # systemd cgroup driver
    re.compile(r"(?:^|/)docker/(" + _HEX64 + r")(?:/|$)"),  # cgroupfs driver, default parent
    re.compile(r"(?:^|/)(" + _HEX64 + r")(?:/|$)"),  # cgroupfs driver under a --cgroup-parent
)
_USER_SLICE_RE = re.compile(r"(?:^|/)user-(\d+)\.slice(?:/|$)")
_DS01_SLICE_RE = re.compile(r"(?:^|/)ds01-([A-Za-z0-9_]+)-([A-Za-z0-9_]+)\.slice(?:/|$)")
_SESSION_RE = re.compile(r"(?:^|/)session-[^/]+\.scope(?:/|$)")
_SYSTEM_SLICE_RE = re.compile(r"(?:^|/)system\.slice(?:/([^/]+))?")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: Any) -> Optional[dt.datetime]:
    """An ISO-8601 time (``Z`` or an offset; Docker's nanoseconds are cut to microseconds)."""
    if not isinstance(text, str) or not text or text.startswith("0001-01-01"):
        return None
    value = text.strip().replace("Z", "+00:00")
    match = re.match(r"^(.*?\.\d{6})\d*(.*)$", value)
    if match:
        value = match.group(1) + match.group(2)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in TRUE_VALUES


# --------------------------------------------------------------------------------------------
# Classification (pure: docker inspect JSON in, facts out)
# --------------------------------------------------------------------------------------------


def _labels(attrs: Mapping[str, Any]) -> Mapping[str, str]:
    return (attrs.get("Config") or {}).get("Labels") or {}


def container_name(attrs: Mapping[str, Any]) -> str:
    name = attrs.get("Name") or ""
    if not name:
        names = attrs.get("Names") or []
        name = names[0] if names else ""
    return name.lstrip("/")


def is_infrastructure(
    attrs: Mapping[str, Any], infra_label: str = "ds01.protected", infra_names: Iterable[str] = ()
) -> bool:
    labels = _labels(attrs)
    if any(_truthy(labels.get(key, "")) for key in ("ds01.protected", "ds01.monitoring", infra_label)):
        return True
    if labels.get("ds01.container_type") == "infrastructure":
        return True
    name = container_name(attrs)
    return any(name == n or name.startswith(n) for n in infra_names if n)


def classify(attrs: Mapping[str, Any], infra_label: str = "ds01.protected", infra_names: Iterable[str] = ()) -> str:
    """The container's origin (see the module docstring for the order of the rules)."""
    labels = _labels(attrs)
    if is_infrastructure(attrs, infra_label, infra_names):
        return ORIGIN_INFRA
    if _truthy(labels.get("ds01.managed", "")):
        return ORIGIN_MANAGED
    if any(key.startswith("devcontainer.") for key in labels):
        return ORIGIN_DEVCONTAINER
    if "com.docker.compose.project" in labels:
        return ORIGIN_COMPOSE
    if container_name(attrs).startswith("vsc-"):
        return ORIGIN_DEVCONTAINER
    return ORIGIN_RAW


@dataclass
class GpuAccess:
    """What GPU devices a container can reach, and the settings that say so."""

    devices: list = field(default_factory=list)  # UUIDs / indices / MIG ids as Docker stores them
    all: bool = False  # every GPU of the host (--gpus all, NVIDIA_VISIBLE_DEVICES=all, privileged)
    sources: list = field(default_factory=list)  # device_request, cdi, runtime_env, device_node, privileged, nvml

    @property
    def has_gpu(self) -> bool:
        return self.all or bool(self.devices)

    def add(self, source: str, devices: Iterable[str] = (), all_gpus: bool = False) -> None:
        if source not in self.sources:
            self.sources.append(source)
        for raw in devices:
            device = str(raw).strip()
            if device and device not in self.devices:
                self.devices.append(device)
        self.all = self.all or all_gpus


def _env(attrs: Mapping[str, Any]) -> dict:
    out = {}
    for item in (attrs.get("Config") or {}).get("Env") or []:
        key, _sep, value = str(item).partition("=")
        out[key] = value
    return out


def _split_ids(text: str) -> list:
    return [part.strip() for part in text.split(",") if part.strip()]


def gpu_access(attrs: Mapping[str, Any]) -> GpuAccess:
    """Every way a container can reach NVIDIA GPUs, from its stored configuration.

    The answer is ``docker_state.gpu_reach`` (the gateway asks the same function of a create
    request); a count without ids (``--gpus 2``) is reported as ``all``, since the detector cannot
    know which GPUs the runtime picked.
    """
    reach = docker_state.container_gpu_reach(attrs)
    access = GpuAccess()
    access.sources = list(reach.sources)
    access.devices = list(reach.devices)
    access.all = reach.all or reach.count > 0
    return access


def allocated_slots(attrs: Mapping[str, Any]) -> list:
    """The ds01 allocation stamped by the gateway (``ds01.gpu.slots``: ``0,1.2``)."""
    return _split_ids(_labels(attrs).get("ds01.gpu.slots", ""))


OwnerResolver = Callable[[Mapping[str, Any]], "tuple[Optional[str], str]"]


def container_record(
    attrs: Mapping[str, Any],
    owner: Optional[str],
    owner_source: str,
    now: dt.datetime,
    *,
    previous: Optional[Mapping[str, Any]] = None,
    infra_label: str = "ds01.protected",
    infra_names: Iterable[str] = (),
) -> dict:
    """One inventory entry for a container (``previous`` keeps ``detected_at`` and NVML findings)."""
    labels = _labels(attrs)
    state = attrs.get("State") or {}
    status = state.get("Status") or ("running" if state.get("Running") else "unknown")
    origin = classify(attrs, infra_label, infra_names)
    access = gpu_access(attrs)
    previous = previous or {}
    gpu_processes = list(previous.get("gpu_processes") or []) if status in RUNNING_STATES else []
    if gpu_processes:
        access.add("nvml", sorted({p["gpu_uuid"] for p in gpu_processes if p.get("gpu_uuid")}))
    slots = allocated_slots(attrs)
    managed = _truthy(labels.get("ds01.managed", ""))
    cid = attrs.get("Id") or ""
    image = (attrs.get("Config") or {}).get("Image") or attrs.get("Image") or ""
    return {
        "id": cid,
        "short_id": cid[:12],
        "name": container_name(attrs),
        "origin": origin,
        "container_type": labels.get("ds01.container_type") or (origin if origin != ORIGIN_MANAGED else None),
        "user": owner,
        "owner_source": owner_source,
        "status": status,
        "running": status in RUNNING_STATES,
        "image": image,
        "created": attrs.get("Created"),
        "started_at": state.get("StartedAt") if parse_iso(state.get("StartedAt")) else None,
        "exit_code": state.get("ExitCode") if status in ("exited", "dead") else None,
        "pid": state.get("Pid") or None,
        "has_gpu": access.has_gpu,
        "gpu_all": access.all,
        "gpu_devices": access.devices,
        "gpu_sources": access.sources,
        "gpu_slots": slots,
        "gpu_processes": gpu_processes,
        "managed": managed,
        "unmanaged_gpu": bool(access.has_gpu and not slots and origin != ORIGIN_INFRA),
        "detected_at": previous.get("detected_at") or iso(now),
    }


# --------------------------------------------------------------------------------------------
# Host process attribution (pure over /proc text; ProcReader is the edge)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupPlace:
    """Where ``/proc/<pid>/cgroup`` puts a process."""

    container_id: Optional[str] = None
    slice_uid: Optional[int] = None  # user-<uid>.slice
    ds01_slice: Optional[tuple] = None  # (group, sanitized user) of ds01-<group>-<user>.slice
    session: bool = False  # session-N.scope
    system_unit: Optional[str] = None  # the unit under system.slice ("" for the slice itself)
    path: str = ""  # the path this was read from (the unified or name=systemd hierarchy first)

    @property
    def in_user_scope(self) -> bool:
        return self.slice_uid is not None or self.ds01_slice is not None or self.session


def parse_cgroup(text: str) -> CgroupPlace:
    """Read every hierarchy of a ``/proc/<pid>/cgroup`` file (v1, v2 or hybrid)."""
    paths = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3:
            paths.append((parts[1], parts[2]))
    # Prefer the hierarchies systemd manages (they carry slice and scope names), then the rest.
    paths.sort(key=lambda item: 0 if item[0] in ("", "name=systemd") else 1)
    container_id = slice_uid = ds01_slice = system_unit = None
    session = False
    chosen = paths[0][1] if paths else ""
    for _controllers, path in paths:
        for regex in _CONTAINER_RES:
            match = regex.search(path)
            if match and container_id is None:
                container_id = match.group(1)
                chosen = path
        match = _USER_SLICE_RE.search(path)
        if match and slice_uid is None:
            slice_uid = int(match.group(1))
        match = _DS01_SLICE_RE.search(path)
        if match and ds01_slice is None:
            ds01_slice = (match.group(1), match.group(2))
        if _SESSION_RE.search(path):
            session = True
        match = _SYSTEM_SLICE_RE.search(path)
        if match and system_unit is None:
            system_unit = match.group(1) or ""
    return CgroupPlace(container_id, slice_uid, ds01_slice, session, system_unit, chosen)


def parse_status_uid(text: str) -> Optional[int]:
    """The real uid (first field of ``Uid:``) from ``/proc/<pid>/status``."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1])
    return None


def parse_start_time(stat_text: str) -> Optional[int]:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks since boot): with the pid, a process identity."""
    end = stat_text.rfind(")")
    if end < 0:
        return None
    fields = stat_text[end + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass
class Attribution:
    """Whose a host GPU process is: ``kind`` is container, user, system or gone."""

    kind: str
    pid: int
    container_id: Optional[str] = None
    uid: Optional[int] = None
    login: Optional[str] = None
    comm: str = ""
    cmdline: str = ""
    start_time: Optional[int] = None
    scope: str = ""  # user-slice, ds01-slice, session, system-service, host
    cgroup: str = ""
    reason: str = ""


def _login_for_uid(uid: int) -> str:
    return identity.login_of_uid(uid) or str(uid)


def decide_attribution(
    pid: int,
    place: CgroupPlace,
    *,
    uid: Optional[int],
    comm: str,
    exe: str,
    cmdline: str,
    start_time: Optional[int],
    login_for_uid: Callable[[int], str] = _login_for_uid,
) -> Attribution:
    """Pure: a process's cgroup place, real uid and names → whose it is."""
    base = {"pid": pid, "comm": comm, "cmdline": cmdline, "start_time": start_time, "cgroup": place.path, "uid": uid}
    if place.container_id:
        return Attribution("container", container_id=place.container_id, scope="container", **base)
    argv0 = os.path.basename(cmdline.split(" ", 1)[0]) if cmdline else ""
    names = {comm, os.path.basename(exe), argv0} - {""}
    if names & SYSTEM_COMMS or any(n.startswith(("dcgm", "nv-hostengine")) for n in names):
        return Attribution("system", scope="system-daemon", reason="a system GPU daemon", **base)
    if uid is None:
        return Attribution("gone", reason="no uid (the process ended)", **base)
    if place.in_user_scope:
        if place.ds01_slice is not None:
            scope = "ds01-slice"
        elif place.session:
            scope = "session"
        else:
            scope = "user-slice"
        return Attribution("user", login=login_for_uid(uid), scope=scope, **base)
    if place.system_unit is not None:
        if identity.system_account(uid):
            return Attribution("system", scope="system-service", reason=f"system service {place.system_unit}", **base)
        # A person's job run by a system service (cron without pam_systemd, a unit with User=).
        return Attribution("user", login=login_for_uid(uid), scope="system-service", **base)
    if identity.system_account(uid):
        return Attribution("system", scope="host", reason=f"system account uid {uid}", **base)
    return Attribution("user", login=login_for_uid(uid), scope="host", **base)


class ProcReader:
    """Reads one process's cgroup, status, stat, comm, exe and cmdline under ``root`` (``/proc``)."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    def _read(self, pid: int, name: str) -> Optional[str]:
        try:
            with open(os.path.join(self.root, str(pid), name), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            return None
        except PermissionError:
            return ""

    def exe(self, pid: int) -> str:
        try:
            return os.readlink(os.path.join(self.root, str(pid), "exe"))
        except OSError:
            return ""

    def attribute(self, pid: int) -> Attribution:
        cgroup = self._read(pid, "cgroup")
        status = self._read(pid, "status")
        if cgroup is None or status is None:
            return Attribution("gone", pid=pid, reason="no such process")
        if re.search(r"^State:\s*[ZX]", status, re.MULTILINE):
            return Attribution("gone", pid=pid, reason="the process has exited (zombie)")
        stat = self._read(pid, "stat") or ""
        cmdline = (self._read(pid, "cmdline") or "").replace("\x00", " ").strip()
        comm = (self._read(pid, "comm") or "").strip()
        return decide_attribution(
            pid,
            parse_cgroup(cgroup),
            uid=parse_status_uid(status),
            comm=comm,
            exe=self.exe(pid),
            cmdline=cmdline,
            start_time=parse_start_time(stat),
        )


# --------------------------------------------------------------------------------------------
# GPU processes (from gpu.py) and bare-metal grants
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuProcess:
    """One NVML compute process: on which GPU (and MIG instance) and how much memory."""

    pid: int
    gpu_uuid: str = ""
    gpu_index: Optional[int] = None
    slot: Optional[str] = None
    used_memory_mib: Optional[float] = None


def grant_active(state_dir: str, login: str, now: dt.datetime) -> bool:
    """Whether ``<state_dir>/<login>.json`` grants bare-metal GPU use now — decided by
    ``profile.grant_active``, the same rule the profile.d deterrent applies (one rule, two readers)."""
    if not state_dir or not login or "/" in login or login in (".", ".."):
        return False
    path = os.path.join(state_dir, f"{login}.json")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(65536)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("bare-metal grant %s unreadable (%s): treated as no grant", path, exc)
        return False
    return profile.grant_active(text, now.timestamp())


# --------------------------------------------------------------------------------------------
# The detector's state: inventory, transitions, the two-sweep rule
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Edges: Docker, GPU processes, the event log, the owner resolver, the allocator hook
# --------------------------------------------------------------------------------------------

try:
    import docker
    from docker.errors import DockerException, NotFound

    HAS_DOCKER = True
except ImportError:  # the core imports without the SDK; the commands then say what is missing
    docker = None
    HAS_DOCKER = False

    class DockerException(Exception):  # type: ignore[no-redef]
        pass

    class NotFound(DockerException):  # type: ignore[no-redef]
        pass


try:  # requests' errors surface through the SDK's streaming calls
    from requests.exceptions import RequestException
except ImportError:  # pragma: no cover - requests comes with docker

    class RequestException(Exception):  # type: ignore[no-redef]
        pass


DOCKER_ERRORS = (DockerException, RequestException, OSError)


class DockerUnavailable(Exception):
    """Docker could not be asked (not installed, not running, not reachable)."""


class DockerSource:
    """The detector's window on Docker: the full list through ``docker_state``, one container by
    id (after an event), and the event stream."""

    def __init__(self, timeout: float = 30.0) -> None:
        if not HAS_DOCKER:
            raise DockerUnavailable("the docker Python SDK is not installed")
        self.timeout = timeout
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=self.timeout)
            except DockerException as exc:
                raise DockerUnavailable(str(exc)) from exc
        return self._client

    def reset(self) -> None:
        if self._client is not None:
            with contextlib.suppress(*DOCKER_ERRORS):
                self._client.close()
        self._client = None

    def list_all(self) -> list:
        """``docker inspect`` dicts of every container, all states."""
        try:
            return _list_all_attrs(self.client())
        except (DockerException, RequestException, OSError) as exc:
            self.reset()
            raise DockerUnavailable(str(exc)) from exc

    def inspect(self, cid: str) -> Optional[dict]:
        try:
            return self.client().api.inspect_container(cid)
        except NotFound:
            return None
        except (DockerException, RequestException, OSError) as exc:
            self.reset()
            raise DockerUnavailable(str(exc)) from exc

    def events(self) -> Any:
        """A new event stream (its own client: the stream blocks a connection)."""
        try:
            client = docker.from_env(timeout=self.timeout)
            client.ping()
            return client, client.events(decode=True, filters={"type": "container"})
        except (DockerException, RequestException, OSError) as exc:
            raise DockerUnavailable(str(exc)) from exc


def _list_all_attrs(client: Any) -> list:
    """Every container's inspect dict (all states)."""
    out = []
    for summary in client.api.containers(all=True):
        try:
            out.append(client.api.inspect_container(summary["Id"]))
        except NotFound:
            continue  # removed between the list and the inspect
    return out


def gpu_process_reader(config: Any) -> Callable[[], tuple]:
    """A callable returning ``(processes or None, error)``: NVML's compute processes per GPU and
    per MIG instance, through ``gpu.py`` (NVML, or the fake topology's ``processes`` lists)."""

    def read() -> tuple:
        try:
            return list(_gpu_processes(config)), None
        except Exception as exc:  # noqa: BLE001 - the NVML edge: a GPU fault is reported, the watcher goes on
            log.warning("GPU processes unavailable: %s", exc)
            return None, f"{type(exc).__name__}: {exc}"

    return read


def _gpu_processes(config: Any) -> Iterable[GpuProcess]:
    try:
        from . import gpu
    except ImportError:
        gpu = None
    reader = getattr(gpu, "compute_processes", None) if gpu is not None else None
    if reader is not None:
        for item in reader(config):
            yield _as_gpu_process(item)
        return
    # gpu.py is not part of this build (or has no process list): the fake topology is read here.
    section = config.section("gpu_allocation")
    topology = os.environ.get("DS01_GPU_TOPOLOGY") or (
        section.get("topology") if section.get("backend") == "fake" else None
    )
    if not topology:
        raise RuntimeError("gpu.py with compute_processes() is not installed; NVML processes cannot be listed")
    yield from fake_topology_processes(topology)


def _as_gpu_process(item: Any) -> GpuProcess:
    if isinstance(item, GpuProcess):
        return item
    get = item.get if isinstance(item, Mapping) else lambda key, default=None: getattr(item, key, default)
    return GpuProcess(
        pid=int(get("pid")),
        gpu_uuid=str(get("uuid", None) or get("gpu_uuid", "") or ""),
        gpu_index=get("gpu_index", None),
        slot=get("slot", None) or get("slot_id", None),
        used_memory_mib=get("used_memory_mib", None),
    )


def fake_topology_processes(path: str) -> list:
    """``processes: [{pid, used_memory_mib}]`` of each GPU and MIG instance in a topology file.
    A MIG instance's processes carry the instance's UUID and slot ``<gpu>.<n>``."""
    import yaml  # guarded by the caller's broad edge: PyYAML is a runtime dependency

    with open(path, encoding="utf-8") as handle:
        doc = yaml.safe_load(handle) or {}
    out = []
    for gpu_entry in doc.get("gpus") or []:
        index = gpu_entry.get("index")
        for proc in gpu_entry.get("processes") or []:
            out.append(
                GpuProcess(
                    int(proc["pid"]), str(gpu_entry.get("uuid") or ""), index, str(index), proc.get("used_memory_mib")
                )
            )
        for n, inst in enumerate(gpu_entry.get("instances") or []):
            for proc in inst.get("processes") or []:
                out.append(
                    GpuProcess(
                        int(proc["pid"]),
                        str(inst.get("uuid") or ""),
                        index,
                        f"{index}.{n}",
                        proc.get("used_memory_mib"),
                    )
                )
    return out


def event_emitter(config: Any) -> Emit:
    """``emit(event_type, user, **details)`` into the JSONL event log (``events.py``)."""
    try:
        from . import events
    except ImportError:
        log.warning("events.py unavailable: detection events go to the service log only")
        return _no_events
    event_log = events.EventLog(events.default_log_path(config))

    def emit(event_type: str, user: Optional[str] = None, **details: Any) -> None:
        log.info("%s user=%s %s", event_type, user, details)
        event_log.write(event_type, user=user, source="detector", **details)

    return emit


def owner_resolver(config: Any) -> Callable[[Mapping[str, Any]], tuple]:
    """``attrs -> (login or None, how it was found)`` through identity's one owner resolver."""
    resolve = getattr(identity, "container_owner", None)
    if resolve is None:
        log.warning("identity has no owner resolver in this build: owners come from ds01.user only")

        def label_only(attrs: Mapping[str, Any]) -> tuple:
            user = _labels(attrs).get("ds01.user")
            return (user, "ds01.user") if user else (None, "unknown")

        return label_only

    def owner(attrs: Mapping[str, Any]) -> tuple:
        return resolve(attrs)

    return owner


def allocator_hook(config: Any) -> Optional[Callable[[], None]]:
    """The allocator's DCGM job-mapping sync (``allocator.sync_job_mapping``), called after events
    that change GPU holdings, or None when this build has none."""
    try:
        from . import allocator
    except ImportError:
        return None
    sync = getattr(allocator, "sync_job_mapping", None)
    if sync is None:
        return None
    from . import docker_state, gpu

    cache = docker_state.InspectCache()  # a warm read is one list call plus inspects of new containers

    def hook() -> None:
        inventory = gpu.inventory_from_config(config)
        holdings = docker_state.list_containers(docker_state.client_from_env(), inventory, cache=cache)
        sync(inventory, holdings, config.section("gpu_allocation")["mapping_dir"])

    return hook


# --------------------------------------------------------------------------------------------
# Assembly: run_once and the watcher
# --------------------------------------------------------------------------------------------


def inventory_path(config: Any) -> str:
    return os.path.join(config.paths.state_dir, INVENTORY_FILE)


def build_detector(config: Any, emit: Optional[Emit] = None, proc: Optional[ProcReader] = None) -> Detector:
    monitoring = config.section("monitoring")
    bare_metal = config.section("bare_metal_access")
    return Detector(
        inventory_path(config),
        owner_of=owner_resolver(config),
        emit=emit or event_emitter(config),
        proc=proc,
        exempt_users=config.gpu_exempt_users,
        grant_dir=bare_metal.get("state_dir"),
        infra_label=monitoring.get("infrastructure_label") or "ds01.protected",
        infra_names=monitoring.get("infrastructure_containers") or (),
    )


class InventoryLock:
    """``workloads.lock`` beside the inventory: one writer at a time (the watcher holds it for
    its lifetime; ``detect once`` takes it for one run)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def acquire(self, wait_s: float = 0.0) -> bool:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> Optional[str]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_path(config: Any) -> str:
    return os.path.join(config.paths.state_dir, LOCK_FILE)


@dataclass
class OnceResult:
    path: str
    containers: int
    gpu_containers: int
    host_processes: int
    pending_processes: int
    unmanaged: int
    docker_error: Optional[str]
    gpu_error: Optional[str]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_once(
    config: Any,
    detector: Optional[Detector] = None,
    source: Optional[DockerSource] = None,
    read_gpu: Optional[Callable[[], tuple]] = None,
    hook: Optional[Callable[[], None]] = None,
) -> OnceResult:
    """One full Docker sync and one host sweep, then the inventory is written (cron, tests)."""
    detector = detector or build_detector(config)
    detector.load()
    docker_error = None
    changed = False
    try:
        source = source or DockerSource()
        changed = detector.full_sync(source.list_all())
    except DockerUnavailable as exc:
        docker_error = str(exc)
        detector.docker_status = {"ok": False, "error": docker_error}
    processes, gpu_error = (read_gpu or gpu_process_reader(config))()
    changed = detector.sweep(processes, gpu_error) or changed
    detector.save("once")
    hook = hook if hook is not None else allocator_hook(config)
    if hook and changed:
        _call_hook(hook)
    return OnceResult(
        path=detector.inventory_path,
        containers=len(detector.containers),
        gpu_containers=sum(1 for c in detector.containers.values() if c.get("has_gpu")),
        host_processes=len(detector.host_processes),
        pending_processes=len(detector.pending),
        unmanaged=sum(1 for c in detector.containers.values() if c.get("unmanaged_gpu"))
        + sum(1 for p in detector.host_processes.values() if p.get("unmanaged_gpu")),
        docker_error=docker_error,
        gpu_error=gpu_error,
    )


def _call_hook(hook: Callable[[], None]) -> None:
    try:
        hook()
    except Exception as exc:  # noqa: BLE001 - another component's edge: logged, never stops detection
        log.warning("the allocator's job-mapping sync failed: %s", exc)


class Watcher:
    """Docker's event stream plus a periodic sweep, feeding one ``Detector``.

    A reader thread owns the stream: it connects, says ``connected``, forwards every container
    event, and on any failure says ``disconnected`` and reconnects with backoff (0.5 s doubling to
    ``max_backoff_s``). The main thread does all the rest: on ``connected`` a full resync (the
    stream is opened *before* the resync, so nothing that happens during it is missed), on events
    a fresh inspect of the containers they name, every ``sweep_interval_s`` a host sweep and a
    drift resync. Each batch ends with one atomic inventory write.
    """

    def __init__(
        self,
        detector: Detector,
        source: DockerSource,
        read_gpu: Callable[[], tuple],
        *,
        sweep_interval_s: float = 30.0,
        hook: Optional[Callable[[], None]] = None,
        max_backoff_s: float = 15.0,
    ) -> None:
        self.detector = detector
        self.source = source
        self.read_gpu = read_gpu
        self.sweep_interval_s = sweep_interval_s
        self.hook = hook
        self.max_backoff_s = max_backoff_s
        self.stop_event = threading.Event()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe from a signal handler (stop)
        self._stream: Any = None
        self._stream_client: Any = None
        self.connected = False
        self.reconnects = 0

    # -- reader thread ---------------------------------------------------------------------
    def _reader(self) -> None:
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                client, stream = self.source.events()
            except DockerUnavailable as exc:
                self.queue.put(("disconnected", str(exc)))
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self._stream_client, self._stream = client, stream
            self.queue.put(("connected", None))
            backoff = 0.5
            reason = "the event stream ended (daemon stopped?)"
            try:
                for event in stream:
                    self.queue.put(("event", event))
                    if self.stop_event.is_set():
                        break
            except (DockerException, RequestException, OSError) as exc:
                reason = f"event stream lost: {exc}"
            except Exception as exc:  # noqa: BLE001 - the stream edge: anything the SDK raises ends this stream only
                reason = f"event stream failed: {type(exc).__name__}: {exc}"
            finally:
                self._close_stream()
            if not self.stop_event.is_set():
                self.queue.put(("disconnected", reason))
                self.stop_event.wait(backoff)

    def _close_stream(self) -> None:
        stream, client = self._stream, self._stream_client
        self._stream = self._stream_client = None
        for thing in (stream, client):
            if thing is not None:
                try:
                    thing.close()
                except Exception as exc:  # noqa: BLE001 - closing a dead connection: nothing to do about it
                    log.debug("closing the event stream: %s", exc)

    # -- main thread -----------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()
        self.queue.put(("stop", None))
        self._close_stream()

    def run(self) -> None:
        self.detector.load()
        reader = threading.Thread(target=self._reader, name="ds01-docker-events", daemon=True)
        reader.start()
        self._guard(self._sweep, resync=False)  # the host part does not wait for Docker
        self._save()
        next_sweep = time.monotonic() + self.sweep_interval_s
        while not self.stop_event.is_set():
            timeout = max(0.0, next_sweep - time.monotonic())
            try:
                first = self.queue.get(timeout=timeout)
            except queue.Empty:
                self._guard(self._sweep, resync=True)
                self._save()
                next_sweep = time.monotonic() + self.sweep_interval_s
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self._guard(self._handle, batch)
            self._save()
        self._close_stream()

    def _guard(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except DockerUnavailable as exc:
            self._mark_down(str(exc))
        except Exception as exc:  # the service loop's edge: log it, keep watching
            log.error("detector step failed (%s: %s); continuing", type(exc).__name__, exc, exc_info=True)

    def _mark_down(self, reason: str) -> None:
        if self.connected or self.detector.docker_status.get("error") != reason:
            log.warning("Docker unavailable: %s", reason)
        self.connected = False
        self.detector.docker_status = {"ok": False, "error": reason}

    def _handle(self, batch: list) -> None:
        refresh: dict = {}  # id -> "destroy" | "inspect" (ordered)
        resync = False
        for kind, payload in batch:
            if kind == "connected":
                if not self.connected and self.detector.last_sync is not None:
                    self.reconnects += 1
                self.connected = True
                resync = True
                refresh.clear()
            elif kind == "disconnected":
                self._mark_down(payload)
            elif kind == "event" and isinstance(payload, dict):
                action = str(payload.get("Action") or payload.get("status") or "").split(":", 1)[0]
                cid = payload.get("id") or (payload.get("Actor") or {}).get("ID")
                if cid and action in WATCHED_ACTIONS:
                    refresh[cid] = "destroy" if action == "destroy" else "inspect"
        changed = False
        if resync:
            changed = self.detector.full_sync(self.source.list_all())
        for cid, what in refresh.items():
            if what == "destroy":
                changed = self.detector.remove(cid) or changed
                continue
            attrs = self.source.inspect(cid)
            changed = (self.detector.remove(cid) if attrs is None else self.detector.upsert(attrs)) or changed
        if refresh and self.connected:
            self.detector.docker_status = {"ok": True, "error": None}
        if changed and self.hook:
            _call_hook(self.hook)

    def _sweep(self, resync: bool) -> None:
        changed = False
        if resync and self.connected:
            try:
                changed = self.detector.full_sync(self.source.list_all())
            except DockerUnavailable as exc:
                self._mark_down(str(exc))
        processes, error = self.read_gpu()
        changed = self.detector.sweep(processes, error) or changed
        if changed and self.hook:
            _call_hook(self.hook)

    def _save(self) -> None:
        try:
            self.detector.save("watch")
        except OSError as exc:
            log.error("could not write the inventory %s: %s", self.detector.inventory_path, exc)
