"""Activity readers (host side: the kernel's own counters, no subprocess, no docker stats) and the
GPU probe over ``gpu.py``'s inventory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

from .. import config as config_mod
from .. import gpu, logs

log = logs.get(__package__)


class HostReader:
    """Reads a running container's CPU, network and process activity through its PID 1.

    CPU: the cgroup's cumulative counter (v2 ``cpu.stat`` ``usage_usec``; v1 ``cpuacct.usage``),
    found from ``/proc/<pid>/cgroup``. Network: ``/proc/<pid>/net/dev`` (the container's own
    network namespace), all interfaces but ``lo``. Busy processes: members of the cgroup in state
    R or D. Each reader returns None when the file is not there (never a made-up zero).
    """

    def __init__(self, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> None:
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root

    def _read(self, path: str) -> Optional[str]:
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                return handle.read()
        except OSError:
            return None

    def cgroup_dir(self, pid: int) -> Optional[tuple]:
        """(kind, directory) of the cgroup that accounts the CPU of ``pid``: v1 cpuacct, else v2."""
        text = self._read(os.path.join(self.proc_root, str(pid), "cgroup"))
        if text is None:
            return None
        unified = None
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            hier, controllers, path = parts
            if "cpuacct" in controllers.split(","):
                for mount in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
                    base = os.path.join(self.cgroup_root, mount)
                    if os.path.isdir(base):
                        return "v1", os.path.join(base, path.lstrip("/"))
            if hier == "0" and controllers == "":
                unified = path
        if unified is not None:
            for base in (self.cgroup_root, os.path.join(self.cgroup_root, "unified")):
                if os.path.exists(os.path.join(base, "cgroup.controllers")):
                    return "v2", os.path.join(base, unified.lstrip("/"))
        return None

    def cpu_ns(self, cgroup: Optional[tuple]) -> Optional[int]:
        if cgroup is None:
            return None
        kind, directory = cgroup
        if kind == "v1":
            text = self._read(os.path.join(directory, "cpuacct.usage"))
            return int(text.strip()) if text and text.strip().isdigit() else None
        text = self._read(os.path.join(directory, "cpu.stat"))
        for line in (text or "").splitlines():
            key, _sep, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) * 1000
        return None

    def net_bytes(self, pid: int) -> Optional[int]:
        text = self._read(os.path.join(self.proc_root, str(pid), "net", "dev"))
        if text is None:
            return None
        total = 0
        for line in text.splitlines()[2:]:
            name, _sep, rest = line.partition(":")
            fields = rest.split()
            if name.strip() == "lo" or len(fields) < 9:
                continue
            total += int(fields[0]) + int(fields[8])
        return total

    def busy_processes(self, cgroup: Optional[tuple]) -> Optional[int]:
        if cgroup is None:
            return None
        text = self._read(os.path.join(cgroup[1], "cgroup.procs"))
        if text is None:
            return None
        busy = 0
        for pid in text.split():
            stat = self._read(os.path.join(self.proc_root, pid, "stat"))
            if stat and stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] in ("R", "D"):
                busy += 1
        return busy


class GpuProbe:
    """GPU utilisation and capacity for the lifecycle; the default knows nothing (None)."""

    def utilization(self, uuids: Sequence[str]) -> Optional[float]:
        return None

    def capacity_gpueq(self) -> Optional[float]:
        return None


class InventoryGpuProbe(GpuProbe):
    """Adapter over ``gpu.Inventory``: ``utilization(uuid)`` per device (the busiest counts) and capacity."""

    def __init__(self, inventory: Any) -> None:
        self.inventory = inventory

    def utilization(self, uuids: Sequence[str]) -> Optional[float]:
        values = []
        for uuid in uuids:
            try:
                value = self.inventory.utilization(uuid)
            except (gpu.GpuInventoryError, LookupError, ValueError) as exc:
                log.info("no GPU utilisation for %s: %s", uuid, exc)
                value = None
            if value is None:  # MIG, or the device does not report: decided on the other signals
                return None
            values.append(float(value))
        return max(values) if values else None

    def capacity_gpueq(self) -> Optional[float]:
        return float(self.inventory.capacity_gpueq()) or None


def gpu_probe_from_config(config: config_mod.Config) -> GpuProbe:
    """The GPU inventory of ``gpu.py`` (NVML, or the fake topology), or a probe that knows nothing."""
    try:
        return InventoryGpuProbe(gpu.inventory_from_config(config))
    except gpu.GpuInventoryError as exc:  # the NVML edge: a GPU fault must not stop the sweep
        log.warning("GPU inventory unavailable (%s): GPU utilisation unknown this sweep", exc)
        return GpuProbe()
