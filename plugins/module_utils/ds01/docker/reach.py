"""Does this reach a GPU? The one answer, for a create request (the gateway) and for a stored
container (the detector, the allocator's holdings).

Every spelling counts, and where two readings of a setting were possible the stricter one was
kept (the gateway once refused CDI names the detector did not count):

- ``HostConfig.DeviceRequests`` that dockerd hands to its NVIDIA driver: ``Driver: nvidia`` with any
  capabilities, or an empty driver with a capability group the driver registers (``gpu``,
  ``compute``, ``utility`` …); ids, ``Count: -1`` (all) or a count;
- CDI device names of NVIDIA's vendor domain (``nvidia.com/gpu=0``, ``nvidia.com/mig=…``,
  ``management.nvidia.com/gpu=all``), in a ``cdi`` DeviceRequest or in ``HostConfig.Devices``;
- device nodes and bind mounts of ``/dev/nvidia<N>`` (and ``/dev/char/195:<N>``, the same node);
  ``/dev/nvidiactl``, ``/dev/nvidia-uvm`` and ``/dev/nvidia-caps`` alone reach no GPU, the source is kept;
- ``NVIDIA_VISIBLE_DEVICES`` (the container's, else the image's) when the NVIDIA hook runs: the
  ``nvidia`` runtime, or a DeviceRequest without ids; ``void``/``none``/empty reach nothing;
- a mount onto ``/var/run/nvidia-container-devices`` (the toolkit's "devices as volume mounts");
- ``Privileged``: every device of the host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from ..record import field, record

NVIDIA_ENV = "NVIDIA_VISIBLE_DEVICES"
NO_GPU_VALUES = ("void", "none", "")
# The capabilities dockerd's built-in "nvidia" device driver registers (daemon/nvidia_linux.go): a
# DeviceRequest with an empty Driver goes to it when one of its capability groups is a subset.
NVIDIA_CAPABILITIES = frozenset(("gpu", "nvidia", "compute", "compat32", "graphics", "utility", "video", "display"))
# Where the NVIDIA toolkit reads "visible devices as volume mounts" from.
NVIDIA_VOLUME_DIR = "/var/run/nvidia-container-devices"
CDI_GPU_PREFIX = "nvidia.com/gpu="
NVIDIA_CDI_VENDOR = "nvidia.com"
NVIDIA_MAJOR = 195  # the character major of /dev/nvidia<N> and /dev/nvidiactl
NVIDIA_CTL_MINORS = 254  # minors from here up are the control nodes, below are GPUs
_NVIDIA_NODE = re.compile(r"/dev/nvidia([0-9]+)")
_NVIDIA_CHAR = re.compile(rf"/dev/char/{NVIDIA_MAJOR}:([0-9]+)")
_CDI_NAME = re.compile(r"[A-Za-z0-9.-]+/[A-Za-z0-9._-]+=[^=]*")


@record
class GpuReach:
    """How a container (or a create request) reaches NVIDIA GPUs.

    ``devices``: ids as written (UUIDs, indices, MIG ids); ``all``: every GPU; ``count``: GPUs
    asked for by number without ids (``--gpus 2``), which NVIDIA's runtime hands out from the
    first; ``sources``: the settings that say so (device_request, cdi, runtime_env, env,
    image_env, device_node, device_bind, privileged, volume_mount); ``unknown``: device requests
    no driver on this daemon serves (they fail at create, but they are not GPU requests).
    """

    devices: list = field(default_factory=list)
    all: bool = False
    count: int = 0
    sources: list = field(default_factory=list)
    unknown: list = field(default_factory=list)

    @property
    def reaches_gpu(self) -> bool:
        return self.all or bool(self.devices) or self.count > 0

    def add(self, source: str, devices: Iterable[str] = (), all_gpus: bool = False, count: int = 0) -> None:
        if source not in self.sources:
            self.sources.append(source)
        for raw in devices:
            device = str(raw).strip()
            if device and device not in self.devices:
                self.devices.append(device)
        self.all = self.all or all_gpus
        self.count += count


def env_value(env: Any, name: str) -> Optional[str]:
    """The last ``NAME=value`` of a Docker Env list (later entries win), or None."""
    value = None
    for item in env or []:
        key, sep, rest = str(item).partition("=")
        if key == name:
            value = rest if sep else ""
    return value


def is_cdi_name(value: str) -> bool:
    """``vendor.com/class=name``: a CDI device name (Devices or a ``cdi`` DeviceRequest)."""
    return bool(_CDI_NAME.fullmatch(value))


def cdi_gpu(name: str) -> Optional[str]:
    """The device part of a CDI name that reaches an NVIDIA GPU (``all`` for every one), else None.

    Every class of NVIDIA's vendor domain counts (``nvidia.com/gpu``, ``nvidia.com/mig``,
    ``management.nvidia.com/gpu`` …): each names GPU hardware."""
    if not is_cdi_name(name):
        return None
    kind, _sep, device = name.partition("=")
    vendor = kind.partition("/")[0].lower()
    if vendor == NVIDIA_CDI_VENDOR or vendor.endswith("." + NVIDIA_CDI_VENDOR):
        return device
    return None


def device_request_reaches_gpu(request: Mapping[str, Any]) -> bool:
    """True when dockerd would hand this DeviceRequest to the NVIDIA driver (or it names CDI GPUs)."""
    driver = str(request.get("Driver") or "")
    if driver == "nvidia":
        return True
    if driver == "cdi":
        return any(cdi_gpu(str(i)) is not None for i in request.get("DeviceIDs") or [])
    if driver:
        return False
    groups = [{str(c) for c in group or []} for group in request.get("Capabilities") or []]
    return any(group and group <= NVIDIA_CAPABILITIES for group in groups)


def _node(path: str) -> Optional[list]:
    """``[index]`` for a GPU's device node, ``[]`` for another NVIDIA node, None for anything else."""
    match = _NVIDIA_NODE.fullmatch(path) or _NVIDIA_CHAR.fullmatch(path)
    if match and int(match.group(1)) < NVIDIA_CTL_MINORS:
        return [match.group(1)]
    if match:
        return []  # 195:254 is /dev/nvidia-modeset, 195:255 /dev/nvidiactl
    if path.startswith("/dev/nvidia"):
        return []  # /dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia-caps/…: no GPU alone
    return None


