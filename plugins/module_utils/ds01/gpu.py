"""The GPU inventory: every GPU and MIG instance on the host, behind one interface, two backends.

- ``NvmlBackend`` asks the driver through pynvml (the ``nvidia-ml-py`` package; no nvidia-smi text
  parsing). Every NVML failure becomes a ``GpuInventoryError`` with a sentence.
- ``FakeBackend`` reads a topology YAML (format in docs/architecture.md), used by tests, the demo
  and CI machines without a GPU. It is chosen when ``$DS01_GPU_TOPOLOGY`` names a file or the
  config says ``gpu_allocation: {backend: fake, topology: PATH}``.

Slot ids (the allocator's unit): ``"<gpu index>"`` for a whole GPU, ``"<gpu index>.<n>"`` for the
n-th MIG device of a GPU (n = NVML's MIG device index, the ``Device n`` of ``nvidia-smi -L``; in a
topology file the position in ``instances``). A GPU in MIG mode is never a slot itself, and one with
no MIG instances offers nothing at all (reference §2.2, §13 #3).

The one weight function is ``gpueq(slot)``: a whole GPU weighs 1.0, a MIG instance its compute slices
/ 7 (``1g.10gb`` → 1/7, ``3g.40gb`` → 3/7, ``1c.3g.20gb`` → 1/7). A known MIG slot never weighs 0.0
(reference §13 #13): a profile whose slices cannot be read is an inventory error, not a free slot.

Fake topology extras for detector/lifecycle tests, on GPUs and on MIG instances::

    processes: [{pid: 1234, used_memory_mib: 100}]   # compute processes NVML would list
    utilization_gpu: 37                               # percent; absent = unknown (None)

Utilisation of a MIG instance is unknown on real hardware (NVML answers NotSupported), so
``utilization()`` returns None there; the fake backend returns what the file says.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from . import logs, yamlcache
from .record import record

# PyYAML is a runtime dependency, imported when a topology file is first parsed (one kept in ``yamlcache`` is not).
HAS_YAML = importlib.util.find_spec("yaml") is not None

_UNLOADED: Any = object()
# The NVML binding, imported when an NVML backend is first made (``nvml_module``): the fake backend,
# and a one-shot ``ds01 gpu plan`` on it, never pay its import. None: not installed.
pynvml: Any = _UNLOADED


def nvml_module() -> Any:
    """The ``pynvml`` module, or None when nvidia-ml-py is not installed."""
    global pynvml
    if pynvml is _UNLOADED:
        try:
            import pynvml as module
        except ImportError:  # the fake backend works without it
            module = None
        pynvml = module
    return pynvml


log = logs.get(__name__)

TOPOLOGY_ENV = "DS01_GPU_TOPOLOGY"
MIG_SLICES_PER_GPU = 7  # A100 / H100: a whole GPU is 7 compute slices
KIND_GPU = "gpu"
KIND_MIG = "mig"

# 1g.10gb, 3g.40gb, 1g.10gb+me, 7g.80gb, 1c.3g.20gb (a compute instance smaller than its GPU instance)
PROFILE_RE = re.compile(r"^(?:(?P<c>[1-7])c\.)?(?P<g>[1-7])g\.(?P<mem>\d+)gb(?:\+[a-z]+)?$")
_NAME_PROFILE_RE = re.compile(r"MIG\s+((?:[1-7]c\.)?[1-7]g\.\d+gb(?:\+[a-z]+)?)")


class GpuInventoryError(Exception):
    """The inventory could not be read; ``str()`` is a sentence for a person."""


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@record(frozen=True)
class MigInstance:
    index: int  # MIG device index n in slot id "<gpu>.<n>"
    uuid: str  # MIG-…
    profile: str  # 1g.10gb
    compute_slices: int
    gpu_instance_id: Optional[int] = None
    compute_instance_id: Optional[int] = None
    memory_mib: Optional[int] = None


@record(frozen=True)
class Gpu:
    index: int
    uuid: str  # GPU-…
    name: str
    memory_mib: Optional[int]
    mig_enabled: bool = False
    instances: tuple = ()  # MigInstance, in MIG device index order

    @property
    def allocatable(self) -> bool:
        """A whole GPU, or a MIG GPU with at least one instance (MIG mode with none: nothing)."""
        return not self.mig_enabled or bool(self.instances)


@record(frozen=True)
class Slot:
    """One allocatable unit (whole GPU or MIG instance), or with ``kind == "gpu"`` and
    ``mig_parent`` the parent of MIG instances (never allocatable, but a container may name it)."""

    slot_id: str
    gpu_index: int
    uuid: str
    kind: str  # "gpu" | "mig"
    name: str
    profile: Optional[str] = None
    compute_slices: Optional[int] = None
    memory_mib: Optional[int] = None
    gpu_uuid: str = ""  # the physical GPU's UUID (the slot's own for a whole GPU)
    mig_index: Optional[int] = None
    gpu_instance_id: Optional[int] = None
    compute_instance_id: Optional[int] = None
    mig_parent: bool = False  # a GPU in MIG mode: its instances are the slots

    @property
    def gpueq(self) -> float:
        return gpueq(self)

    def as_dict(self) -> dict:
        return {
            "slot": self.slot_id,
            "gpu": self.gpu_index,
            "uuid": self.uuid,
            "gpu_uuid": self.gpu_uuid,
            "kind": self.kind,
            "name": self.name,
            "profile": self.profile,
            "compute_slices": self.compute_slices,
            "memory_mib": self.memory_mib,
            "gpu_instance_id": self.gpu_instance_id,
            "compute_instance_id": self.compute_instance_id,
            "gpueq": round(self.gpueq, 6),
        }


@record(frozen=True)
class GpuProcess:
    """A compute process on a GPU or MIG instance (``uuid`` is the slot's: MIG-… on a MIG instance)."""

    pid: int
    uuid: str
    gpu_uuid: str
    gpu_index: int
    slot: str
    used_memory_mib: Optional[int] = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# --------------------------------------------------------------------------------------------
# The weight function
# --------------------------------------------------------------------------------------------


def profile_compute_slices(profile: str) -> int:
    """Compute slices of a MIG profile name (``3g.20gb`` → 3, ``1c.3g.20gb`` → 1); ValueError if unreadable."""
    match = PROFILE_RE.match(str(profile).strip())
    if not match:
        raise ValueError(f"'{profile}' is not a MIG profile name (expected e.g. 1g.10gb or 3g.40gb)")
    return int(match.group("c") or match.group("g"))


def gpueq(slot: Any) -> float:
    """GPU-equivalents of a slot: whole GPU 1.0; MIG instance compute slices / 7.

    ``slot`` is a ``Slot`` (or anything with ``kind``, ``compute_slices``, ``profile``). A MIG slot
    whose slices are unknown raises ValueError: it is never weighed 0.0.
    """
    if getattr(slot, "kind", KIND_GPU) != KIND_MIG:
        return 1.0
    slices = getattr(slot, "compute_slices", None)
    if not slices:
        slices = profile_compute_slices(getattr(slot, "profile", None) or "")
    return float(slices) / MIG_SLICES_PER_GPU


# --------------------------------------------------------------------------------------------
# The inventory
# --------------------------------------------------------------------------------------------


class Inventory:
    """A snapshot of the GPUs, with live questions (processes, utilisation) passed to its backend."""

    def __init__(self, gpus: Iterable[Gpu], backend: Any = None, source: str = "") -> None:
        self.gpus: tuple = tuple(sorted(gpus, key=lambda g: g.index))
        self.backend = backend
        self.source = source
        self._slots: list = []
        self._parents: dict = {}
        for gpu in self.gpus:
            if gpu.mig_enabled:
                self._parents[str(gpu.index)] = _gpu_slot(gpu, mig_parent=True)
                for inst in gpu.instances:
                    self._slots.append(_mig_slot(gpu, inst))
            else:
                self._slots.append(_gpu_slot(gpu))
        self._by_id = {s.slot_id: s for s in self._slots}
        self._by_id.update(self._parents)
        self._by_uuid = {s.uuid.lower(): s for s in self._by_id.values()}

    # -- slots ------------------------------------------------------------------------------
    def slots(self) -> list:
        """Every allocatable slot (whole GPUs not in MIG mode, and MIG instances), in slot order."""
        return list(self._slots)

    def slot(self, slot_id: str) -> Slot:
        """The slot (or MIG-parent GPU) with this id; KeyError if none."""
        return self._by_id[str(slot_id)]

    def by_uuid(self, uuid: str) -> Optional[Slot]:
        return self._by_uuid.get(str(uuid).strip().lower())

    def resolve(self, device_id: str) -> Optional[Slot]:
        """A Docker device id (GPU-/MIG- UUID, GPU index ``"1"``, slot id ``"2.1"``, or
        ``"2:1"`` as NVIDIA's runtime writes a MIG device) → its slot; None when unknown."""
        text = str(device_id).strip()
        if not text:
            return None
        found = self.by_uuid(text)
        if found is not None:
            return found
        return self._by_id.get(text.replace(":", ".", 1))

    def children(self, gpu_index: int) -> list:
        """The MIG slots of a GPU (empty for a whole GPU)."""
        return [s for s in self._slots if s.kind == KIND_MIG and s.gpu_index == gpu_index]

    def mig_parents(self) -> list:
        """The GPUs in MIG mode, as slots with ``mig_parent`` (a container may name one; never granted)."""
        return list(self._parents.values())

    def unusable_gpus(self) -> list:
        """GPUs in MIG mode without instances: present, but nothing on them can be allocated."""
        return [g for g in self.gpus if not g.allocatable]

    def capacity_gpueq(self) -> float:
        return sum(s.gpueq for s in self._slots)

    # -- live questions ---------------------------------------------------------------------
    def utilization(self, uuid: str) -> Optional[float]:
        """GPU utilisation in percent of a GPU or MIG instance; None when unknown (MIG on NVML)."""
        slot = self.by_uuid(uuid)
        if slot is None:
            raise LookupError(f"no GPU or MIG instance with UUID {uuid} on this host")
        if self.backend is None:
            return None
        return self.backend.utilization(slot)

    def compute_processes(self) -> list:
        """``GpuProcess`` for every compute process on every GPU and MIG instance."""
        if self.backend is None:
            return []
        return list(self.backend.compute_processes(self))

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "name": g.name,
                    "memory_mib": g.memory_mib,
                    "mig_enabled": g.mig_enabled,
                    "allocatable": g.allocatable,
                    "instances": [self.slot(f"{g.index}.{i.index}").as_dict() for i in g.instances],
                }
                for g in self.gpus
            ],
            "slots": [s.as_dict() for s in self._slots],
            "capacity_gpueq": round(self.capacity_gpueq(), 6),
        }


