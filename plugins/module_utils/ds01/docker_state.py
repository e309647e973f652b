"""What Docker says: every container, its owner, and the GPUs it holds.

Docker is the only record of who holds which GPU (ARCHITECTURE.md, "stateless allocation"): a
container in *any* state (created, running, exited …) holds the devices named in its
``HostConfig.DeviceRequests``; removing it frees them. Fallbacks, in order, for containers whose
request carries no device ids: the ``ds01.gpu.uuids`` label (legacy ``ds01.gpu.uuid``), then an
``NVIDIA_VISIBLE_DEVICES`` environment value made of GPU-/MIG- UUIDs (the old multi-GPU path set
it with ``--runtime=nvidia``). A request for ``all`` GPUs (``--gpus all``) holds every GPU, and a
bare count (``--gpus 2``) the first GPUs by index, as NVIDIA's runtime hands them out: the
allocator never grants what it cannot prove free (upstream ignored both, reference §13 #15).

Reading cost. ``containers(all=True)`` (one list call) has labels, names and state but neither
``DeviceRequests`` nor the environment, so each container is inspected once. Those parts of an
inspect document never change for a container id (``docker update`` cannot touch them), so an
``InspectCache`` kept by a long-running caller (the gateway, the detector) turns later reads into
one list call plus inspects of the containers created since. ``benchmarks/allocation.py``
measures both (and ``containers.list(sparse=False)``, which is the same N+1 calls, uncached).

``ContainerInfo`` is the one record of a container that the allocator, detector, lifecycle,
exporter and gateway share; the owner comes from ``identity.container_owner``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from . import identity

try:
    import docker
    from docker.errors import DockerException, NotFound

    HAS_DOCKER = True
except ImportError:  # the core imports without the SDK; callers say what is missing
    docker = None
    HAS_DOCKER = False

    class DockerException(Exception):  # type: ignore[no-redef]
        pass

    class NotFound(DockerException):  # type: ignore[no-redef]
        pass


try:  # the SDK's transport errors come from requests
    from requests.exceptions import RequestException
except ImportError:  # pragma: no cover - requests comes with docker

    class RequestException(Exception):  # type: ignore[no-redef]
        pass


log = logging.getLogger(__name__)

DOCKER_ERRORS = (DockerException, RequestException, OSError)

SLOTS_LABEL = "ds01.gpu.slots"
UUIDS_LABEL = "ds01.gpu.uuids"
LEGACY_UUID_LABEL = "ds01.gpu.uuid"
GPUEQ_LABEL = "ds01.gpu.gpueq"
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"

# Where a container's GPU ids were found (``ContainerInfo.gpu_source``).
GPU_FROM_DEVICE_REQUESTS = "device_requests"
GPU_FROM_LABEL = "label"
GPU_FROM_ENV = "env"
GPU_NONE = ""

_NEVER = "0001-01-01T00:00:00Z"


class DockerStateError(Exception):
    """Docker could not be asked (SDK missing, daemon down or slow); ``str()`` is a sentence."""


@dataclass(frozen=True)
class GpuClaim:
    """The GPU part of a container's inspect document (immutable for a container id)."""

    ids: tuple = ()  # device ids as written: UUIDs, indices, MIG "<gpu>:<n>"
    source: str = GPU_NONE
    all: bool = False  # --gpus all (Count -1)
    count: int = 0  # --gpus N without ids


@dataclass(frozen=True)
class ContainerInfo:
    """One container as the whole project sees it.

    ``slots``/``uuids`` are filled when an inventory was given (``attach_slots``); ``unknown_ids``
    lists device ids the inventory does not know (another host's UUID, a removed MIG instance).
    ``started_at``/``finished_at``/``pid`` need a full inspect (``detail=True``), else None.
    """

    id: str
    name: str
    state: str
    owner: Optional[str]
    owner_method: str
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str = ""
    created: Optional[dt.datetime] = None
    started_at: Optional[dt.datetime] = None
    finished_at: Optional[dt.datetime] = None
    pid: Optional[int] = None
    cgroup_parent: str = ""
    gpu: GpuClaim = GpuClaim()
    slots: tuple = ()
    uuids: tuple = ()
    unknown_ids: tuple = ()
    attrs: Optional[Mapping[str, Any]] = field(default=None, compare=False, repr=False)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def has_gpu(self) -> bool:
        """Asked Docker for GPUs in any form (ids, label, env, all, count)."""
        return bool(self.gpu.ids or self.gpu.all or self.gpu.count)

    @property
    def managed(self) -> bool:
        return self.labels.get("ds01.managed") == "true"

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "owner": self.owner,
            "owner_method": self.owner_method,
            "image": self.image,
            "created": _iso(self.created),
            "started_at": _iso(self.started_at),
            "slots": list(self.slots),
            "uuids": list(self.uuids),
            "gpu_source": self.gpu.source,
            "gpu_all": self.gpu.all,
            "unknown_gpu_ids": list(self.unknown_ids),
        }


