"""Workload detection: every GPU workload on the host, whoever started it and however.

Three layers, each testable on its own:

- **Classification** (pure, over the ``docker inspect`` JSON of one container):
  ``classify(attrs)`` → origin, ``gpu_access(attrs)`` → which GPU devices it can reach and why,
  ``container_record(attrs, owner, …)`` → one inventory entry. The owner comes from the one owner
  resolver in ``identity.py``; this package never guesses owners itself.
- **Host process attribution** (pure over ``/proc`` text, with a small reader at the edge):
  ``parse_cgroup(text)`` → where a process lives (a container, a login session or user slice, a
  system service); ``attribute(pid, proc)`` adds the real uid from ``/proc/<pid>/status``, the
  command and the start time (so a reused pid is a new process). GPU processes come from NVML's
  compute-process lists (per GPU and per MIG instance) through ``gpu.py``.
- **State** (``Detector``): the inventory in memory, transitions → event-log entries, the
  two-sweep rule for host processes, unmanaged-GPU flags, the atomic inventory file. The watcher
  (``watch``) feeds it from Docker's event stream plus a periodic sweep; ``run_once`` does one
  full sync and one sweep (tests, cron, first start).

Origins (first match wins): ``infrastructure`` (``ds01.protected=true`` / ``ds01.monitoring=true``,
the config's ``monitoring.infrastructure_label`` or a ``monitoring.infrastructure_containers``
name), ``ds01-managed`` (``ds01.managed=true``: created through the gateway; its own
``ds01.container_type`` label is kept as ``container_type``), ``devcontainer`` (any
``devcontainer.*`` label or a ``vsc-`` name), ``compose`` (``com.docker.compose.project``),
``raw-docker``. Host processes have the origin ``host-process``.

GPU access (any of): a DeviceRequest for the nvidia driver or the ``gpu`` capability (its
DeviceIDs, or "all" for ``--gpus all``/a count), a CDI request for ``nvidia.com/gpu=…``,
``Runtime: nvidia`` with ``NVIDIA_VISIBLE_DEVICES`` set in the container's environment (that is
how the nvidia runtime picks devices; without it, or with ``void``/``none``, the runtime exposes
nothing — so a daemon whose *default* runtime is nvidia does not flag every container),
``/dev/nvidia*`` device mappings, ``Privileged`` (every host device), and — found by the sweep —
NVML compute processes running inside the container.

Unmanaged GPU use: a container (not infrastructure) that can reach GPU devices but carries no
``ds01.gpu.slots`` allocation label; a host GPU process whose login is neither in
``bare_metal_access.exempt_users`` nor holds an unexpired grant file
``<bare_metal_access.state_dir>/<login>.json``.

Inventory file ``<paths.state_dir>/workloads.json`` (0644, replaced atomically; the watcher is its
only writer and holds ``workloads.lock`` beside it for its lifetime), schema "1"::

    {"schema_version": "1", "updated_at": ISO, "updated_at_epoch": float,
     "last_sync": ISO|null, "last_sweep": ISO|null, "writer": "watch"|"once", "pid": int,
     "docker": {"ok": bool, "error": str|null}, "gpu": {"ok": bool, "error": str|null},
     "containers": {<full id>: <container record>},
     "host_processes": {"<pid>": <host process record>},
     "pending_processes": {"<pid>": {"pid", "start_time", "first_seen"}}}

A container record: ``{id, short_id, name, origin, container_type, user, owner_source, status,
running, image, created, started_at, has_gpu, gpu_all, gpu_devices[], gpu_sources[], gpu_slots[],
gpu_processes[{pid, gpu_uuid, used_memory_mib}], managed, unmanaged_gpu, detected_at}``.
A host process record: ``{pid, start_time, user, uid, comm, cmdline, scope, cgroup, gpus[{gpu_uuid,
gpu_index, slot, used_memory_mib}], used_memory_mib, exempt, granted, unmanaged_gpu, detected_at}``.

The package, one module per concern: ``classification`` (pure, a container's origin, GPU access and
record), ``attribution`` (pure, whose a host process is), ``host`` (reading ``/proc``, grant files
and NVML's processes), ``state`` (the ``Detector``), ``source`` (reading Docker), ``watcher`` (the
event-stream loop) and ``service`` (assembly from the config, the lock, ``run_once``).
"""

from __future__ import annotations

from .attribution import (
    SYSTEM_COMMS,
    Attribution,
    CgroupPlace,
    GpuProcess,
    decide_attribution,
    parse_cgroup,
    parse_start_time,
    parse_status_uid,
)
from .classification import (
    ORIGIN_COMPOSE,
    ORIGIN_DEVCONTAINER,
    ORIGIN_HOST,
    ORIGIN_INFRA,
    ORIGIN_MANAGED,
    ORIGIN_RAW,
    ORIGINS,
    RUNNING_STATES,
    TRUE_VALUES,
    GpuAccess,
    OwnerResolver,
    allocated_slots,
    classify,
    container_name,
    container_record,
    gpu_access,
    is_infrastructure,
    iso,
    parse_iso,
    utcnow,
)
from .host import (
    ProcReader,
    gpu_process_reader,
    grant_active,
)
from .service import (
    LOCK_FILE,
    OnceResult,
    allocator_hook,
    build_detector,
    event_emitter,
    inventory_lock,
    inventory_path,
    lock_path,
    owner_resolver,
    run_once,
)
from .source import (
    DOCKER_ERRORS,
    HAS_DOCKER,
    DockerException,
    DockerSource,
    DockerUnavailable,
    NotFound,
    RequestException,
)
from .state import (
    INVENTORY_FILE,
    SCHEMA_VERSION,
    Detector,
    Emit,
    read_inventory,
)
from .watcher import (
    WATCHED_ACTIONS,
    Watcher,
    call_hook,
)

__all__ = [
    "DOCKER_ERRORS",
    "HAS_DOCKER",
    "INVENTORY_FILE",
    "LOCK_FILE",
    "ORIGINS",
    "ORIGIN_COMPOSE",
    "ORIGIN_DEVCONTAINER",
    "ORIGIN_HOST",
    "ORIGIN_INFRA",
    "ORIGIN_MANAGED",
    "ORIGIN_RAW",
    "RUNNING_STATES",
    "SCHEMA_VERSION",
    "SYSTEM_COMMS",
    "TRUE_VALUES",
    "WATCHED_ACTIONS",
    "Attribution",
    "CgroupPlace",
    "Detector",
    "DockerException",
    "DockerSource",
    "DockerUnavailable",
    "Emit",
    "GpuAccess",
    "GpuProcess",
    "NotFound",
    "OnceResult",
    "OwnerResolver",
    "ProcReader",
    "RequestException",
    "Watcher",
    "allocated_slots",
    "allocator_hook",
    "build_detector",
    "call_hook",
    "classify",
    "container_name",
    "container_record",
    "decide_attribution",
    "event_emitter",
    "gpu_access",
    "gpu_process_reader",
    "grant_active",
    "inventory_lock",
    "inventory_path",
    "is_infrastructure",
    "iso",
    "lock_path",
    "owner_resolver",
    "parse_cgroup",
    "parse_iso",
    "parse_start_time",
    "parse_status_uid",
    "read_inventory",
    "run_once",
    "utcnow",
]