def _add_cdi(reach: GpuReach, names: Iterable[str]) -> None:
    found = [d for d in (cdi_gpu(str(n)) for n in names) if d is not None]
    if found:
        reach.add("cdi", [d for d in found if d != "all"], all_gpus="all" in found)


def _under_volume_dir(target: str) -> bool:
    return target == NVIDIA_VOLUME_DIR or target.startswith(NVIDIA_VOLUME_DIR + "/")


def gpu_reach(
    config: Optional[Mapping[str, Any]],
    host: Optional[Mapping[str, Any]],
    image_env: Optional[list] = None,
    default_runtime: str = "runc",
) -> GpuReach:
    """Every way a container with this ``Config`` and ``HostConfig`` reaches NVIDIA GPUs.

    ``config``/``host``: the parts of a create body or of an inspect document. ``image_env``: the
    image's default Env, for a request (a stored container's Env already holds it).
    ``default_runtime``: the runtime dockerd uses when ``Runtime`` is empty (a stored container
    has it filled in; the gateway passes ``nvidia`` when it cannot rule that out).
    """
    config = config or {}
    host = host or {}
    reach = GpuReach()
    hook = False  # the NVIDIA prestart hook runs for this container
    for request in host.get("DeviceRequests") or []:
        if not isinstance(request, Mapping):
            continue
        if not device_request_reaches_gpu(request):
            reach.unknown.append(dict(request))
            continue
        ids = [str(i) for i in request.get("DeviceIDs") or []]
        if str(request.get("Driver") or "") == "cdi":
            _add_cdi(reach, ids)
            continue
        hook = True
        count = request.get("Count")
        if ids:
            reach.add("device_request", ids)
        elif isinstance(count, int) and count < 0:
            reach.add("device_request", all_gpus=True)
        elif isinstance(count, int) and count > 0:
            reach.add("device_request", count=count)
        else:  # no ids, no count: the hook then exposes what NVIDIA_VISIBLE_DEVICES says (or 1)
            reach.add("device_request", count=1)
    for device in host.get("Devices") or []:
        path = str((device or {}).get("PathOnHost") or "") if isinstance(device, Mapping) else str(device)
        if is_cdi_name(path):
            _add_cdi(reach, [path])
            continue
        node = _node(path)
        if node is not None:
            reach.add("device_node", node)
    for mount in host.get("Mounts") or []:
        if not isinstance(mount, Mapping):
            continue
        if _under_volume_dir(str(mount.get("Target") or "")):
            reach.add("volume_mount", all_gpus=True)
        node = _node(str(mount.get("Source") or ""))
        if node is not None:
            reach.add("device_bind", node)
    for bind in host.get("Binds") or []:
        parts = str(bind).split(":")
        if len(parts) > 1 and _under_volume_dir(parts[1]):
            reach.add("volume_mount", all_gpus=True)
        node = _node(parts[0])
        if node is not None:
            reach.add("device_bind", node)
    runtime = str(host.get("Runtime") or "") or default_runtime
    if "nvidia" in runtime or hook:
        own = env_value(config.get("Env"), NVIDIA_ENV)
        image = env_value(image_env, NVIDIA_ENV)
        value, source = (own, "env") if own is not None else (image, "image_env")
        if "nvidia" in str(host.get("Runtime") or "") and not hook and source == "env":
            source = "runtime_env"
        if value is not None and value.strip().lower() not in NO_GPU_VALUES and not reach.reaches_gpu:
            ids = [p.strip() for p in value.split(",") if p.strip()]
            reach.add(source, [i for i in ids if i != "all"], all_gpus="all" in ids)
    if host.get("Privileged"):
        reach.add("privileged", all_gpus=True)
    return reach


def container_gpu_reach(attrs: Mapping[str, Any]) -> GpuReach:
    """``gpu_reach`` of a stored container (an inspect document, or its cached create-time facts)."""
    return gpu_reach(attrs.get("Config"), attrs.get("HostConfig"), default_runtime="runc")