def _iso(value: Optional[dt.datetime]) -> Optional[str]:
    return value.isoformat() if value else None


def parse_time(value: Any) -> Optional[dt.datetime]:
    """Docker's timestamps (epoch int or RFC 3339 with nanoseconds) → aware datetime; None for 'never'."""
    if value in (None, "", _NEVER, 0):
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    text = str(value)
    if text.startswith("0001-01-01"):
        return None
    text = text.replace("Z", "+00:00")
    if "." in text:  # trim nanoseconds to microseconds for fromisoformat
        head, _sep, rest = text.partition(".")
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        tz = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tz}"
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Pure: documents → records
# --------------------------------------------------------------------------------------------


def _split_ids(values: Iterable[Any]) -> tuple:
    out = []
    for value in values or ():
        for raw in str(value).split(","):
            part = raw.strip()
            if part and part not in out:
                out.append(part)
    return tuple(out)


def _is_uuid(value: str) -> bool:
    return value.upper().startswith(("GPU-", "MIG-"))


def gpu_claim(inspect: Mapping[str, Any]) -> GpuClaim:
    """The GPUs an inspect document asks for: DeviceRequests, else label, else env of UUIDs."""
    host = inspect.get("HostConfig") or {}
    config = inspect.get("Config") or {}
    labels = config.get("Labels") or {}
    ids: list = []
    want_all = False
    count = 0
    for req in host.get("DeviceRequests") or []:
        caps = {c for group in (req.get("Capabilities") or []) for c in (group or [])}
        if "gpu" not in caps and req.get("Driver") != "nvidia":
            continue
        found = _split_ids(req.get("DeviceIDs") or ())
        ids.extend(i for i in found if i not in ids)
        if not found:
            n = int(req.get("Count") or 0)
            if n < 0:
                want_all = True
            else:
                count += n
    if want_all:
        return GpuClaim(ids=tuple(ids), source=GPU_FROM_DEVICE_REQUESTS, all=True)
    if ids or count:
        return GpuClaim(ids=tuple(ids), source=GPU_FROM_DEVICE_REQUESTS, count=0 if ids else count)
    label = _split_ids([labels.get(UUIDS_LABEL) or labels.get(LEGACY_UUID_LABEL) or ""])
    if label:
        return GpuClaim(ids=label, source=GPU_FROM_LABEL)
    for item in config.get("Env") or []:
        key, _sep, value = str(item).partition("=")
        if key == VISIBLE_DEVICES_ENV:
            env_ids = _split_ids([value])
            if env_ids and all(_is_uuid(i) for i in env_ids):
                return GpuClaim(ids=env_ids, source=GPU_FROM_ENV)
    return GpuClaim()


# --------------------------------------------------------------------------------------------
# Does this reach a GPU? (the one answer: the gateway asks it of a request, the detector of a
# stored container)
# --------------------------------------------------------------------------------------------

NVIDIA_ENV = "NVIDIA_VISIBLE_DEVICES"
NO_GPU_VALUES = ("void", "none", "")
# The capabilities dockerd's built-in "nvidia" device driver registers (daemon/nvidia_linux.go): a
# DeviceRequest with an empty Driver goes to it when one of its capability groups is a subset.
NVIDIA_CAPABILITIES = frozenset(("gpu", "nvidia", "compute", "compat32", "graphics", "utility", "video", "display"))
# Where the NVIDIA toolkit reads "visible devices as volume mounts" from.
NVIDIA_VOLUME_DIR = "/var/run/nvidia-container-devices"
CDI_GPU_PREFIX = "nvidia.com/gpu="
_NVIDIA_NODE = re.compile(r"/dev/nvidia([0-9]+)")
_CDI_NAME = re.compile(r"[A-Za-z0-9.-]+/[A-Za-z0-9._-]+=[^=]*")


