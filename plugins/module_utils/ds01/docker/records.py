"""What Docker says about a container, as one record every reader shares (pure: no I/O).

Docker is the only record of who holds which GPU (docs/architecture.md, "stateless allocation"):
a container in *any* state (created, running, exited …) holds the devices named in its
``HostConfig.DeviceRequests``; removing it frees them. Fallbacks, in order, for containers whose
request carries no device ids: the ``ds01.gpu.uuids`` label (legacy ``ds01.gpu.uuid``), then an
``NVIDIA_VISIBLE_DEVICES`` environment value made of GPU-/MIG- UUIDs (the old multi-GPU path set
it with ``--runtime=nvidia``). A request for ``all`` GPUs (``--gpus all``) holds every GPU, and a
bare count (``--gpus 2``) the first GPUs by index, as NVIDIA's runtime hands them out: the
allocator never grants what it cannot prove free.

``ContainerInfo`` is the one record of a container for the allocator, detector, lifecycle,
exporter and the gateway's questions; the owner comes from ``identity.container_owner``.
``create_facts`` cuts an inspect document down to what cannot change after create (the part that
is cached across processes by container id).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from .. import identity
from ..record import field, record, replace
from .reach import NVIDIA_ENV, GpuReach, cdi_gpu, container_gpu_reach, device_request_reaches_gpu

SLOTS_LABEL = "ds01.gpu.slots"
UUIDS_LABEL = "ds01.gpu.uuids"
LEGACY_UUID_LABEL = "ds01.gpu.uuid"
GPUEQ_LABEL = "ds01.gpu.gpueq"
TYPE_LABEL = "ds01.container_type"
VISIBLE_DEVICES_ENV = NVIDIA_ENV
WORKSPACE_MOUNT = "/workspace"

# Where a container's GPU ids were found (``ContainerInfo.gpu.source``).
GPU_FROM_DEVICE_REQUESTS = "device_requests"
GPU_FROM_LABEL = "label"
GPU_FROM_ENV = "env"
GPU_FROM_INVENTORY = "inventory"  # read back from the detector's inventory file, not from Docker
GPU_NONE = ""

# The parts of HostConfig that cannot change after create and say how a container reaches devices.
_HOST_FACTS = ("DeviceRequests", "Devices", "Binds", "Mounts", "Runtime", "Privileged", "CgroupParent")


class DockerStateError(Exception):
    """Docker could not be asked (SDK missing, daemon down or slow); ``str()`` is a sentence."""


# --------------------------------------------------------------------------------------------
# Docker's timestamps: the one parser
# --------------------------------------------------------------------------------------------

_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|z|[+-]\d{2}:?\d{2})?$")


def parse_time(value: Any) -> Optional[dt.datetime]:
    """A Docker time → an aware datetime; None for Docker's "never", nothing, or what is not a time.

    Takes RFC 3339 text with nanoseconds (``2026-11-22T08:00:00.123456789Z``, cut to microseconds),
    an offset with or without a colon, ISO text ds01 wrote itself (a space for ``T``, no zone:
    UTC), an epoch number (0 or less: never) and a datetime (naive: UTC). The offset is kept.
    """
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc) if value > 0 else None
    if not isinstance(value, str):
        return None
    match = _TIME.match(value.strip())
    if not match or match.group(1).startswith("0001-01-01"):
        return None
    day, clock, frac, zone = match.groups()
    micro = (frac[1:] + "000000")[:6] if frac else "000000"
    if zone in (None, "Z", "z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        return dt.datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}")
    except ValueError:
        return None


def _iso(value: Optional[dt.datetime]) -> Optional[str]:
    return value.isoformat() if value else None


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@record(frozen=True)
class GpuClaim:
    """The GPUs a container holds for the allocator (immutable for a container id)."""

    ids: tuple = ()  # device ids as written: UUIDs, indices, MIG "<gpu>:<n>"
    source: str = GPU_NONE
    all: bool = False  # --gpus all (Count -1)
    count: int = 0  # --gpus N without ids


@record(frozen=True)
class ContainerInfo:
    """One container as the whole project sees it.

    ``slots``/``uuids`` are filled when an inventory was given (``attach_slots``); ``unknown_ids``
    lists device ids the inventory does not know (another host's UUID, a removed MIG instance).
    ``started_at``/``finished_at``/``pid``/``exit_code``/``restart_count`` need a full inspect
    (``detail``), else None. ``facts``: the create-time part of its inspect document
    (``create_facts``), when it was read or cached; ``attrs``: the whole inspect document, when it
    was read. The ``labelled_*`` properties are what the ds01 labels say, as written (the gateway
    stamps them); ``gpu``/``slots``/``uuids`` are what Docker's records hold.
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
    exit_code: Optional[int] = None
    restart_count: Optional[int] = None
    cgroup_parent: str = ""
    gpu: GpuClaim = GpuClaim()
    slots: tuple = ()
    uuids: tuple = ()
    unknown_ids: tuple = ()
    facts: Optional[Mapping[str, Any]] = field(default=None, compare=False, repr=False)
    attrs: Optional[Mapping[str, Any]] = field(default=None, compare=False, repr=False)
    detected: Optional[Mapping[str, Any]] = field(default=None, compare=False, repr=False)

    @classmethod
    def from_inventory(cls, record: Mapping[str, Any]) -> ContainerInfo:
        """The record of one entry of the detector's inventory file (``detector`` package docstring).

        The entry's Docker facts become the fields (``user`` → ``owner``, ``status`` → ``state``,
        ``gpu_slots`` → ``slots``, its GPU-/MIG- ``gpu_devices`` → ``uuids`` when it holds slots);
        the whole entry, with the detector's own findings (origin, GPU access sources, NVML
        processes, ``detected_at``) and Docker's times as written, is kept in ``detected``, so
        ``to_inventory`` gives the entry back as it was."""
        slots = _listed(record.get("gpu_slots"))
        devices = _listed(record.get("gpu_devices"))
        return cls(
            id=str(record.get("id") or ""),
            name=str(record.get("name") or ""),
            state=str(record.get("status") or "unknown"),
            owner=record.get("user") or None,
            owner_method=str(record.get("owner_source") or identity.OWNER_UNKNOWN),
            image=str(record.get("image") or ""),
            created=parse_time(record.get("created")),
            started_at=parse_time(record.get("started_at")),
            pid=_int_or_none(record.get("pid")),
            exit_code=_int_or_none(record.get("exit_code")),
            gpu=GpuClaim(
                ids=devices, source=GPU_FROM_INVENTORY if devices else GPU_NONE, all=bool(record.get("gpu_all"))
            ),
            slots=slots,
            uuids=tuple(d for d in devices if _is_uuid(d)) if slots else (),
            detected=dict(record),
        )

    def to_inventory(self) -> dict:
        """The detector's inventory entry of this container, key for key as ``from_inventory`` read it
        (the entry kept in ``detected``, its Docker facts written back from the fields)."""
        out = dict(self.detected or {})
        fields = {
            "id": self.id,
            "short_id": self.short_id,
            "name": self.name,
            "user": self.owner,
            "status": self.state,
            "image": self.image,
        }
        out.update({key: value for key, value in fields.items() if key in out})
        return out

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

    @property
    def labelled_owner(self) -> Optional[str]:
        """The ``ds01.user`` label as written, or None (``owner`` is the whole resolver chain)."""
        return self.labels.get(identity.OWNER_LABEL) or None

    @property
    def type_label(self) -> str:
        """The ``ds01.container_type`` label as written ("" without one)."""
        return str(self.labels.get(TYPE_LABEL) or "")

    @property
    def labelled_slots(self) -> tuple:
        """The slot ids of the ``ds01.gpu.slots`` label."""
        return split_ids([self.labels.get(SLOTS_LABEL) or ""])

    @property
    def labelled_uuids(self) -> tuple:
        """The UUIDs of the ``ds01.gpu.uuids`` label (legacy ``ds01.gpu.uuid``)."""
        return split_ids([self.labels.get(UUIDS_LABEL) or self.labels.get(LEGACY_UUID_LABEL) or ""])

    @property
    def labelled_gpueq(self) -> float:
        """The ``ds01.gpu.gpueq`` label as a number (0.0 without one, or when it is not a number)."""
        try:
            return float(self.labels.get(GPUEQ_LABEL) or 0.0)
        except ValueError:
            return 0.0

    @property
    def requests_gpu(self) -> bool:
        """One of its DeviceRequests asks for a GPU (``reach.device_request_reaches_gpu``)."""
        host = (self.attrs or self.facts or {}).get("HostConfig") or {}
        return any(
            isinstance(req, Mapping) and device_request_reaches_gpu(req) for req in host.get("DeviceRequests") or []
        )

    @property
    def mount_destinations(self) -> tuple:
        doc = self.attrs or self.facts or {}
        return tuple(str(m.get("Destination") or "") for m in doc.get("Mounts") or [] if isinstance(m, Mapping))

    @property
    def workspace_mounted(self) -> bool:
        """Something is mounted at ``/workspace`` (a notice can be left there)."""
        return WORKSPACE_MOUNT in self.mount_destinations

    @property
    def reach(self) -> GpuReach:
        """``reach.gpu_reach`` of this container (every way it reaches a GPU, not only what it holds)."""
        doc = self.attrs or self.facts or {}
        return container_gpu_reach(doc)

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


# --------------------------------------------------------------------------------------------
# Documents → records
# --------------------------------------------------------------------------------------------


def split_ids(values: Iterable[Any]) -> tuple:
    """Comma-separated ids (a label, an env value, DeviceIDs) as one tuple without repeats."""
    out: list = []
    for value in values or ():
        for raw in str(value).split(","):
            part = raw.strip()
            if part and part not in out:
                out.append(part)
    return tuple(out)


def _listed(value: Any) -> tuple:
    """An inventory list (or comma-separated text) as a tuple of its non-blank items, as written."""
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value if str(v).strip())
    return tuple(v.strip() for v in str(value or "").split(",") if v.strip())