def _gpu_slot(gpu: Gpu, mig_parent: bool = False) -> Slot:
    return Slot(
        slot_id=str(gpu.index),
        gpu_index=gpu.index,
        uuid=gpu.uuid,
        kind=KIND_GPU,
        name=gpu.name,
        memory_mib=gpu.memory_mib,
        gpu_uuid=gpu.uuid,
        mig_parent=mig_parent,
    )


def _mig_slot(gpu: Gpu, inst: MigInstance) -> Slot:
    return Slot(
        slot_id=f"{gpu.index}.{inst.index}",
        gpu_index=gpu.index,
        uuid=inst.uuid,
        kind=KIND_MIG,
        name=f"{gpu.name} MIG {inst.profile}",
        profile=inst.profile,
        compute_slices=inst.compute_slices,
        memory_mib=inst.memory_mib,
        gpu_uuid=gpu.uuid,
        mig_index=inst.index,
        gpu_instance_id=inst.gpu_instance_id,
        compute_instance_id=inst.compute_instance_id,
    )


# --------------------------------------------------------------------------------------------
# Fake backend (topology YAML)
# --------------------------------------------------------------------------------------------


class FakeBackend:
    """GPUs from a topology file; processes and utilisation from its optional keys.

    The file is read again on every question, so a test may rewrite it between calls.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def _load(self) -> list:
        if not HAS_YAML:
            raise GpuInventoryError("PyYAML is not installed, so the fake GPU topology cannot be read")
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise GpuInventoryError(f"cannot read the GPU topology file {self.path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise GpuInventoryError(f"the GPU topology file {self.path} is not UTF-8 text") from exc
        kept = yamlcache.lookup(self.path, text)
        if kept is not None:
            doc = kept[0]
        else:
            import yaml

            try:  # libyaml's parser where PyYAML has it: the same safe constructor, several times faster
                doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe loaders
            except yaml.YAMLError as exc:
                raise GpuInventoryError(f"the GPU topology file {self.path} is not valid YAML: {exc}") from exc
            yamlcache.remember(self.path, text, doc, [])
        if not isinstance(doc, dict) or not isinstance(doc.get("gpus"), list):
            raise GpuInventoryError(f"the GPU topology file {self.path} must be a mapping with a list 'gpus'")
        return doc["gpus"]

    def read(self) -> list:
        entries = self._load()
        gpus, seen_index, seen_uuid = [], set(), set()
        for pos, entry in enumerate(entries):
            where = f"{self.path}: gpus[{pos}]"
            if not isinstance(entry, dict):
                raise GpuInventoryError(f"{where} must be a mapping")
            index = _int_field(entry, "index", where, required=True)
            uuid = _uuid_field(entry, "GPU-", where)
            if index in seen_index:
                raise GpuInventoryError(f"{where}: GPU index {index} appears twice")
            seen_index.add(index)
            mig = entry.get("mig", False)
            if not isinstance(mig, bool):
                raise GpuInventoryError(f"{where}.mig must be true or false")
            raw_instances = entry.get("instances") or []
            if raw_instances and not mig:
                raise GpuInventoryError(f"{where} lists MIG instances but does not say 'mig: true'")
            if not isinstance(raw_instances, list):
                raise GpuInventoryError(f"{where}.instances must be a list")
            instances = []
            for n, inst in enumerate(raw_instances):
                iwhere = f"{where}.instances[{n}]"
                if not isinstance(inst, dict):
                    raise GpuInventoryError(f"{iwhere} must be a mapping")
                profile = str(inst.get("profile") or "")
                try:
                    slices = profile_compute_slices(profile)
                except ValueError as exc:
                    raise GpuInventoryError(f"{iwhere}.profile: {exc}") from None
                instances.append(
                    MigInstance(
                        index=n,
                        uuid=_uuid_field(inst, "MIG-", iwhere),
                        profile=profile,
                        compute_slices=slices,
                        gpu_instance_id=_int_field(inst, "gpu_instance_id", iwhere),
                        compute_instance_id=_int_field(inst, "compute_instance_id", iwhere),
                        memory_mib=_int_field(inst, "memory_mib", iwhere),
                    )
                )
            for u in [uuid] + [i.uuid for i in instances]:
                if u.lower() in seen_uuid:
                    raise GpuInventoryError(f"{where}: UUID {u} appears twice in the topology")
                seen_uuid.add(u.lower())
            gpus.append(
                Gpu(
                    index=index,
                    uuid=uuid,
                    name=str(entry.get("name") or "Fake GPU"),
                    memory_mib=_int_field(entry, "memory_mib", where),
                    mig_enabled=mig,
                    instances=tuple(instances),
                )
            )
        return gpus

    def _entry_of(self, slot: Slot) -> Mapping[str, Any]:
        for entry in self._load():
            if not isinstance(entry, dict) or entry.get("index") != slot.gpu_index:
                continue
            if slot.kind == KIND_MIG:
                instances = entry.get("instances") or []
                return instances[slot.mig_index] if slot.mig_index < len(instances) else {}
            return entry
        return {}

    def utilization(self, slot: Slot) -> Optional[float]:
        value = self._entry_of(slot).get("utilization_gpu")
        return None if value is None else float(value)

    def compute_processes(self, inventory: Inventory) -> list:
        out = []
        for slot in list(inventory.slots()) + inventory.mig_parents():
            for proc in self._entry_of(slot).get("processes") or []:
                out.append(
                    GpuProcess(
                        pid=int(proc["pid"]),
                        uuid=slot.uuid,
                        gpu_uuid=slot.gpu_uuid,
                        gpu_index=slot.gpu_index,
                        slot=slot.slot_id,
                        used_memory_mib=proc.get("used_memory_mib"),
                    )
                )
        return sorted(out, key=lambda p: (p.gpu_index, p.slot, p.pid))


def _int_field(entry: Mapping[str, Any], key: str, where: str, required: bool = False) -> Optional[int]:
    value = entry.get(key)
    if value is None:
        if required:
            raise GpuInventoryError(f"{where} has no '{key}'")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GpuInventoryError(f"{where}.{key} must be a whole number >= 0, not {value!r}")
    return value


def _uuid_field(entry: Mapping[str, Any], prefix: str, where: str) -> str:
    value = entry.get("uuid")
    if not isinstance(value, str) or not value.startswith(prefix) or len(value) <= len(prefix):
        raise GpuInventoryError(f"{where}.uuid must be a string starting with '{prefix}', not {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# NVML backend
# --------------------------------------------------------------------------------------------


def _nvml_sentence(exc: Exception, what: str) -> GpuInventoryError:
    return GpuInventoryError(
        f"NVML could not {what} ({exc}); the GPU inventory is unavailable, so no GPU can be allocated "
        "until the NVIDIA driver answers again (check `nvidia-smi` as root)."
    )


class NvmlBackend:
    """The GPUs the NVIDIA driver reports, through pynvml. ``nvml`` may be a stand-in module (tests)."""

    def __init__(self, nvml: Any = None) -> None:
        self.nvml = nvml if nvml is not None else nvml_module()
        if self.nvml is None:
            raise GpuInventoryError(
                "the NVML Python binding (package nvidia-ml-py) is not installed, so the GPUs cannot be listed"
            )

    def _error_types(self) -> tuple:
        return (self.nvml.NVMLError,)

    def _session(self) -> Any:
        nvml = self.nvml
        try:
            nvml.nvmlInit()
        except self._error_types() as exc:
            raise _nvml_sentence(exc, "start") from exc
        return nvml

    def _close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self._error_types() as exc:
            log.info("nvmlShutdown failed: %s", exc)

    def read(self) -> list:
        nvml = self._session()
        try:
            return [self._read_gpu(i) for i in range(nvml.nvmlDeviceGetCount())]
        except self._error_types() as exc:
            raise _nvml_sentence(exc, "list the GPUs") from exc
        finally:
            self._close()

    def _is_not_supported(self, exc: Exception) -> bool:
        cls = getattr(self.nvml, "NVMLError_NotSupported", None)
        return cls is not None and isinstance(exc, cls)  # pylint: disable=isinstance-second-argument-not-valid-type

    def _is_not_found(self, exc: Exception) -> bool:
        cls = getattr(self.nvml, "NVMLError_NotFound", None)
        return cls is not None and isinstance(exc, cls)  # pylint: disable=isinstance-second-argument-not-valid-type

    def _read_gpu(self, i: int) -> Gpu:
        nvml = self.nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        name = _text(nvml.nvmlDeviceGetName(handle))
        memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // (1024 * 1024)
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
            mig = current == nvml.NVML_DEVICE_MIG_ENABLE
        except nvml.NVMLError as exc:
            if not self._is_not_supported(exc):
                raise
            mig = False  # a GPU without MIG support
        instances = []
        if mig:
            for n in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    mig_handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, n)
                except nvml.NVMLError as exc:
                    if self._is_not_found(exc):
                        continue  # no MIG device at this index
                    raise
                instances.append(self._read_mig(n, mig_handle))
        return Gpu(index=i, uuid=uuid, name=name, memory_mib=memory, mig_enabled=mig, instances=tuple(instances))

    def _read_mig(self, n: int, handle: Any) -> MigInstance:
        nvml = self.nvml
        attrs = nvml.nvmlDeviceGetAttributes(handle)
        name = _text(nvml.nvmlDeviceGetName(handle))
        match = _NAME_PROFILE_RE.search(name)
        memory_mib = int(getattr(attrs, "memorySizeMB", 0) or 0) or None
        g_slices = int(getattr(attrs, "gpuInstanceSliceCount", 0) or 0)
        c_slices = int(getattr(attrs, "computeInstanceSliceCount", 0) or 0)
        if match:
            profile = match.group(1)
        elif g_slices and memory_mib:  # the name did not carry it: rebuild "<g>g.<GB>gb"
            gb = round(memory_mib / 1024)
            profile = f"{g_slices}g.{gb}gb" if c_slices in (0, g_slices) else f"{c_slices}c.{g_slices}g.{gb}gb"
        else:
            raise GpuInventoryError(f"MIG device {n} ('{name}') reports no profile and no slice counts")
        slices = c_slices or profile_compute_slices(profile)
        return MigInstance(
            index=n,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            profile=profile,
            compute_slices=slices,
            gpu_instance_id=int(nvml.nvmlDeviceGetGpuInstanceId(handle)),
            compute_instance_id=int(nvml.nvmlDeviceGetComputeInstanceId(handle)),
            memory_mib=memory_mib,
        )

    def _handle_of(self, slot: Slot) -> Any:
        nvml = self.nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(slot.gpu_index)
        if slot.kind == KIND_MIG:
            return nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot.mig_index)
        return handle

    def utilization(self, slot: Slot) -> Optional[float]:
        """Percent busy of a whole GPU; None for a MIG instance (NVML does not report it)."""
        if slot.kind == KIND_MIG:
            return None
        nvml = self._session()
        try:
            return float(nvml.nvmlDeviceGetUtilizationRates(self._handle_of(slot)).gpu)
        except nvml.NVMLError as exc:
            if self._is_not_supported(exc):
                return None
            raise _nvml_sentence(exc, f"read the utilisation of GPU {slot.slot_id}") from exc
        finally:
            self._close()

    def compute_processes(self, inventory: Inventory) -> list:
        nvml = self._session()
        reader = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses", None) or nvml.nvmlDeviceGetComputeProcesses
        out = []
        try:
            targets = list(inventory.slots())
            for slot in targets:  # a MIG GPU's processes are listed per MIG instance
                try:
                    procs = reader(self._handle_of(slot))
                except nvml.NVMLError as exc:
                    if self._is_not_supported(exc):
                        continue
                    raise
                for p in procs:
                    used = getattr(p, "usedGpuMemory", None)
                    out.append(
                        GpuProcess(
                            pid=int(p.pid),
                            uuid=slot.uuid,
                            gpu_uuid=slot.gpu_uuid,
                            gpu_index=slot.gpu_index,
                            slot=slot.slot_id,
                            used_memory_mib=int(used) // (1024 * 1024) if used else None,
                        )
                    )
        except nvml.NVMLError as exc:
            raise _nvml_sentence(exc, "list the GPU compute processes") from exc
        finally:
            self._close()
        return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def topology_path(config: Any = None) -> Optional[str]:
    """The fake topology file in use, or None for NVML: ``$DS01_GPU_TOPOLOGY``, else the config's."""
    env = os.environ.get(TOPOLOGY_ENV)
    if env:
        return env
    if config is not None:
        section = config.section("gpu_allocation")
        if section.get("backend") == "fake":
            return section.get("topology")
    return None


