"""The create body as it is forwarded: labels, cgroup parent, per-container limits and hardening stamped from
the kernel-verified caller; the GPU grant applied or stripped."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Optional

from .base import (
    LOG_MAX_BUFFER,
    LOG_MAX_FILES,
    LOG_MAX_SIZE,
    MAX_BLKIO_WEIGHT,
    MAX_CPU_SHARES,
    NEVER_CAPABILITIES,
    NVIDIA_ENV,
    CreateContext,
    gateway_label,
    smaller_size,
)
from .create import capability, container_type, explicit_user, is_gpu_request_entry


def _clamp(value: Any, limit: Optional[float]) -> Any:
    """``value`` unless it is unset (0/None/-1) or above ``limit``; None limit = unlimited."""
    if limit is None:
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or value > limit:
        return int(limit)
    return value


def _size_text(n_bytes: float) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n_bytes >= 1 << shift:
            value = n_bytes / (1 << shift)
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def _number_text(value: float) -> str:
    return f"{value:g}"


def _capped(value: Any, limit: Optional[float]) -> bool:
    """The caller asked for more than ``limit``, or for unlimited (-1), rather than leaving it unset."""
    if limit is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return value < 0 or value > limit


def cap_warning(
    what: str, asked: float, limit: float, ctx: CreateContext, text: Any = _size_text, own: bool = True
) -> str:
    """One create ``Warning`` sentence: what was asked and the limit it was capped to, and whose limit."""
    whose = f"your limit {text(limit)} (group {ctx.group})" if own else f"{text(limit)}, this host's CPU count"
    shown = "unlimited" if asked < 0 else text(asked)
    return f"{what} {shown} asked, capped to {whose}"


def apply_limits(host: dict, ctx: CreateContext, warnings: Optional[list] = None) -> dict:
    """Per-container CPU, memory, swap, shm and pids limits, where the caller asked for more or nothing.

    ``warnings``: a sentence is appended for each value the caller asked for and did not get (the create
    response's ``Warnings``, which the docker CLI prints), so a cap is never silent."""
    notes: list = [] if warnings is None else warnings
    cpus = ctx.cpu_cap()
    if cpus is not None:
        own = ctx.max_cpus is not None and cpus >= ctx.max_cpus
        max_nano = int(cpus * 1e9)
        period = host.get("CpuPeriod") or 0
        quota = host.get("CpuQuota") or 0
        if isinstance(period, int) and isinstance(quota, int) and period > 0 and quota > 0:
            if quota / period > cpus:
                notes.append(cap_warning("CPUs", quota / period, cpus, ctx, _number_text, own))
                host["CpuQuota"] = int(cpus * period)
        else:
            # -1 (or any non-positive quota) is "unlimited" to the kernel: the cap comes from NanoCpus
            host.pop("CpuQuota", None)
            host.pop("CpuPeriod", None)
            if _capped(host.get("NanoCpus"), max_nano):
                notes.append(cap_warning("CPUs", host["NanoCpus"] / 1e9, cpus, ctx, _number_text, own))
            host["NanoCpus"] = _clamp(host.get("NanoCpus"), max_nano)
    for key, what, limit in (
        ("Memory", "memory", ctx.memory),
        ("MemorySwap", "memory+swap", ctx.memory_swap),
        ("ShmSize", "shm", ctx.shm_size),
        ("PidsLimit", "pids", ctx.pids_limit),
    ):
        if limit is None:
            continue
        if _capped(host.get(key), limit):
            notes.append(cap_warning(what, host[key], limit, ctx, _number_text if key == "PidsLimit" else _size_text))
        host[key] = _clamp(host.get(key), limit)
        if key == "MemorySwap":
            memory = host.get("Memory") or 0
            host["MemorySwap"] = max(host["MemorySwap"], memory) if memory else host["MemorySwap"]
    return host


def rewrite_create(body: dict, ctx: CreateContext, warnings: Optional[list] = None) -> dict:
    """Stamp ownership, slice and limits on a create body already passed by ``check_create``;
    each capped limit adds a sentence to ``warnings`` (``apply_limits``)."""
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict):
        labels = {}
    kind = container_type(labels)
    labels = {k: str(v) for k, v in labels.items() if not gateway_label(k)}
    now = ctx.now or dt.datetime.now(dt.timezone.utc)
    labels.update(
        {
            "ds01.user": ctx.login,
            "ds01.managed": "true",
            "ds01.container_type": kind,
            "ds01.created_at": now.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        }
    )
    body["Labels"] = labels
    host = body.get("HostConfig") or {}
    host["CgroupParent"] = host.get("CgroupParent") or ctx.slice_name
    harden(body, host, ctx)
    body["HostConfig"] = apply_limits(host, ctx, warnings)
    return body