def _is_uuid(value: str) -> bool:
    return value.upper().startswith(("GPU-", "MIG-"))


def create_facts(inspect: Mapping[str, Any]) -> dict:
    """What of an inspect document cannot change after create and says how the container reaches
    devices: its DeviceRequests, Devices, binds, mounts, runtime, privilege and cgroup parent, the
    ``NVIDIA_*`` part of its Env, and the mount destinations. JSON-safe (it is cached on disk);
    ``gpu_claim``, ``reach.container_gpu_reach`` and ``container_info`` read it like the whole document."""
    host = inspect.get("HostConfig") or {}
    config = inspect.get("Config") or {}
    env = [str(e) for e in config.get("Env") or [] if str(e).startswith("NVIDIA_")]
    return {
        "HostConfig": {k: host[k] for k in _HOST_FACTS if host.get(k) not in (None, "", [], False)},
        "Config": {"Env": env} if env else {},
        "Mounts": [{"Destination": str(m.get("Destination") or "")} for m in inspect.get("Mounts") or []],
    }


def gpu_claim(inspect: Mapping[str, Any], labels: Optional[Mapping[str, str]] = None) -> GpuClaim:
    """The GPUs a container holds: its GPU DeviceRequests (``reach.device_request_reaches_gpu``, the
    one predicate), else the ``ds01.gpu.uuids`` label, else an env of UUIDs. ``labels`` default to
    ``Config.Labels`` of the document."""
    host = inspect.get("HostConfig") or {}
    config = inspect.get("Config") or {}
    if labels is None:
        labels = config.get("Labels") or {}
    ids: list = []
    want_all = False
    count = 0
    for req in host.get("DeviceRequests") or []:
        if not isinstance(req, Mapping) or not device_request_reaches_gpu(req):
            continue
        found = split_ids(req.get("DeviceIDs") or ())
        if str(req.get("Driver") or "") == "cdi":
            found = tuple(d for d in (cdi_gpu(i) for i in found) if d is not None)
            want_all = want_all or "all" in found
            found = tuple(i for i in found if i != "all")
            ids.extend(i for i in found if i not in ids)
            continue
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
    label = split_ids([labels.get(UUIDS_LABEL) or labels.get(LEGACY_UUID_LABEL) or ""])
    if label:
        return GpuClaim(ids=label, source=GPU_FROM_LABEL)
    for item in config.get("Env") or []:
        key, _sep, value = str(item).partition("=")
        if key == VISIBLE_DEVICES_ENV:
            env_ids = split_ids([value])
            if env_ids and all(_is_uuid(i) for i in env_ids):
                return GpuClaim(ids=env_ids, source=GPU_FROM_ENV)
    return GpuClaim()


