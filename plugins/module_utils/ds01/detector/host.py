"""Reading the host for the detector: one process's ``/proc`` files, bare-metal grant files, and
NVML's compute processes (through ``gpu.py``)."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional

from .. import gpu, grants, logs
from .attribution import Attribution, GpuProcess, decide_attribution, parse_cgroup, parse_start_time, parse_status_uid

log = logs.get("ds01.detector")


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


def grant_active(state_dir: str, login: str, now: dt.datetime) -> bool:
    """Whether ``<state_dir>/<login>.json`` grants bare-metal GPU use now: ``grants.read``, which decides by the
    same rule the profile.d deterrent applies (one rule, one reader)."""
    found = grants.read(state_dir, login, now.timestamp())
    return found is not None and found.active


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
    for item in gpu.compute_processes(config):
        yield _as_gpu_process(item)


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