def harden(body: dict, host: dict, ctx: CreateContext) -> None:
    """Root in the container is never root on the host: the caller's uid, no-new-privileges, and
    no capability that makes setuid files or device nodes (checked requests only)."""
    if ctx.uid >= 0:
        body["User"] = explicit_user(str(body.get("User") or ""), ctx)
    options = [str(o) for o in host.get("SecurityOpt") or []]
    if not any(re.fullmatch(r"no-new-privileges([:=]true)?", o) for o in options):
        options.append("no-new-privileges")
    host["SecurityOpt"] = options
    for bindings in (host.get("PortBindings") or {}).values():
        for binding in bindings or []:
            if isinstance(binding, dict) and not binding.get("HostIp"):
                binding["HostIp"] = "127.0.0.1"  # never every interface of the host
    if isinstance(host.get("CpuShares"), int) and host["CpuShares"] > MAX_CPU_SHARES:
        host["CpuShares"] = MAX_CPU_SHARES  # above the default is priority over everyone else
    if isinstance(host.get("BlkioWeight"), int) and host["BlkioWeight"] > MAX_BLKIO_WEIGHT:
        host["BlkioWeight"] = MAX_BLKIO_WEIGHT
    log_config = host.get("LogConfig") or {}
    if str(log_config.get("Type") or "") in ("", "json-file", "local"):
        options = dict(log_config.get("Config") or {})
        options["max-size"] = smaller_size(options.get("max-size"), LOG_MAX_SIZE)
        files = str(options.get("max-file") or "")
        options["max-file"] = files if files.isdigit() and 0 < int(files) <= LOG_MAX_FILES else str(LOG_MAX_FILES)
        if "mode" in options or "max-buffer-size" in options:
            options["max-buffer-size"] = smaller_size(options.get("max-buffer-size"), LOG_MAX_BUFFER)
        host["LogConfig"] = {"Type": str(log_config.get("Type") or ""), "Config": options}
    drop = [str(c) for c in host.get("CapDrop") or []]
    have = {capability(c) for c in drop}
    if "ALL" not in have:
        drop.extend(c for c in NEVER_CAPABILITIES if c not in have)
    host["CapDrop"] = drop


def set_env(body: dict, name: str, value: str) -> None:
    env = [e for e in (body.get("Env") or []) if not (isinstance(e, str) and e.partition("=")[0] == name)]
    env.append(f"{name}={value}")
    body["Env"] = env


def apply_gpu_grant(body: dict, uuids: list, labels: dict) -> dict:
    """Replace every GPU request form by exactly the granted devices."""
    host = body.setdefault("HostConfig", {})
    others = [e for e in host.get("DeviceRequests") or [] if not is_gpu_request_entry(e)]
    host["DeviceRequests"] = [
        *others,
        {"Driver": "", "Count": 0, "DeviceIDs": list(uuids), "Capabilities": [["gpu"]], "Options": {}},
    ]
    if host.get("Runtime") == "nvidia":
        host["Runtime"] = ""
    set_env(body, NVIDIA_ENV, ",".join(uuids))
    body.setdefault("Labels", {}).update({k: str(v) for k, v in labels.items()})
    return body


def strip_gpu(body: dict) -> dict:
    """A container that asked for no GPU: hide every GPU from the NVIDIA runtime, whatever its image says."""
    set_env(body, NVIDIA_ENV, "void")
    return body


def add_warnings(answer: Any, warnings: list) -> Any:
    """The daemon's create answer with the gateway's ``warnings`` after its own."""
    if not warnings or not isinstance(answer, dict):
        return answer
    own = answer.get("Warnings")
    answer["Warnings"] = [*(own if isinstance(own, list) else []), *warnings]
    return answer
