"""Classification (pure: ``docker inspect`` JSON in, facts out): a container's origin, the GPU
devices it can reach, and its inventory record; the time helpers the detector's records use."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional

from .. import docker
from ..record import field, record

ORIGIN_INFRA = "infrastructure"
ORIGIN_MANAGED = "ds01-managed"
ORIGIN_DEVCONTAINER = "devcontainer"
ORIGIN_COMPOSE = "compose"
ORIGIN_RAW = "raw-docker"
ORIGIN_HOST = "host-process"
ORIGINS = (ORIGIN_MANAGED, ORIGIN_DEVCONTAINER, ORIGIN_COMPOSE, ORIGIN_RAW, ORIGIN_INFRA, ORIGIN_HOST)

RUNNING_STATES = frozenset({"running", "paused", "restarting"})
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: Any) -> Optional[dt.datetime]:
    """An ISO-8601 time (``Z`` or an offset; Docker's nanoseconds are cut to microseconds), through
    ``docker.parse_time``, the one parser; None for anything but text."""
    return docker.parse_time(text) if isinstance(text, str) else None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in TRUE_VALUES


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
    """The container's origin (see the package docstring, ``detector``, for the order of the rules)."""
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


@record
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

    The answer is ``docker.gpu_reach`` (the gateway asks the same function of a create
    request); a count without ids (``--gpus 2``) is reported as ``all``, since the detector cannot
    know which GPUs the runtime picked.
    """
    reach = docker.container_gpu_reach(attrs)
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
