"""Host process attribution (pure over ``/proc`` text): where a process lives (a container, a login
session or user slice, a system service) and whose it is; the NVML process record."""

from __future__ import annotations

import os
import re
from typing import Callable, Optional

from .. import identity
from ..record import record

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


@record(frozen=True)
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


@record
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


@record(frozen=True)
class GpuProcess:
    """One NVML compute process: on which GPU (and MIG instance) and how much memory."""

    pid: int
    gpu_uuid: str = ""
    gpu_index: Optional[int] = None
    slot: Optional[str] = None
    used_memory_mib: Optional[float] = None
