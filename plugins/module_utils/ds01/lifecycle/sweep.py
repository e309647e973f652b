"""The sweep (the executor at the edge): list once, read activity, ask the policy, then notify,
signal, stop and remove; a failure on one container is logged and the sweep goes on."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional

from .. import config as config_mod
from .. import docker, fsutil, logs
from ..record import field, record
from .model import (
    EV_FAILED,
    LAST_RUN_FILE,
    RUNNING_STATES,
    STATE_VERSION,
    SUBDIR,
    Decision,
    Sample,
    SweepContext,
    container_type_of,
    holds_gpu,
    iso,
)
from .ops import DockerOps
from .policy import decide, is_protected
from .readers import GpuProbe, HostReader
from .store import StateStore

log = logs.get(__package__)


@record
class SweepReport:
    now: dt.datetime
    dry_run: bool
    decisions: list = field(default_factory=list)
    errors: list = field(default_factory=list)  # {"container", "id", "error"}
    demand: Optional[float] = None
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def as_dict(self) -> dict:
        actions = [a for d in self.decisions for a in d.actions]
        return {
            "schema_version": STATE_VERSION,
            "now": iso(self.now),
            "dry_run": self.dry_run,
            "demand": self.demand,
            "containers": [d.as_dict() for d in self.decisions],
            "errors": list(self.errors),
            "summary": {
                "containers": len(self.decisions),
                "actions": len(actions),
                "stops": sum(1 for a in actions if a.kind == "stop"),
                "removes": sum(1 for a in actions if a.kind == "remove"),
                "notices": sum(1 for a in actions if a.notice is not None),
                "errors": len(self.errors),
                "wall_s": round(self.wall_s, 4),
                "cpu_s": round(self.cpu_s, 4),
            },
        }


def quota_line(limits: config_mod.Limits, held_gpueq: float, containers: int) -> str:
    quota = limits.gpu_quota
    gpus = f"GPUs: {held_gpueq:g}/{quota:g} gpueq" if quota is not None else f"GPUs: {held_gpueq:g} gpueq (no quota)"
    cap = limits.max_containers_per_user
    count = f"Containers: {containers}/{cap}" if cap is not None else f"Containers: {containers}"
    return f"{gpus} | {count}"


EmitFn = Callable[..., Any]


def run_sweep(
    config: config_mod.Config,
    docker_ops: DockerOps,
    now: dt.datetime,
    *,
    dry_run: bool = False,
    gpu: Optional[GpuProbe] = None,
    host: Optional[HostReader] = None,
    notifier: Any = None,
    emit: Optional[EmitFn] = None,
    store: Optional[StateStore] = None,
    resolve: Optional[Callable[[str], config_mod.Limits]] = None,
) -> SweepReport:
    """One sweep over every container; a failure on one container is logged and the sweep goes on.

    ``emit(event_type, user=…, **details)`` records events; ``notifier.deliver(user, facts, notice,
    quota_line)`` reaches the owner. In ``dry_run`` nothing is written, sent, signalled or changed.
    """
    wall0, cpu0 = time.monotonic(), time.process_time()
    gpu = gpu or GpuProbe()
    host = host or HostReader()
    store = store or StateStore(os.path.join(config.paths.state_dir, SUBDIR))
    resolve = resolve or config.resolve
    monitoring = config.section("monitoring")
    report = SweepReport(now=now, dry_run=dry_run)

    facts_list = docker_ops.list_containers(
        on_error=lambda summary, exc: _fail(report, summary.get("Id", "?"), summary.get("Id", "?")[:12], "read", exc)
    )

    held: dict = {}
    total_alloc = 0.0
    for facts in facts_list:
        if facts.labelled_owner:
            count, gpueq = held.get(facts.labelled_owner, (0, 0.0))
            held[facts.labelled_owner] = (count + 1, gpueq + facts.labelled_gpueq)
        total_alloc += facts.labelled_gpueq
    capacity = gpu.capacity_gpueq()
    report.demand = round(total_alloc / capacity, 4) if capacity else None
    ctx = SweepContext(
        now=now,
        demand=report.demand,
        protected_label=monitoring["infrastructure_label"],
        protected_names=frozenset(monitoring["infrastructure_containers"]),
    )

    limits_cache: dict = {}
    seen: set = set()
    for facts in facts_list:
        seen.add(facts.id)
        try:
            limits = None
            if facts.labelled_owner:
                if facts.labelled_owner not in limits_cache:
                    limits_cache[facts.labelled_owner] = resolve(facts.labelled_owner)
                limits = limits_cache[facts.labelled_owner]
            prior = store.load(facts.id)
            sample = None
            if (
                limits is not None
                and facts.state in RUNNING_STATES
                and holds_gpu(facts)
                and not is_protected(facts, ctx)
            ):
                sample = _sample(docker_ops, host, gpu, facts, limits.policies)
            decision = decide(facts, limits, prior, sample, ctx)
            report.decisions.append(decision)
            if dry_run:
                continue
            removed = _execute(
                decision, limits, docker_ops=docker_ops, notifier=notifier, emit=emit, held=held, report=report
            )
            if decision.state is None or removed:
                store.drop(facts.id)
            elif decision.state != prior:
                store.save(facts.id, decision.state)
        except Exception as exc:  # noqa: BLE001 - the sweep edge: log, record, next container
            _fail(report, facts.id, facts.name, "decide", exc, emit=emit, owner=facts.labelled_owner)

    if not dry_run:
        for cid in store.ids():
            if cid not in seen:
                store.drop(cid)  # the container is gone: its state goes with it
    report.wall_s = time.monotonic() - wall0
    report.cpu_s = time.process_time() - cpu0
    if not dry_run:
        try:
            fsutil.atomic_write_json(
                os.path.join(store.directory, LAST_RUN_FILE),
                {"last_run": time.time(), "now": iso(now), **report.as_dict()["summary"]},
            )
        except OSError as exc:
            log.warning("could not record the last run: %s", exc)
    return report


def _sample(
    docker_ops: DockerOps, host: HostReader, gpu: GpuProbe, facts: docker.ContainerInfo, pol: config_mod.Policies
) -> Sample:
    cgroup = host.cgroup_dir(facts.pid) if facts.pid else None
    keepalive = None
    try:
        keepalive = docker_ops.keepalive_mtime(facts.id, pol.keepalive_file)
    except Exception as exc:  # noqa: BLE001 - an API hiccup on one stat: keep-alive unknown, not an error
        log.info("keep-alive of %s not readable: %s", facts.name, exc)
    return Sample(
        wall=time.time(),
        cpu_ns=host.cpu_ns(cgroup),
        net_bytes=host.net_bytes(facts.pid) if facts.pid else None,
        busy_processes=host.busy_processes(cgroup),
        gpu_util=gpu.utilization(facts.labelled_uuids) if facts.labelled_uuids else None,
        keepalive_mtime=keepalive,
    )


def _execute(
    decision: Decision,
    limits: Optional[config_mod.Limits],
    *,
    docker_ops: DockerOps,
    notifier: Any,
    emit: Optional[EmitFn],
    held: Mapping[str, tuple],
    report: SweepReport,
) -> bool:
    """Carries out the actions in order; True when the container was removed."""
    facts = decision.container
    removed = False
    for action in decision.actions:
        if action.notice is not None and notifier is not None and limits is not None:
            count, gpueq = held.get(facts.labelled_owner, (0, 0.0))
            try:
                notifier.deliver(facts.labelled_owner, facts, action.notice, quota_line(limits, gpueq, count))
            except Exception as exc:  # noqa: BLE001 - delivery is best effort; the action still happens
                log.warning("could not notify %s about %s: %s", facts.labelled_owner, facts.name, exc)
        try:
            present = True
            if action.kind == "signal":
                present = docker_ops.kill(facts.id, action.signal)
            elif action.kind == "stop":
                present = docker_ops.stop(facts.id, action.grace_s or 0)
            elif action.kind == "remove":
                present = docker_ops.remove(facts.id)
            if not present:
                log.info("%s vanished before %s; nothing left to do", facts.name, action.kind)
                return True
        except Exception as exc:  # noqa: BLE001 - Docker refused or failed: recorded, retried next sweep
            _fail(report, facts.id, facts.name, action.kind, exc, emit=emit, owner=facts.labelled_owner)
            return removed  # the rest (e.g. remove after a failed stop) waits for the next sweep
        removed = removed or action.kind == "remove"
        log.info("%s %s (%s): %s", action.kind, facts.name, facts.labelled_owner, action.reason)
        if emit is not None and action.event:
            details = {
                "container": facts.name,
                "container_id": facts.short_id,
                "container_type": container_type_of(facts.labels),
                "rule": action.rule,
                "reason": action.reason,
                "gpu_slots": list(facts.labelled_slots),
            }
            for key, value in action.details.items():
                details["code" if key == "reason" else key] = value
            _emit(emit, action.event, facts.labelled_owner, details)
    return removed


def _emit(emit: EmitFn, event_type: str, user: Optional[str], details: Mapping[str, Any]) -> None:
    try:
        emit(event_type, user=user, **details)
    except Exception as exc:  # noqa: BLE001 - the event log must never undo an action already taken
        log.error("could not record %s for %s: %s", event_type, details.get("container"), exc)


def _fail(
    report: SweepReport,
    cid: str,
    name: str,
    step: str,
    exc: BaseException,
    *,
    emit: Optional[EmitFn] = None,
    owner: Optional[str] = None,
) -> None:
    log.error("lifecycle: %s of %s failed: %s: %s", step, name, type(exc).__name__, exc)
    report.errors.append({"id": cid, "container": name, "step": step, "error": f"{type(exc).__name__}: {exc}"})
    if emit is not None and not report.dry_run:
        _emit(
            emit, EV_FAILED, owner, {"container": name, "container_id": cid[:12], "step": step, "error": str(exc)[:300]}
        )


def iter_actions(report: SweepReport) -> Iterable[tuple]:
    for decision in report.decisions:
        for action in decision.actions:
            yield decision.container, action