def backend_from_config(config: Any = None) -> Any:
    path = topology_path(config)
    if path:
        return FakeBackend(path)
    return NvmlBackend()


def inventory_from_config(config: Any = None) -> Inventory:
    """Read the inventory now (NVML, or the fake topology); ``GpuInventoryError`` when it cannot."""
    backend = backend_from_config(config)
    source = f"fake:{backend.path}" if isinstance(backend, FakeBackend) else "nvml"
    return Inventory(backend.read(), backend=backend, source=source)


load_inventory = inventory_from_config


def compute_processes(config: Any = None) -> list:
    """Every compute process on every GPU and MIG instance (``GpuProcess``), from NVML or the fake file."""
    return inventory_from_config(config).compute_processes()


def read_inventory(path: Optional[str] = None, nvml: Any = None) -> Inventory:
    """An inventory from a topology file (``path``) or from NVML (``nvml`` may be a stand-in)."""
    backend = FakeBackend(path) if path else NvmlBackend(nvml)
    return Inventory(backend.read(), backend=backend, source=f"fake:{path}" if path else "nvml")


__all__ = [
    "MIG_SLICES_PER_GPU",
    "FakeBackend",
    "Gpu",
    "GpuInventoryError",
    "GpuProcess",
    "Inventory",
    "MigInstance",
    "NvmlBackend",
    "Slot",
    "compute_processes",
    "gpueq",
    "inventory_from_config",
    "profile_compute_slices",
    "read_inventory",
    "topology_path",
]