@dataclass
class GpuReach:
    """How a container (or a create request) reaches NVIDIA GPUs.

    ``devices``: ids as written (UUIDs, indices, MIG ids); ``all``: every GPU; ``count``: GPUs
    asked for by number without ids (``--gpus 2``), which NVIDIA's runtime hands out from the
    first; ``sources``: the settings that say so (device_request, cdi, runtime_env, env,
    image_env, device_node, privileged, volume_mount); ``unknown``: device requests no driver on
    this daemon serves (they fail at create, but they are not GPU requests).
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


def _env_value(env: Any, name: str) -> Optional[str]:
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


def device_request_reaches_gpu(request: Mapping[str, Any]) -> bool:
    """True when dockerd would hand this DeviceRequest to the NVIDIA driver (or it names CDI GPUs)."""
    driver = str(request.get("Driver") or "")
    if driver == "nvidia":
        return True
    if driver == "cdi":
        return any(str(i).startswith(CDI_GPU_PREFIX) for i in request.get("DeviceIDs") or [])
    if driver:
        return False
    groups = [{str(c) for c in group or []} for group in request.get("Capabilities") or []]
    return any(group and group <= NVIDIA_CAPABILITIES for group in groups)


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
            gpu_ids = [i[len(CDI_GPU_PREFIX) :] for i in ids if i.startswith(CDI_GPU_PREFIX)]
            reach.add("cdi", [i for i in gpu_ids if i != "all"], all_gpus="all" in gpu_ids)
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
        if path.startswith(CDI_GPU_PREFIX):
            name = path[len(CDI_GPU_PREFIX) :]
            reach.add("cdi", [] if name == "all" else [name], all_gpus=name == "all")
        elif path.startswith("/dev/nvidia"):
            match = _NVIDIA_NODE.fullmatch(path)
            # /dev/nvidiactl and /dev/nvidia-uvm alone reach no GPU: the source is kept, no device
            reach.add("device_node", [match.group(1)] if match else [])
    for mount in host.get("Mounts") or []:
        target = str((mount or {}).get("Target") or "") if isinstance(mount, Mapping) else ""
        if target == NVIDIA_VOLUME_DIR or target.startswith(NVIDIA_VOLUME_DIR + "/"):
            reach.add("volume_mount", all_gpus=True)
    for bind in host.get("Binds") or []:
        parts = str(bind).split(":")
        if len(parts) > 1 and (parts[1] == NVIDIA_VOLUME_DIR or parts[1].startswith(NVIDIA_VOLUME_DIR + "/")):
            reach.add("volume_mount", all_gpus=True)
    runtime = str(host.get("Runtime") or "") or default_runtime
    if runtime == "nvidia" or hook:
        own = _env_value(config.get("Env"), NVIDIA_ENV)
        image = _env_value(image_env, NVIDIA_ENV)
        value, source = (own, "env") if own is not None else (image, "image_env")
        if str(host.get("Runtime") or "") == "nvidia" and not hook and source == "env":
            source = "runtime_env"
        if value is not None and value.strip().lower() not in NO_GPU_VALUES and not reach.reaches_gpu:
            ids = [p.strip() for p in value.split(",") if p.strip()]
            reach.add(source, [i for i in ids if i != "all"], all_gpus="all" in ids)
    if host.get("Privileged"):
        reach.add("privileged", all_gpus=True)
    return reach


def container_gpu_reach(attrs: Mapping[str, Any]) -> GpuReach:
    """``gpu_reach`` of a stored container (an inspect document)."""
    return gpu_reach(attrs.get("Config"), attrs.get("HostConfig"), default_runtime="runc")


def attach_slots(info: ContainerInfo, inventory: Any) -> ContainerInfo:
    """``info`` with ``slots``/``uuids`` resolved against the inventory (``gpu.Inventory``).

    A GPU in MIG mode named whole (by index or GPU UUID) is recorded as its parent slot id
    (``"2"``); ``all`` holds every GPU; a bare count the first N GPUs by index.
    """
    slots, uuids, unknown = [], [], []
    if info.gpu.all:
        targets = [str(g.index) for g in inventory.gpus]
    elif info.gpu.count:
        targets = [str(g.index) for g in inventory.gpus[: info.gpu.count]]
    else:
        targets = list(info.gpu.ids)
    for device_id in targets:
        slot = inventory.resolve(device_id)
        if slot is None:
            unknown.append(device_id)
            continue
        if slot.slot_id not in slots:
            slots.append(slot.slot_id)
            uuids.append(slot.uuid)
    return _replace(info, slots=tuple(slots), uuids=tuple(uuids), unknown_ids=tuple(unknown))


def _replace(info: ContainerInfo, **changes: Any) -> ContainerInfo:
    import dataclasses

    return dataclasses.replace(info, **changes)


def container_info(
    summary: Optional[Mapping[str, Any]] = None,
    inspect: Optional[Mapping[str, Any]] = None,
    inventory: Any = None,
    claim: Optional[GpuClaim] = None,
    cgroup_parent: Optional[str] = None,
) -> ContainerInfo:
    """A ``ContainerInfo`` from a list summary and/or an inspect document (either may be absent)."""
    summary = summary or {}
    inspect = inspect or {}
    config = inspect.get("Config") or {}
    state_doc = inspect.get("State") or {}
    labels = dict(summary.get("Labels") or config.get("Labels") or {})
    names = summary.get("Names") or []
    name = (names[0] if names else inspect.get("Name") or "").lstrip("/")
    cid = summary.get("Id") or inspect.get("Id") or ""
    state = str(summary.get("State") or state_doc.get("Status") or "").lower()
    owner, method = identity.container_owner({"Labels": labels, "Name": name})
    if claim is None:
        claim = gpu_claim(inspect) if inspect else gpu_claim({"Config": {"Labels": labels}})
    info = ContainerInfo(
        id=cid,
        name=name or cid[:12],
        state=state,
        owner=owner,
        owner_method=method,
        labels=labels,
        image=str(summary.get("Image") or config.get("Image") or ""),
        created=parse_time(summary.get("Created") or inspect.get("Created")),
        started_at=parse_time(state_doc.get("StartedAt")),
        finished_at=parse_time(state_doc.get("FinishedAt")),
        pid=int(state_doc.get("Pid") or 0) or None,
        cgroup_parent=cgroup_parent
        if cgroup_parent is not None
        else str((inspect.get("HostConfig") or {}).get("CgroupParent") or ""),
        gpu=claim,
        attrs=inspect or None,
    )
    return attach_slots(info, inventory) if inventory is not None else info


# --------------------------------------------------------------------------------------------
# Docker edge
# --------------------------------------------------------------------------------------------


class InspectCache:
    """Immutable inspect facts by container id (GPU claim, cgroup parent); thread-safe.

    Only what Docker cannot change after create is kept, so a cached entry is never stale; ids
    no longer listed are dropped on each read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: dict = {}

    def get(self, cid: str) -> Optional[tuple]:
        with self._lock:
            return self._facts.get(cid)

    def put(self, cid: str, facts: tuple) -> None:
        with self._lock:
            self._facts[cid] = facts

    def keep_only(self, ids: Iterable[str]) -> None:
        keep = set(ids)
        with self._lock:
            for cid in [c for c in self._facts if c not in keep]:
                del self._facts[cid]

    def __len__(self) -> int:
        return len(self._facts)


