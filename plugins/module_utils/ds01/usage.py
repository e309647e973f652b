"""Per-user aggregate usage read from the user's systemd slice: memory, CPU, tasks, OOM kills, PSI.

The slice's cgroup is found through systemd (``systemctl show -p ControlGroup``), not guessed,
and read on all three layouts a lab host may have:

- ``v2``: one unified hierarchy at ``/sys/fs/cgroup`` (``memory.current``, ``cpu.stat``,
  ``pids.current``, ``memory.events``, ``*.pressure``);
- ``hybrid``: v1 controllers (``/sys/fs/cgroup/memory`` …) plus cgroup2 at
  ``/sys/fs/cgroup/unified`` (which carries PSI);
- ``v1``: controllers only, no PSI.

Missing files are reported as ``None`` ("unknown"), never as zero, so a reader can tell an
idle user from a slice that does not exist yet. Nothing here raises on a missing cgroup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Callable, Optional

from .record import asdict, field, record

UNLIMITED_V1 = 9223372036854771712  # memory.limit_in_bytes "no limit" on 4K-page kernels


@record
class SliceUsage:
    slice: str
    layout: str
    control_group: Optional[str]
    exists: bool
    memory_current: Optional[int] = None
    memory_max: Optional[int] = None  # None: unlimited or unknown (see exists)
    cpu_usage_seconds: Optional[float] = None
    tasks_current: Optional[int] = None
    tasks_max: Optional[int] = None
    oom_kills: Optional[int] = None
    psi: dict = field(default_factory=dict)  # {"cpu": {"some": {"avg10":…,"total":…}, "full": …}, …}

    def as_dict(self) -> dict:
        return asdict(self)


def _v1_oom_kills(memory: str) -> Optional[int]:
    """OOM kills in a v1 memory cgroup and everything below it. v1 counts a kill only in the killed task's own
    cgroup (v2's memory.events is hierarchical), and work runs in a slice's children (container scopes,
    services). A kill in a child that is gone before the next reading is not seen: v1 keeps no record."""
    total = _keyed(_read(os.path.join(memory, "memory.oom_control"))).get("oom_kill")
    if total is None:
        return None
    for root, dirs, _files in os.walk(memory):
        for name in dirs:
            total += _keyed(_read(os.path.join(root, name, "memory.oom_control"))).get("oom_kill") or 0
    return total


def systemd_control_group(unit: str) -> str:
    """The cgroup path systemd gives a slice, by systemd's own naming rule.

    ``ds01-student-alice.slice`` lives at ``/ds01.slice/ds01-student.slice/ds01-student-alice.slice``:
    each ``-`` in a slice name is a level of the hierarchy (systemd.slice(5)).
    """
    if not unit.endswith(".slice") or unit == "-.slice":
        return "/"
    parts = unit[: -len(".slice")].split("-")
    return "/" + "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int(text: Optional[str]) -> Optional[int]:
    if text is None or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _keyed(text: Optional[str]) -> dict:
    out: dict = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_pressure(text: Optional[str]) -> dict:
    """``some avg10=0.00 avg60=0.00 avg300=0.00 total=0`` lines → nested dict of floats."""
    out: dict = {}
    for line in (text or "").splitlines():
        kind, _sep, rest = line.partition(" ")
        values = {}
        for item in rest.split():
            key, _sep, value = item.partition("=")
            try:
                values[key] = float(value)
            except ValueError:
                continue
        if kind in ("some", "full") and values:
            out[kind] = values
    return out


class SliceReader:
    """Reads slice usage; ``sysfs`` and the systemctl runner are injectable for tests."""

    def __init__(
        self,
        sysfs: str = "/sys/fs/cgroup",
        control_group: Optional[Callable[[str], Optional[str]]] = None,
        proc_root: str = "/proc",
    ) -> None:
        self.sysfs = sysfs
        self._control_group = control_group or self._systemctl_control_group
        self.proc_root = proc_root

    def systemd_root(self) -> str:
        """Where systemd's cgroup tree starts: "" on a host; the container's own cgroup (``/docker/<id>``)
        when systemd runs in a container that shares the host's cgroup namespace. The naming rule
        (``systemd_control_group``) is relative to it. Read from PID 1's systemd line, less ``/init.scope``."""
        try:
            with open(os.path.join(self.proc_root, "1", "cgroup"), encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            return ""
        path = None
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) == 3 and (parts[1] == "name=systemd" or (parts[0] == "0" and parts[1] == "")):
                path = parts[2]
                if parts[1] == "name=systemd":
                    break
        if not path:
            return ""
        if path.endswith("/init.scope"):
            path = path[: -len("/init.scope")]
        return "" if path in ("", "/") else path.rstrip("/")

    @property
    def layout(self) -> str:
        if os.path.exists(os.path.join(self.sysfs, "cgroup.controllers")):
            return "v2"
        if os.path.exists(os.path.join(self.sysfs, "unified", "cgroup.controllers")):
            return "hybrid"
        return "v1"

    @staticmethod
    def _systemctl_control_group(unit: str) -> Optional[str]:
        systemctl = shutil.which("systemctl")
        if systemctl is None:
            return None
        try:
            proc = subprocess.run(
                [systemctl, "show", "-p", "ControlGroup", "--value", unit],
                capture_output=True,
                text=True,
                timeout=2,
                check=False,
                env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        value = proc.stdout.strip()
        return value if proc.returncode == 0 and value.startswith("/") else None

    def _v1(self, controller: str, cgroup: str) -> str:
        candidates = [controller, "cpu,cpuacct"] if controller in ("cpu", "cpuacct") else [controller]
        for name in candidates:
            path = os.path.join(self.sysfs, name, cgroup.lstrip("/"))
            if os.path.isdir(path):
                return path
        return os.path.join(self.sysfs, controller, cgroup.lstrip("/"))

    def read(self, unit: str) -> SliceUsage:
        # systemd knows where an active slice lives; an inactive one has no cgroup yet, and
        # systemd's naming rule says where it will be.
        # (systemd's ControlGroup is already the full path; its naming rule is relative to its root)
        cgroup = self._control_group(unit) or (self.systemd_root() + systemd_control_group(unit))
        layout = self.layout
        usage = SliceUsage(slice=unit, layout=layout, control_group=cgroup, exists=False)
        if layout == "v2":
            base = os.path.join(self.sysfs, cgroup.lstrip("/"))
            usage.exists = os.path.isdir(base)
            usage.memory_current = _int(_read(os.path.join(base, "memory.current")))
            usage.memory_max = _int(_read(os.path.join(base, "memory.max")))
            cpu = _keyed(_read(os.path.join(base, "cpu.stat")))
            usage.cpu_usage_seconds = cpu["usage_usec"] / 1e6 if "usage_usec" in cpu else None
            usage.tasks_current = _int(_read(os.path.join(base, "pids.current")))
            usage.tasks_max = _int(_read(os.path.join(base, "pids.max")))
            events = _keyed(_read(os.path.join(base, "memory.events")))
            usage.oom_kills = events.get("oom_kill")
            psi_base = base
        else:
            memory = self._v1("memory", cgroup)
            usage.exists = os.path.isdir(memory)
            usage.memory_current = _int(_read(os.path.join(memory, "memory.usage_in_bytes")))
            limit = _int(_read(os.path.join(memory, "memory.limit_in_bytes")))
            usage.memory_max = None if limit is None or limit >= UNLIMITED_V1 else limit
            usage.oom_kills = _v1_oom_kills(memory)
            cpuacct = _int(_read(os.path.join(self._v1("cpuacct", cgroup), "cpuacct.usage")))
            usage.cpu_usage_seconds = cpuacct / 1e9 if cpuacct is not None else None
            pids = self._v1("pids", cgroup)
            usage.tasks_current = _int(_read(os.path.join(pids, "pids.current")))
            usage.tasks_max = _int(_read(os.path.join(pids, "pids.max")))
            psi_base = os.path.join(self.sysfs, "unified", cgroup.lstrip("/")) if layout == "hybrid" else None
        if psi_base:
            for resource in ("cpu", "memory", "io"):
                pressure = parse_pressure(_read(os.path.join(psi_base, f"{resource}.pressure")))
                if pressure:
                    usage.psi[resource] = pressure
        return usage
