"""Observability: what the exporter, ``ds01 limits``, ``ds01 why`` and the quota alerts see.

One place gathers the facts (pure functions over plain data, adapters at the edges):

- **GPU slots** from ``gpu.py``'s inventory (NVML or the fake topology), each with its weight
  (``gpu.gpueq``: whole GPU 1.0, MIG slices/7) and its holder, matched by UUID or slot id.
- **Containers** from the detector's inventory (``<state_dir>/workloads.json``) while it is fresh
  (written within ``FRESH_S`` by a watcher that could reach Docker), else one Docker list call.
- **Per-user usage vs quota** for every known user (``config.known_users()``) and every owner.
- **Events** of the last 24 h from the JSONL log, read incrementally (``EventWindow`` keeps the file
  position between refreshes, so a scrape never re-reads the whole log), counted by type and
  refusals by code (``gpu.reject`` / ``auth.denied`` / ``gateway.refused`` details); and the events each
  writer could not write (``events.read_drop_counts`` of ``<run_dir>/events-dropped/``).
- **Component runs**: the detector inventory's own timestamp, the lifecycle's ``last-run.json``.
- **Slices** (``usage.SliceReader``): memory, CPU, tasks, OOM kills, PSI. A rise in a user's OOM
  count is recorded once as a ``resource.oom_kill`` event; the counts are carried in the snapshot
  and persisted in ``<state_dir>/exporter/oom-counts.json`` so a restart does not re-alert.

Every source that fails is logged and counted in ``snapshot["errors"][component]``; the rest of
the snapshot is still built. ``build_snapshot`` also writes ``<state_dir>/exporter/gpu-slots.json``
(slot → uuid, gpueq) so ``ds01 limits --brief`` can weigh MIG slots without opening NVML.

The quota-alert pass (``run_alerts``) and the DCGM job mapping sync (``allocator.sync_job_mapping``)
run after each refresh (``Observer.refresh``). Estimating when a GPU frees up for ``ds01 why``
(``estimate_release``) is pure over the holders' limits and lifecycle state.

The package: ``records`` (``docker.ContainerInfo`` from Docker's list call or the detector's
inventory, the constants, value helpers), ``accounting`` (GPU slots, their holders, a container's
held slots, GPU-equivalents, type and unmanaged use, per-user usage against quota), ``readers`` (the
event log, OOM counts, slices, the detector's inventory, grant files, gateway counters, lifecycle
state), ``docker_reads`` (containers from Docker), ``snapshot`` (the exporter's snapshot and
``Observer``), ``alerts`` (the quota-alert pass), ``why`` (when a GPU frees up) and ``report``
(``ds01 limits`` and the login brief).
"""

from __future__ import annotations

from typing import Any

from ..usage import SliceReader
from .accounting import (
    assign_holders,
    container_gpueq,
    container_type,
    held_slots,
    holds_gpu,
    host_memory_bytes,
    load_gpu_inventory,
    memory_limit_bytes,
    quota_measures,
    slot_table,
    slot_weights,
    unmanaged_gpu,
    usage_bar,
    user_totals,
)
from .alerts import (
    alert_notice,
    notifier_delivery,
    run_alerts,
)
from .readers import (
    EventWindow,
    event_log_path,
    event_writer,
    lifecycle_state,
    load_oom_counts,
    oom_rises,
    parse_systemctl_show,
    read_detector_inventory,
    read_dropped_events,
    read_gateway_counters,
    read_grant,
    read_json,
    read_slices,
    refusal_code,
    save_json,
    systemctl_control_groups,
)
from .records import (
    ALERT_EVENT,
    EXPORTER_SUBDIR,
    FRESH_S,
    GATEWAY_COUNTERS,
    OOM_EVENT,
    OOM_FILE,
    QUOTA_CODES,
    REFUSAL_EVENTS,
    SLOTS_FILE,
    SWEEP_MARGIN,
    WINDOW_S,
    container_from_summary,
    containers_from_inventory,
    containers_from_summaries,
    count_error,
    epoch_iso,
    iso,
    split_list,
    to_float,
    weigh,
)
from .report import (
    brief_line,
    gib_text,
    hours_text,
    limits_report,
    limits_text,
    num_text,
)
from .why import (
    Release,
    estimate_release,
    removal_advice,
)

# ``snapshot`` and ``docker_reads`` import the Docker SDK and prometheus_client (through docker_state,
# allocator and exporter), which the login greeting and ``ds01 limits`` never need: their names load
# on first use, as the CLI loads its commands.
SNAPSHOT_NAMES = frozenset({"Observer", "build_snapshot", "sync_job_mapping"})
DOCKER_READS_NAMES = frozenset({"docker_client_from_env", "docker_containers", "inspect_cache"})


def __getattr__(name: str) -> Any:
    if name in SNAPSHOT_NAMES:
        from . import snapshot as module
    elif name in DOCKER_READS_NAMES:
        from . import docker_reads as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


__all__ = [
    "ALERT_EVENT",
    "EXPORTER_SUBDIR",
    "FRESH_S",
    "GATEWAY_COUNTERS",
    "OOM_EVENT",
    "OOM_FILE",
    "QUOTA_CODES",
    "REFUSAL_EVENTS",
    "SLOTS_FILE",
    "SWEEP_MARGIN",
    "WINDOW_S",
    "EventWindow",
    "Release",
    "SliceReader",
    "alert_notice",
    "assign_holders",
    "brief_line",
    "container_from_summary",
    "container_gpueq",
    "container_type",
    "containers_from_inventory",
    "containers_from_summaries",
    "count_error",
    "epoch_iso",
    "estimate_release",
    "event_log_path",
    "event_writer",
    "gib_text",
    "held_slots",
    "holds_gpu",
    "host_memory_bytes",
    "hours_text",
    "iso",
    "lifecycle_state",
    "limits_report",
    "limits_text",
    "load_gpu_inventory",
    "load_oom_counts",
    "memory_limit_bytes",
    "notifier_delivery",
    "num_text",
    "oom_rises",
    "parse_systemctl_show",
    "quota_measures",
    "read_detector_inventory",
    "read_dropped_events",
    "read_gateway_counters",
    "read_grant",
    "read_json",
    "read_slices",
    "refusal_code",
    "removal_advice",
    "run_alerts",
    "save_json",
    "slot_table",
    "slot_weights",
    "split_list",
    "systemctl_control_groups",
    "to_float",
    "unmanaged_gpu",
    "usage_bar",
    "user_totals",
    "weigh",
]