def client_from_env(timeout: float = 30.0) -> Any:
    """A docker SDK client for ``$DOCKER_HOST`` (or the default socket); ``DockerStateError`` if none."""
    if not HAS_DOCKER:
        raise DockerStateError("the docker Python SDK is not installed, so Docker cannot be asked")
    try:
        return docker.from_env(timeout=timeout)
    except DockerException as exc:
        raise DockerStateError(f"cannot reach the Docker engine ({exc})") from exc


def list_containers(
    client: Any,
    inventory: Any = None,
    cache: Optional[InspectCache] = None,
    detail: bool = False,
) -> list:
    """Every container (all states) as ``ContainerInfo``: one list call, then inspects of the
    containers the cache does not know (all of them with ``detail=True``, which also fills
    ``started_at``/``pid`` and ``attrs``). ``DockerStateError`` when Docker does not answer."""
    try:
        summaries = client.api.containers(all=True)
    except (DockerException, RequestException, OSError) as exc:
        raise DockerStateError(f"cannot list the containers ({exc})") from exc
    out = []
    for summary in summaries:
        cid = summary["Id"]
        facts = None if (detail or cache is None) else cache.get(cid)
        inspect = None
        if facts is None:
            try:
                inspect = client.api.inspect_container(cid)
            except NotFound:
                continue  # removed between the list and the inspect
            except (DockerException, RequestException, OSError) as exc:
                raise DockerStateError(f"cannot inspect container {summary.get('Names')} ({exc})") from exc
            facts = (gpu_claim(inspect), str((inspect.get("HostConfig") or {}).get("CgroupParent") or ""))
            if cache is not None:
                cache.put(cid, facts)
        out.append(
            container_info(summary, inspect if detail else None, inventory, claim=facts[0], cgroup_parent=facts[1])
        )
    if cache is not None:
        cache.keep_only(s["Id"] for s in summaries)
    return out


# --------------------------------------------------------------------------------------------
# Views over a list of containers
# --------------------------------------------------------------------------------------------


def holders_by_slot(containers: Iterable[ContainerInfo]) -> dict:
    """slot id → the containers naming it (more than one only when something bypassed the allocator)."""
    out: dict = {}
    for info in containers:
        for slot_id in info.slots:
            out.setdefault(slot_id, []).append(info)
    return out


def containers_of(containers: Iterable[ContainerInfo], user: str) -> list:
    return [c for c in containers if c.owner == user]
