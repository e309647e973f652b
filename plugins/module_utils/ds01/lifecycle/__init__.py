"""The lifecycle: idle GPU containers are warned then stopped, runtimes are capped, never-started
and long-stopped containers are removed — every action scoped to the one container it concerns.

Two halves:

- **Policy** (pure): ``decide(facts, limits, prior, sample, ctx) -> Decision``. Data in (one
  container as ``docker.ContainerInfo``, the one record; its owner's ``Limits``; the state kept from
  earlier sweeps; this sweep's activity sample; the sweep context with ``now``), actions with reasons
  out, plus the new state.
  No clock, no Docker, no files: every case is a table row in ``test_lifecycle_policy.py`` (tests/unit mirrors
  this tree: ``tests/unit/plugins/module_utils/ds01/lifecycle/``).
- **Executor** (edge): ``run_sweep(...)`` lists containers once, reads activity for the running GPU
  holders straight from the kernel (cgroup CPU counter, ``/proc/<pid>/net/dev``, process states;
  no per-container subprocess, no ``docker stats``), asks the policy, then notifies, signals, stops
  and removes through the Docker API. A failure on one container is logged and the sweep goes on.

Rules (every number is a config key; see ``docs/lifecycle.md`` in the report of this change):

- **Idle** (running GPU holders): after ``grace_period_m`` from the last start, a sweep is *idle*
  when every known signal is at or below its threshold — GPU utilisation (per device, the busiest
  device counts; unknown on MIG, then the other signals decide), CPU (% of one CPU since the last
  sweep), network (bytes since the last sweep, loopback excluded) and busy processes (processes in
  state R or D). Any signal above its threshold, or a fresh keep-alive file, is activity and resets
  the idle clock and the warnings. Without a CPU delta (first sight, just restarted) a sweep with no
  active signal is inconclusive. After ``idle_detection_window`` consecutive idle sweeps, warnings go
  out at ``idle_warning_fractions`` of the timeout; at the timeout the container is stopped with its
  type's ``sigterm_grace_s`` and removed (which frees its GPU). The timeout is the value the one rule
  picks (``config.RULE``, ``Limits.governing``: override > group's per-type > per-type > group >
  defaults), times ``high_demand_idle_reduction`` while allocated gpueq / capacity is above
  ``high_demand_threshold``.
- **Max runtime** (running GPU holders): wall time since the container's *first* start (kept in
  state; a restart does not reset it); warnings at ``runtime_warning_fractions``; stop at 100 %.
  The stopped container then falls to the cleanup rules.
- **Real notice**: a stop never comes sooner than ``(1 - last fraction) * timeout`` after the final
  warning, nor sooner than ``pre_stop_lead_m`` after the optional ``pre_stop_signal``; when a sweep
  finds a stop due without them (a late first sight, a lost state file) it sends them first.
- **Cleanup**: ``created`` for longer than ``created_container_timeout_m``; exited GPU holders after
  ``gpu_hold_after_stop_h``; any exited container after ``container_hold_after_stop_h`` (null: never).
- **Exemptions**: a time-bounded entry of ``lifecycle-exemptions.yaml`` (per user, or per container
  by ``container:``) or the admin-only label ``ds01.lifecycle.exempt=true`` turns an idle or runtime
  stop into one FYI notice and keeps the container; for the hold rules it keeps it silently.
  ``ds01.protected`` (the config's ``monitoring.infrastructure_label``), ``ds01.monitoring`` and the
  ``monitoring.infrastructure_containers`` names are never touched. Containers without an owner
  (no ``ds01.user`` label) are reported and left alone.

State: one JSON file per container id, ``<paths.state_dir>/lifecycle/<id>.json`` (0644, replaced
atomically), dropped when the container is gone; ``last-run.json`` beside them for the exporter.

The package: ``model`` (the policy's inputs and outputs, event names, time helpers), ``policy``
(pure: ``decide`` and the activity classification), ``store`` (the state files), ``readers`` (the
kernel's activity counters and the GPU probe), ``ops`` (the Docker adapter) and ``sweep`` (the
executor: ``run_sweep``).
"""

from __future__ import annotations

from .model import (
    EV_EXEMPT_NOTICE,
    EV_FAILED,
    EV_IDLE_STOP,
    EV_IDLE_WARNING,
    EV_PRE_STOP,
    EV_REMOVE,
    EV_RUNTIME_STOP,
    EV_RUNTIME_WARNING,
    EXEMPT_LABEL,
    LAST_RUN_FILE,
    MONITORING_LABEL,
    OWNER_LABEL,
    RUNNING_STATES,
    STATE_VERSION,
    STOPPED_STATES,
    SUBDIR,
    TYPE_LABEL,
    WORKSPACE,
    Action,
    Decision,
    Notice,
    Sample,
    SweepContext,
    container_type_of,
    holds_gpu,
    iso,
    parse_time,
)
from .ops import (
    DockerOps,
)
from .policy import (
    ACTIVE,
    IDLE,
    UNKNOWN,
    carry_state,
    classify,
    decide,
    effective_timeout,
    is_protected,
    sigterm_grace,
)
from .readers import (
    GpuProbe,
    HostReader,
    InventoryGpuProbe,
    gpu_probe_from_config,
)
from .store import (
    StateStore,
)
from .sweep import (
    EmitFn,
    SweepReport,
    iter_actions,
    quota_line,
    run_sweep,
)

__all__ = [
    "ACTIVE",
    "EV_EXEMPT_NOTICE",
    "EV_FAILED",
    "EV_IDLE_STOP",
    "EV_IDLE_WARNING",
    "EV_PRE_STOP",
    "EV_REMOVE",
    "EV_RUNTIME_STOP",
    "EV_RUNTIME_WARNING",
    "EXEMPT_LABEL",
    "IDLE",
    "LAST_RUN_FILE",
    "MONITORING_LABEL",
    "OWNER_LABEL",
    "RUNNING_STATES",
    "STATE_VERSION",
    "STOPPED_STATES",
    "SUBDIR",
    "TYPE_LABEL",
    "UNKNOWN",
    "WORKSPACE",
    "Action",
    "Decision",
    "DockerOps",
    "EmitFn",
    "GpuProbe",
    "HostReader",
    "InventoryGpuProbe",
    "Notice",
    "Sample",
    "StateStore",
    "SweepContext",
    "SweepReport",
    "carry_state",
    "classify",
    "container_type_of",
    "decide",
    "effective_timeout",
    "gpu_probe_from_config",
    "holds_gpu",
    "is_protected",
    "iso",
    "iter_actions",
    "parse_time",
    "quota_line",
    "run_sweep",
    "sigterm_grace",
]