def _resolve(claim: GpuClaim, inventory: Any) -> dict:
    slots, uuids, unknown = [], [], []
    if claim.all:
        targets = [str(g.index) for g in inventory.gpus]
    elif claim.count:
        targets = [str(g.index) for g in inventory.gpus[: claim.count]]
    else:
        targets = list(claim.ids)
    for device_id in targets:
        slot = inventory.resolve(device_id)
        if slot is None:
            unknown.append(device_id)
            continue
        if slot.slot_id not in slots:
            slots.append(slot.slot_id)
            uuids.append(slot.uuid)
    return {"slots": tuple(slots), "uuids": tuple(uuids), "unknown_ids": tuple(unknown)}


def attach_slots(info: ContainerInfo, inventory: Any) -> ContainerInfo:
    """``info`` with ``slots``/``uuids`` resolved against the inventory (``gpu.Inventory``).

    A GPU in MIG mode named whole (by index or GPU UUID) is recorded as its parent slot id
    (``"2"``); ``all`` holds every GPU; a bare count the first N GPUs by index.
    """
    return replace(info, **_resolve(info.gpu, inventory))


def _int_or_none(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def container_info(
    summary: Optional[Mapping[str, Any]] = None,
    inspect: Optional[Mapping[str, Any]] = None,
    inventory: Any = None,
    claim: Optional[GpuClaim] = None,
    cgroup_parent: Optional[str] = None,
    facts: Optional[Mapping[str, Any]] = None,
) -> ContainerInfo:
    """A ``ContainerInfo`` from a list summary, an inspect document and/or cached create facts (any
    may be absent; the summary's labels and name win, the inspect's state (the later reading),
    times, pid, exit code and restart count)."""
    summary = summary or {}
    inspect = inspect or {}
    config = inspect.get("Config") or {}
    state_doc = inspect.get("State") or {}
    labels = dict(summary.get("Labels") or config.get("Labels") or {})
    names = summary.get("Names") or []
    name = (names[0] if names else inspect.get("Name") or "").lstrip("/")
    cid = summary.get("Id") or inspect.get("Id") or ""
    state = str(state_doc.get("Status") or summary.get("State") or "").lower()
    owner, method = identity.container_owner({"Labels": labels, "Name": name})
    if facts is None and inspect:
        facts = create_facts(inspect)
    if claim is None:
        claim = gpu_claim(facts or {}, labels)
    if cgroup_parent is None:
        cgroup_parent = str(((facts or {}).get("HostConfig") or {}).get("CgroupParent") or "")
    return ContainerInfo(
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
        exit_code=_int_or_none(state_doc.get("ExitCode")),
        restart_count=_int_or_none(inspect.get("RestartCount")),
        cgroup_parent=cgroup_parent,
        gpu=claim,
        facts=facts,
        attrs=inspect or None,
        **(_resolve(claim, inventory) if inventory is not None else {}),
    )


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
