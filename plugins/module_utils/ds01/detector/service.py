"""Assembly: the detector built from the config, its edges (the event log, the owner resolver, the
allocator hook), the inventory lock and ``run_once``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Callable, Optional

from .. import allocator, docker, events, fsutil, gpu, identity, logs
from ..record import record
from .host import ProcReader, gpu_process_reader
from .source import DockerSource, DockerUnavailable
from .state import INVENTORY_FILE, Detector, Emit
from .watcher import call_hook

log = logs.get("ds01.detector")

LOCK_FILE = "workloads.lock"


def event_emitter(config: Any) -> Emit:
    """``emit(event_type, user, **details)`` into the JSONL event log (``events.py``)."""
    event_log = events.EventLog(events.default_log_path(config))

    def emit(event_type: str, user: Optional[str] = None, **details: Any) -> None:
        log.info("%s user=%s %s", event_type, user, details)
        event_log.write(event_type, user=user, source="detector", **details)

    return emit


def owner_resolver(config: Any) -> Callable[[Mapping[str, Any]], tuple]:
    """``attrs -> (login or None, how it was found)`` through identity's one owner resolver."""
    resolve = identity.container_owner

    def owner(attrs: Mapping[str, Any]) -> tuple:
        return resolve(attrs)

    return owner


def allocator_hook(config: Any) -> Callable[[], None]:
    """The allocator's DCGM job-mapping sync (``allocator.sync_job_mapping``), called after events
    that change GPU holdings."""
    cache = docker.InspectCache()  # a warm read is one list call plus inspects of new containers

    def hook() -> None:
        inventory = gpu.inventory_from_config(config)
        holdings = docker.list_containers(
            docker.reader_from_env(), inventory, cache=cache, on_error=docker.skip_unreadable
        )
        allocator.sync_job_mapping(inventory, holdings, config.section("gpu_allocation")["mapping_dir"])

    return hook


def inventory_path(config: Any) -> str:
    return os.path.join(config.paths.state_dir, INVENTORY_FILE)


def build_detector(config: Any, emit: Optional[Emit] = None, proc: Optional[ProcReader] = None) -> Detector:
    monitoring = config.section("monitoring")
    bare_metal = config.section("bare_metal_access")
    return Detector(
        inventory_path(config),
        owner_of=owner_resolver(config),
        emit=emit or event_emitter(config),
        proc=proc,
        exempt_users=config.gpu_exempt_users,
        grant_dir=bare_metal.get("state_dir"),
        infra_label=monitoring.get("infrastructure_label") or "ds01.protected",
        infra_names=monitoring.get("infrastructure_containers") or (),
    )


def lock_path(config: Any) -> str:
    return os.path.join(config.paths.state_dir, LOCK_FILE)


def inventory_lock(config: Any) -> fsutil.FileLock:
    """``workloads.lock`` beside the inventory: one writer at a time (the watcher holds it for its lifetime;
    ``detect once`` takes it for one run). Its holder notes its pid in it."""
    return fsutil.FileLock(lock_path(config), mode=0o644)


@record
class OnceResult:
    path: str
    containers: int
    gpu_containers: int
    host_processes: int
    pending_processes: int
    unmanaged: int
    docker_error: Optional[str]
    gpu_error: Optional[str]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_once(
    config: Any,
    detector: Optional[Detector] = None,
    source: Optional[DockerSource] = None,
    read_gpu: Optional[Callable[[], tuple]] = None,
    hook: Optional[Callable[[], None]] = None,
) -> OnceResult:
    """One full Docker sync and one host sweep, then the inventory is written (cron, tests)."""
    detector = detector or build_detector(config)
    detector.load()
    docker_error = None
    changed = False
    try:
        source = source or DockerSource()
        changed = detector.full_sync(source.list_all())
    except DockerUnavailable as exc:
        docker_error = str(exc)
        detector.docker_status = {"ok": False, "error": docker_error}
    processes, gpu_error = (read_gpu or gpu_process_reader(config))()
    changed = detector.sweep(processes, gpu_error) or changed
    detector.save("once")
    hook = hook if hook is not None else allocator_hook(config)
    if hook and changed:
        call_hook(hook)
    return OnceResult(
        path=detector.inventory_path,
        containers=len(detector.containers),
        gpu_containers=sum(1 for c in detector.containers.values() if c.get("has_gpu")),
        host_processes=len(detector.host_processes),
        pending_processes=len(detector.pending),
        unmanaged=sum(1 for c in detector.containers.values() if c.get("unmanaged_gpu"))
        + sum(1 for p in detector.host_processes.values() if p.get("unmanaged_gpu")),
        docker_error=docker_error,
        gpu_error=gpu_error,
    )
