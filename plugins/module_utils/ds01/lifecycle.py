"""The lifecycle: idle GPU containers are warned then stopped, runtimes are capped, never-started
and long-stopped containers are removed — every action scoped to the one container it concerns.

Two halves:

- **Policy** (pure): ``decide(facts, limits, prior, sample, ctx) -> Decision``. Data in (one
  container's facts, its owner's ``Limits``, the state kept from earlier sweeps, this sweep's
  activity sample, the sweep context with ``now``), actions with reasons out, plus the new state.
  No clock, no Docker, no files: every case is a table row in ``tests/unit/test_lifecycle_policy.py``.
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
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import config as config_mod
from . import fsutil

log = logging.getLogger(__name__)

SUBDIR = "lifecycle"
LAST_RUN_FILE = "last-run.json"
STATE_VERSION = "1"
EXEMPT_LABEL = "ds01.lifecycle.exempt"
MONITORING_LABEL = "ds01.monitoring"
OWNER_LABEL = "ds01.user"
TYPE_LABEL = "ds01.container_type"
WORKSPACE = "/workspace"
_ID_RE = re.compile(r"^[0-9a-f]{12,64}$")
_TRUE = ("true", "1", "yes")

RUNNING_STATES = ("running", "paused")
STOPPED_STATES = ("exited", "dead")

# Event types (reference §9; the exporter counts them by name).
EV_IDLE_WARNING = "maintenance.idle_warning"
EV_IDLE_STOP = "maintenance.idle_stop"
EV_RUNTIME_WARNING = "maintenance.runtime_warning"
EV_RUNTIME_STOP = "maintenance.runtime_stop"
EV_EXEMPT_NOTICE = "maintenance.exempt_notice"
EV_PRE_STOP = "maintenance.pre_stop_signal"
EV_REMOVE = "container.remove"
EV_FAILED = "maintenance.action_failed"


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerFacts:
    """What Docker says about one container, as the policy needs it (times are aware UTC)."""

    id: str
    name: str
    state: str  # created | running | paused | restarting | removing | exited | dead
    owner: Optional[str]
    container_type: str
    labels: Mapping[str, str]
    created_at: dt.datetime
    started_at: Optional[dt.datetime] = None
    finished_at: Optional[dt.datetime] = None
    gpu_slots: tuple = ()
    gpu_uuids: tuple = ()
    gpueq: float = 0.0
    device_request_gpu: bool = False
    pid: Optional[int] = None
    workspace_mounted: bool = False

    @property
    def holds_gpu(self) -> bool:
        return bool(self.gpu_slots or self.gpu_uuids or self.device_request_gpu)

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True)
class Sample:
    """One sweep's activity reading of a running container (None: could not be read).

    ``wall`` is the real clock (``time.time()``) when the counters were read: rates are measured
    over real seconds, so an injected ``now`` (tests, ``--now``) cannot distort them.
    """

    wall: float
    cpu_ns: Optional[int] = None  # cumulative CPU time of the container's cgroup
    net_bytes: Optional[int] = None  # cumulative rx+tx bytes of the container's interfaces but lo
    busy_processes: Optional[int] = None  # processes in state R or D right now
    gpu_util: Optional[float] = None  # % of the busiest device it holds; None on MIG / unknown
    keepalive_mtime: Optional[dt.datetime] = None


@dataclass(frozen=True)
class SweepContext:
    now: dt.datetime
    demand: Optional[float] = None  # allocated gpueq / capacity; None when unknown
    protected_label: str = "ds01.protected"
    protected_names: frozenset = frozenset()


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """What the owner is told: a level, a title and the body lines (the quota line is added later)."""

    level: str  # WARNING | ALERT | STOPPED | NOTICE
    title: str
    lines: tuple


@dataclass(frozen=True)
class Action:
    """One thing the executor does, in order: ``notify`` (the notice travels on every action),
    ``signal`` (the container's PID 1 only), ``stop`` (SIGTERM, then SIGKILL after ``grace_s``),
    ``remove``."""

    kind: str  # notify | signal | stop | remove
    rule: str  # idle | runtime | created | exited | gpu_hold
    reason: str
    event: Optional[str] = None
    notice: Optional[Notice] = None
    grace_s: Optional[float] = None
    signal: Optional[str] = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"kind": self.kind, "rule": self.rule, "reason": self.reason, "event": self.event}
        if self.grace_s is not None:
            out["grace_s"] = self.grace_s
        if self.signal:
            out["signal"] = self.signal
        if self.notice:
            out["notice"] = self.notice.title
        return out


@dataclass
class Decision:
    container: ContainerFacts
    actions: list = field(default_factory=list)
    state: Optional[dict] = None  # None: keep no state for this container
    skipped: Optional[str] = None  # why no rule looked at it (protected, no owner)
    notes: list = field(default_factory=list)  # what the rules saw, for --dry-run and logs

    def as_dict(self) -> dict:
        facts = self.container
        return {
            "id": facts.id,
            "name": facts.name,
            "owner": facts.owner,
            "state": facts.state,
            "type": facts.container_type,
            "gpu": facts.holds_gpu,
            "actions": [a.as_dict() for a in self.actions],
            "notes": list(self.notes),
            "skipped": self.skipped,
        }


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _iso(when: Optional[dt.datetime]) -> Optional[str]:
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z") if when else None


def parse_time(value: Any) -> Optional[dt.datetime]:
    """Docker's RFC 3339 text (nanoseconds, ``Z``), our ISO text, or an epoch → aware UTC; zero → None."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc) if value > 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("0001-01-01"):
        return None
    match = re.match(r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$", text)
    if not match:
        return None
    base, frac, zone = match.groups()
    micro = (frac[1:] + "000000")[:6] if frac else "000000"
    zone = "+00:00" if zone in (None, "Z") else (zone if ":" in zone else zone[:3] + ":" + zone[3:])
    try:
        when = dt.datetime.fromisoformat(f"{base.replace(' ', 'T')}.{micro}{zone}")
    except ValueError:
        return None
    return when.astimezone(dt.timezone.utc)


def _minutes(delta: dt.timedelta) -> str:
    """``1h 05m`` / ``12m`` / ``2d 3h`` — how long, for people."""
    total = max(0, round(delta.total_seconds() / 60.0))
    days, rest = divmod(total, 1440)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m"


def _hours(value: float) -> str:
    return _minutes(dt.timedelta(hours=value))


def _clock(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def is_protected(facts: ContainerFacts, ctx: SweepContext) -> Optional[str]:
    """Why the lifecycle must never touch this container, or None."""
    labels = facts.labels
    for label in (ctx.protected_label, "ds01.protected", MONITORING_LABEL):
        if str(labels.get(label, "")).lower() in _TRUE:
            return f"label {label}=true"
    if facts.name in ctx.protected_names:
        return "listed in monitoring.infrastructure_containers"
    return None


def _label_exempt(facts: ContainerFacts) -> bool:
    return str(facts.labels.get(EXEMPT_LABEL, "")).lower() in _TRUE


def _exemption(facts: ContainerFacts, limits: config_mod.Limits, key: str, now: dt.datetime) -> Optional[str]:
    """A sentence naming the exemption that covers ``key`` for this container now, or None."""
    if _label_exempt(facts):
        return f"the container carries the admin label {EXEMPT_LABEL}=true"
    found = limits.exemption_for(key, now, facts.name)
    if found is None:
        return None
    scope = f"container {found.container}" if found.container else f"user {found.username}"
    until = f"until {_clock(found.expires_on)}" if found.expires_on else "with no end date"
    why = f" ({found.reason})" if found.reason else ""
    return f"an exemption from {key} for {scope} {until}{why}"


def effective_timeout(limits: config_mod.Limits, container_type: str, key: str) -> Optional[float]:
    """Hours for ``idle_timeout_h`` / ``max_runtime_h`` (None: the rule is off), by the one rule
    (``config.Limits.governing``); exemptions are asked separately (``_exemption``)."""
    return limits.governing(container_type, key)[0]


def sigterm_grace(limits: config_mod.Limits, container_type: str) -> float:
    return float(limits.governing(container_type, "sigterm_grace_s")[0])


# --------------------------------------------------------------------------------------------
# Activity
# --------------------------------------------------------------------------------------------

ACTIVE, IDLE, UNKNOWN = "active", "idle", "unknown"


def classify(sample: Sample, prior: Mapping[str, Any], pol: config_mod.Policies, now: dt.datetime) -> tuple:
    """(ACTIVE | IDLE | UNKNOWN, reasons, readings) for one sample against the previous counters."""
    readings: dict = {}
    active: list = []
    if sample.keepalive_mtime is not None:
        age = now - sample.keepalive_mtime
        max_h = pol.keepalive_max_duration_h
        if max_h is None or age < dt.timedelta(hours=max_h):
            active.append(f"keep-alive file {pol.keepalive_file} touched {_minutes(age)} ago")
    if sample.gpu_util is not None:
        readings["gpu_util"] = sample.gpu_util
        if sample.gpu_util > pol.gpu_idle_threshold:
            active.append(f"GPU {sample.gpu_util:.0f}% > {pol.gpu_idle_threshold:g}%")
    cpu = None
    prev_cpu, prev_wall = prior.get("cpu_ns"), prior.get("sample_wall")
    if sample.cpu_ns is not None and prev_cpu is not None and prev_wall is not None:
        elapsed = sample.wall - float(prev_wall)
        if elapsed > 0 and sample.cpu_ns >= int(prev_cpu):
            cpu = (sample.cpu_ns - int(prev_cpu)) / 1e9 / elapsed * 100.0
            readings["cpu_percent"] = round(cpu, 3)
            if cpu > pol.cpu_idle_threshold:
                active.append(f"CPU {cpu:.1f}% > {pol.cpu_idle_threshold:g}%")
    prev_net = prior.get("net_bytes")
    if sample.net_bytes is not None and prev_net is not None and sample.net_bytes >= int(prev_net):
        delta = sample.net_bytes - int(prev_net)
        readings["net_bytes"] = delta
        if delta > pol.network_idle_threshold:
            active.append(f"network {delta} bytes > {pol.network_idle_threshold}")
    if sample.busy_processes is not None:
        readings["busy_processes"] = sample.busy_processes
        if sample.busy_processes > pol.process_idle_threshold:
            active.append(f"{sample.busy_processes} busy processes > {pol.process_idle_threshold}")
    if active:
        return ACTIVE, active, readings
    if cpu is None:
        return UNKNOWN, ["no CPU reading since the last sweep yet"], readings
    return IDLE, ["every signal at or below its threshold"], readings


# --------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------


def decide(
    facts: ContainerFacts,
    limits: Optional[config_mod.Limits],
    prior: Optional[Mapping[str, Any]],
    sample: Optional[Sample],
    ctx: SweepContext,
) -> Decision:
    """What to do with one container now, and the state to keep (pure; see module docstring)."""
    decision = Decision(facts)
    why = is_protected(facts, ctx)
    if why:
        decision.skipped = f"protected ({why}): never touched"
        return decision
    if not facts.owner or limits is None:
        decision.skipped = "no owner (no ds01.user label): left alone"
        return decision
    state = _carry_state(prior or {}, facts)
    decision.state = state
    if facts.state == "created":
        _rule_created(decision, limits, ctx)
    elif facts.state in STOPPED_STATES:
        _rule_stopped(decision, limits, state, ctx)
    elif facts.state in RUNNING_STATES:
        if not facts.holds_gpu:
            decision.notes.append("holds no GPU: idle and runtime rules do not apply")
        else:
            done = _rule_runtime(decision, limits, state, ctx)
            _rule_idle(decision, limits, state, sample=sample, ctx=ctx, stopping=done)
    else:
        decision.notes.append(f"state {facts.state}: nothing to do this sweep")
    return decision


def _carry_state(prior: Mapping[str, Any], facts: ContainerFacts) -> dict:
    state = dict(prior)
    state.update(version=STATE_VERSION, id=facts.id, name=facts.name, owner=facts.owner)
    started = _iso(facts.started_at)
    if facts.started_at is not None:
        first = parse_time(state.get("first_started_at"))
        if first is None or facts.started_at < first:
            state["first_started_at"] = started
        if state.get("started_at") != started:
            # A (re)start: new cgroup counters, the idle episode starts over; the runtime clock does not.
            state["started_at"] = started
            for key in ("cpu_ns", "net_bytes", "sample_wall", "idle_final_at", "idle_exempt_noticed", "idle_signal_at"):
                state.pop(key, None)
            state.update(idle_streak=0, idle_warned=0, last_active=started)
    return state


def _rule_created(decision: Decision, limits: config_mod.Limits, ctx: SweepContext) -> None:
    facts = decision.container
    timeout_m = limits.policies.created_container_timeout_m
    if timeout_m is None:
        decision.notes.append("created containers are kept (created_container_timeout_m: null)")
        return
    age = ctx.now - facts.created_at
    limit = dt.timedelta(minutes=timeout_m)
    if age < limit:
        decision.notes.append(f"created, never started, for {_minutes(age)} of {_minutes(limit)}")
        return
    if _label_exempt(decision.container):
        decision.notes.append(f"created for {_minutes(age)}, kept: label {EXEMPT_LABEL}=true")
        return
    reason = f"created {_minutes(age)} ago and never started (limit {_minutes(limit)})"
    notice = Notice(
        "NOTICE",
        "CONTAINER REMOVED — NEVER STARTED",
        (
            f"Your container {facts.name} was created {_minutes(age)} ago and never started;",
            f"containers that do not start within {_minutes(limit)} are removed{_gpu_clause(facts)}.",
            "Create it again when you are ready to run it.",
        ),
    )
    decision.actions.append(
        Action("remove", "created", reason, EV_REMOVE, notice, details={"reason": "created_never_started"})
    )


def _gpu_clause(facts: ContainerFacts) -> str:
    return ", which also frees the GPU it reserved" if facts.holds_gpu else ""


def _rule_stopped(decision: Decision, limits: config_mod.Limits, state: dict, ctx: SweepContext) -> None:
    facts = decision.container
    if state.get("pending_remove"):
        reason = f"finishing the {state['pending_remove']} stop: removing the stopped container"
        decision.actions.append(
            Action("remove", state["pending_remove"], reason, EV_REMOVE, details={"reason": state["pending_remove"]})
        )
        return
    if facts.finished_at is None:
        decision.notes.append("stopped, but Docker gives no FinishedAt: kept")
        return
    stopped_for = ctx.now - facts.finished_at
    rules = []
    if facts.holds_gpu:
        rules.append(("gpu_hold", "gpu_hold_after_stop_h", limits.gpu_hold_after_stop_h, "gpu_hold_expired"))
    rules.append(("exited", "container_hold_after_stop_h", limits.container_hold_after_stop_h, "hold_expired"))
    for rule, key, hold_h, code in rules:
        if hold_h is None:
            decision.notes.append(f"{key}: null — kept")
            continue
        hold = dt.timedelta(hours=hold_h)
        if stopped_for < hold:
            decision.notes.append(f"stopped {_minutes(stopped_for)} of {key} {_minutes(hold)}")
            continue
        exempt = _exemption(facts, limits, key, ctx.now)
        if exempt:
            decision.notes.append(f"stopped {_minutes(stopped_for)} ≥ {_minutes(hold)}, kept: {exempt}")
            continue
        what = "its GPU hold" if rule == "gpu_hold" else "the hold for stopped containers"
        reason = f"stopped {_minutes(stopped_for)} ago, past {what} ({key} {_hours(hold_h)})"
        notice = Notice(
            "NOTICE",
            "STOPPED CONTAINER REMOVED",
            (
                f"Your container {facts.name} had been stopped for {_minutes(stopped_for)};",
                f"stopped containers are removed after {_hours(hold_h)}{_gpu_clause(facts)}.",
                "Files in mounted volumes (e.g. /workspace) are kept.",
            ),
        )
        decision.actions.append(Action("remove", rule, reason, EV_REMOVE, notice, details={"reason": code}))
        return


def _keep_advice(pol: config_mod.Policies, idle: bool) -> tuple:
    lines = []
    if idle:
        max_h = pol.keepalive_max_duration_h
        span = f" (it counts as activity for {_hours(max_h)} after each touch)" if max_h else ""
        lines.append(f"To keep it: use it, or run `touch {pol.keepalive_file}` inside the container{span}.")
    lines.append("Need longer? Ask the admins for a time-limited entry in lifecycle-exemptions.yaml.")
    return tuple(lines)


def _rule_runtime(decision: Decision, limits: config_mod.Limits, state: dict, ctx: SweepContext) -> bool:
    """Max runtime since the first start; returns True when this sweep stops the container."""
    facts = decision.container
    pol = limits.policies
    hours = effective_timeout(limits, facts.container_type, "max_runtime_h")
    if hours is None:
        decision.notes.append(f"max runtime: none for type {facts.container_type} / user {facts.owner}")
        return False
    first = parse_time(state.get("first_started_at"))
    if first is None:
        return False
    limit = dt.timedelta(hours=hours)
    ran = ctx.now - first
    exempt = _exemption(facts, limits, "max_runtime_h", ctx.now)
    if exempt:
        if ran >= limit and not state.get("runtime_exempt_noticed"):
            state["runtime_exempt_noticed"] = _iso(ctx.now)
            reason = f"running {_minutes(ran)} since its first start ≥ max runtime {_hours(hours)}, kept: {exempt}"
            notice = Notice(
                "NOTICE",
                "RUNTIME NOTICE (FYI only — you are exempt)",
                (
                    f"Your container {facts.name} has run for {_minutes(ran)}, past the {_hours(hours)} limit.",
                    f"It is NOT being stopped: {exempt}.",
                    "Please stop it yourself when you are done, so others can use the GPU.",
                ),
            )
            decision.actions.append(
                Action("notify", "runtime", reason, EV_EXEMPT_NOTICE, notice, details={"exempt_from": "max_runtime_h"})
            )
        else:
            decision.notes.append(f"max runtime: {_minutes(ran)} of {_hours(hours)}, exempt")
        return False
    return _staged_stop(
        decision,
        state,
        ctx=ctx,
        pol=pol,
        rule="runtime",
        since=first,
        limit=limit,
        fractions=pol.runtime_warning_fractions,
        grace_s=sigterm_grace(limits, facts.container_type),
        describe=lambda at: (
            f"running {_minutes(ctx.now - first)} since its first start; max runtime {_hours(hours)}"
            + ("" if at is None else f", stop at {_clock(at)}")
        ),
    )


def _rule_idle(
    decision: Decision,
    limits: config_mod.Limits,
    state: dict,
    *,
    sample: Optional[Sample],
    ctx: SweepContext,
    stopping: bool,
) -> None:
    facts = decision.container
    pol = limits.policies
    if sample is not None:
        verdict, reasons, readings = classify(sample, state, pol, ctx.now)
        state.update(cpu_ns=sample.cpu_ns, net_bytes=sample.net_bytes, sample_wall=sample.wall)
    else:
        verdict, reasons, readings = UNKNOWN, ["no activity reading"], {}
    if stopping:
        return
    base_h = effective_timeout(limits, facts.container_type, "idle_timeout_h")
    if base_h is None:
        decision.notes.append(f"idle rule off for type {facts.container_type} / user {facts.owner}")
        return
    started = parse_time(state.get("started_at")) or facts.created_at
    grace_end = started + dt.timedelta(minutes=pol.grace_period_m)
    if ctx.now < grace_end:
        decision.notes.append(f"idle: in the start grace period until {_clock(grace_end)}")
        state["idle_streak"] = 0
        return
    if verdict == ACTIVE:
        state.update(last_active=_iso(ctx.now), idle_streak=0, idle_warned=0)
        for key in ("idle_final_at", "idle_exempt_noticed", "idle_signal_at"):
            state.pop(key, None)
        decision.notes.append("active: " + "; ".join(reasons))
        return
    if verdict == IDLE:
        state["idle_streak"] = int(state.get("idle_streak", 0)) + 1
    high = ctx.demand is not None and ctx.demand > pol.high_demand_threshold
    hours = base_h * (pol.high_demand_idle_reduction if high else 1.0)
    limit = dt.timedelta(hours=hours)
    last_active = parse_time(state.get("last_active")) or started
    since = max(last_active, grace_end)
    idle_for = ctx.now - since
    streak, window = int(state.get("idle_streak", 0)), pol.idle_detection_window
    demand_note = f" (cut from {_hours(base_h)}: high GPU demand {ctx.demand:.0%})" if high else ""
    seen = "; ".join(reasons)
    decision.notes.append(
        f"idle {_minutes(idle_for)} of {_hours(hours)}{demand_note}; idle sweeps {streak}/{window} ({seen})"
    )
    if streak < window:
        return
    exempt = _exemption(facts, limits, "idle_timeout_h", ctx.now)
    if exempt:
        if idle_for >= limit and not state.get("idle_exempt_noticed"):
            state["idle_exempt_noticed"] = _iso(ctx.now)
            reason = f"idle {_minutes(idle_for)} ≥ idle timeout {_hours(hours)}, kept: {exempt}"
            notice = Notice(
                "NOTICE",
                "IDLE CONTAINER NOTICE (FYI only — you are exempt)",
                (
                    f"Your GPU container {facts.name} has been idle for {_minutes(idle_for)}"
                    f" (timeout {_hours(hours)}{demand_note}).",
                    f"It is NOT being stopped: {exempt}.",
                    "Please stop it yourself when you are done, so others can use the GPU.",
                ),
            )
            decision.actions.append(
                Action("notify", "idle", reason, EV_EXEMPT_NOTICE, notice, details={"exempt_from": "idle_timeout_h"})
            )
        return
    _staged_stop(
        decision,
        state,
        ctx=ctx,
        pol=pol,
        rule="idle",
        since=since,
        limit=limit,
        fractions=pol.idle_warning_fractions,
        grace_s=sigterm_grace(limits, facts.container_type),
        describe=lambda at: (
            f"idle {_minutes(idle_for)} (GPU, CPU, network and processes at or below thresholds); "
            f"idle timeout {_hours(hours)}{demand_note}" + ("" if at is None else f", stop at {_clock(at)}")
        ),
        extra={"readings": readings, "high_demand": high, "timeout_h": hours},
    )


def _staged_stop(
    decision: Decision,
    state: dict,
    *,
    ctx: SweepContext,
    pol: config_mod.Policies,
    rule: str,
    since: dt.datetime,
    limit: dt.timedelta,
    fractions: Sequence[float],
    grace_s: float,
    describe: Callable[[Optional[dt.datetime]], str],
    extra: Optional[Mapping[str, Any]] = None,
) -> bool:
    """Warnings at ``fractions`` of ``limit`` from ``since``, the pre-stop signal, then the stop.

    Returns True when this sweep stops the container. Guarantees real notice: the stop is never
    sooner than ``(1 - last fraction) * limit`` after the final warning, nor ``pre_stop_lead_m``
    after the pre-stop signal.
    """
    facts = decision.container
    now = ctx.now
    fractions = tuple(sorted(fractions))
    final_notice = limit * (1.0 - fractions[-1])
    warned_key, final_key, signal_key = f"{rule}_warned", f"{rule}_final_at", f"{rule}_signal_at"
    warned = int(state.get(warned_key, 0))
    elapsed = now - since
    stop_at = since + limit
    final_at = parse_time(state.get(final_key))
    if final_at is not None:
        stop_at = max(stop_at, final_at + final_notice)
    lead = dt.timedelta(minutes=pol.pre_stop_lead_m) if pol.pre_stop_signal and pol.pre_stop_lead_m else None
    signal_at = parse_time(state.get(signal_key))
    if signal_at is not None and lead is not None:
        stop_at = max(stop_at, signal_at + lead)
    level = sum(1 for f in fractions if elapsed >= limit * f)
    if elapsed >= limit:
        level = len(fractions)
    details = {"elapsed_s": int(elapsed.total_seconds()), "limit_s": int(limit.total_seconds())}
    details.update(extra or {})
    if level > warned:
        final = level == len(fractions)
        if final:
            stop_at = max(stop_at, now + final_notice)
            state[final_key] = _iso(now)
        state[warned_key] = level
        warned = level
        decision.actions.append(
            _warning(
                decision,
                rule,
                level=level,
                final=final,
                stop_at=stop_at,
                now=now,
                describe=describe,
                pol=pol,
                details=details,
            )
        )
    if lead is not None and signal_at is None and now >= stop_at - lead:
        state[signal_key] = _iso(now)
        stop_at = max(stop_at, now + lead)
        reason = f"{pol.pre_stop_signal} to PID 1 of {facts.name}, {_minutes(stop_at - now)} before the {rule} stop"
        decision.actions.append(
            Action("signal", rule, reason, EV_PRE_STOP, signal=pol.pre_stop_signal, details={"stop_at": _iso(stop_at)})
        )
    if warned >= len(fractions) and now >= stop_at:
        decision.actions.append(_stop(decision, rule, grace_s=grace_s, describe=describe, pol=pol, details=details))
        if rule == "idle":
            state["pending_remove"] = "idle_stop"
            decision.actions.append(
                Action(
                    "remove",
                    "idle",
                    f"idle stop of {facts.name}: remove it to free its GPU",
                    EV_REMOVE,
                    details={"reason": "idle_stop"},
                )
            )
        else:
            state["runtime_stopped_at"] = _iso(now)
        return True
    if not decision.actions or decision.actions[-1].rule != rule:
        decision.notes.append(f"{rule}: {describe(stop_at if warned else None)}")
    return False


def _warning(
    decision: Decision,
    rule: str,
    *,
    level: int,
    final: bool,
    stop_at: dt.datetime,
    now: dt.datetime,
    describe: Callable,
    pol: config_mod.Policies,
    details: dict,
) -> Action:
    facts = decision.container
    now_to_stop = _minutes(stop_at - now)
    if rule == "idle":
        title = "FINAL IDLE WARNING — STOPPING SOON" if final else "IDLE CONTAINER WARNING"
        happen = f"will be STOPPED and REMOVED at {_clock(stop_at)} (in {now_to_stop}), freeing its GPU"
        event = EV_IDLE_WARNING
    else:
        title = "FINAL RUNTIME WARNING — STOPPING SOON" if final else "MAX RUNTIME WARNING"
        happen = f"will be STOPPED at {_clock(stop_at)} (in {now_to_stop})"
        event = EV_RUNTIME_WARNING
    notice = Notice(
        "ALERT" if final else "WARNING",
        title,
        (
            f"Your GPU container {facts.name} {happen}.",
            "Why: " + describe(None) + ".",
            *_keep_advice(pol, rule == "idle"),
        ),
    )
    reason = f"warning {level}: {describe(stop_at)}"
    return Action("notify", rule, reason, event, notice, details={**details, "level": level, "stop_at": _iso(stop_at)})


def _stop(
    decision: Decision, rule: str, *, grace_s: float, describe: Callable, pol: config_mod.Policies, details: dict
) -> Action:
    facts = decision.container
    if rule == "idle":
        title = "CONTAINER AUTO-STOPPED (IDLE)"
        happen = "is being stopped and removed now to free its GPU"
        event = EV_IDLE_STOP
    else:
        title = "CONTAINER STOPPED — RUNTIME LIMIT"
        happen = "is being stopped now (it stays on disk until the stopped-container hold ends)"
        event = EV_RUNTIME_STOP
    notice = Notice(
        "STOPPED",
        title,
        (
            f"Your GPU container {facts.name} {happen}.",
            "Why: " + describe(None) + ".",
            f"It gets SIGTERM, and SIGKILL after {grace_s:g} s. Files in mounted volumes (e.g. /workspace) are kept.",
            *_keep_advice(pol, rule == "idle"),
        ),
    )
    reason = f"stop: {describe(None)}"
    return Action(
        "stop",
        rule,
        reason,
        event,
        notice,
        grace_s=grace_s,
        details={**details, "container_type": facts.container_type, "grace_s": grace_s},
    )


# --------------------------------------------------------------------------------------------
# State store: one JSON file per container id
# --------------------------------------------------------------------------------------------


class StateStore:
    """``<dir>/<container id>.json``, replaced atomically; files of vanished containers are dropped."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, cid: str) -> str:
        if not _ID_RE.match(cid):
            raise ValueError(f"not a container id: {cid!r}")
        return os.path.join(self.directory, f"{cid}.json")

    def load(self, cid: str) -> dict:
        try:
            with open(self._path(cid), encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("lifecycle state of %s is unreadable (%s); starting it afresh", cid[:12], exc)
            return {}
        return data if isinstance(data, dict) else {}

    def ids(self) -> list:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [n[:-5] for n in names if n.endswith(".json") and _ID_RE.match(n[:-5])]

    def save(self, cid: str, data: Mapping[str, Any]) -> None:
        fsutil.atomic_write_json(self._path(cid), data)

    def drop(self, cid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(cid))


# --------------------------------------------------------------------------------------------
# Activity readers (host side: the kernel's own counters, no subprocess, no docker stats)
# --------------------------------------------------------------------------------------------


class HostReader:
    """Reads a running container's CPU, network and process activity through its PID 1.

    CPU: the cgroup's cumulative counter (v2 ``cpu.stat`` ``usage_usec``; v1 ``cpuacct.usage``),
    found from ``/proc/<pid>/cgroup``. Network: ``/proc/<pid>/net/dev`` (the container's own
    network namespace), all interfaces but ``lo``. Busy processes: members of the cgroup in state
    R or D. Each reader returns None when the file is not there (never a made-up zero).
    """

    def __init__(self, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> None:
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root

    def _read(self, path: str) -> Optional[str]:
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                return handle.read()
        except OSError:
            return None

    def cgroup_dir(self, pid: int) -> Optional[tuple]:
        """(kind, directory) of the cgroup that accounts the CPU of ``pid``: v1 cpuacct, else v2."""
        text = self._read(os.path.join(self.proc_root, str(pid), "cgroup"))
        if text is None:
            return None
        unified = None
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            hier, controllers, path = parts
            if "cpuacct" in controllers.split(","):
                for mount in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
                    base = os.path.join(self.cgroup_root, mount)
                    if os.path.isdir(base):
                        return "v1", os.path.join(base, path.lstrip("/"))
            if hier == "0" and controllers == "":
                unified = path
        if unified is not None:
            for base in (self.cgroup_root, os.path.join(self.cgroup_root, "unified")):
                if os.path.exists(os.path.join(base, "cgroup.controllers")):
                    return "v2", os.path.join(base, unified.lstrip("/"))
        return None

    def cpu_ns(self, cgroup: Optional[tuple]) -> Optional[int]:
        if cgroup is None:
            return None
        kind, directory = cgroup
        if kind == "v1":
            text = self._read(os.path.join(directory, "cpuacct.usage"))
            return int(text.strip()) if text and text.strip().isdigit() else None
        text = self._read(os.path.join(directory, "cpu.stat"))
        for line in (text or "").splitlines():
            key, _sep, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) * 1000
        return None

    def net_bytes(self, pid: int) -> Optional[int]:
        text = self._read(os.path.join(self.proc_root, str(pid), "net", "dev"))
        if text is None:
            return None
        total = 0
        for line in text.splitlines()[2:]:
            name, _sep, rest = line.partition(":")
            fields = rest.split()
            if name.strip() == "lo" or len(fields) < 9:
                continue
            total += int(fields[0]) + int(fields[8])
        return total

    def busy_processes(self, cgroup: Optional[tuple]) -> Optional[int]:
        if cgroup is None:
            return None
        text = self._read(os.path.join(cgroup[1], "cgroup.procs"))
        if text is None:
            return None
        busy = 0
        for pid in text.split():
            stat = self._read(os.path.join(self.proc_root, pid, "stat"))
            if stat and stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] in ("R", "D"):
                busy += 1
        return busy


class GpuProbe:
    """GPU utilisation and capacity for the lifecycle; the default knows nothing (None)."""

    def utilization(self, uuids: Sequence[str]) -> Optional[float]:
        return None

    def capacity_gpueq(self) -> Optional[float]:
        return None


class InventoryGpuProbe(GpuProbe):
    """Adapter over ``gpu.Inventory``: ``utilization(uuid)`` per device (the busiest counts) and capacity."""

    def __init__(self, inventory: Any) -> None:
        self.inventory = inventory

    def utilization(self, uuids: Sequence[str]) -> Optional[float]:
        from . import gpu

        values = []
        for uuid in uuids:
            try:
                value = self.inventory.utilization(uuid)
            except (gpu.GpuInventoryError, LookupError, ValueError) as exc:
                log.info("no GPU utilisation for %s: %s", uuid, exc)
                value = None
            if value is None:  # MIG, or the device does not report: decided on the other signals
                return None
            values.append(float(value))
        return max(values) if values else None

    def capacity_gpueq(self) -> Optional[float]:
        return float(self.inventory.capacity_gpueq()) or None


def gpu_probe_from_config(config: config_mod.Config) -> GpuProbe:
    """The GPU inventory of ``gpu.py`` (NVML, or the fake topology), or a probe that knows nothing."""
    from . import gpu

    try:
        return InventoryGpuProbe(gpu.inventory_from_config(config))
    except gpu.GpuInventoryError as exc:  # the NVML edge: a GPU fault must not stop the sweep
        log.warning("GPU inventory unavailable (%s): GPU utilisation unknown this sweep", exc)
        return GpuProbe()


# --------------------------------------------------------------------------------------------
# Docker adapter
# --------------------------------------------------------------------------------------------


def _container_type(labels: Mapping[str, str]) -> str:
    value = labels.get(TYPE_LABEL)
    if value in config_mod.CONTAINER_TYPES:
        return value
    if any(k.startswith("devcontainer.") for k in labels):
        return "devcontainer"
    if "com.docker.compose.project" in labels:
        return "compose"
    return "unknown"


def _split(value: Optional[str]) -> tuple:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _gpueq(labels: Mapping[str, str]) -> float:
    try:
        return float(labels.get("ds01.gpu.gpueq") or 0.0)
    except ValueError:
        return 0.0


def facts_from_api(summary: Mapping[str, Any], inspect: Optional[Mapping[str, Any]] = None) -> ContainerFacts:
    """Facts from one entry of the list call (and, when read, its inspect document)."""
    labels = dict(summary.get("Labels") or {})
    names = summary.get("Names") or []
    name = names[0].lstrip("/") if names else summary["Id"][:12]
    state = str(summary.get("State") or "").lower()
    created = parse_time(summary.get("Created")) or dt.datetime.fromtimestamp(0, dt.timezone.utc)
    started = finished = pid = None
    workspace = device_gpu = False
    if inspect:
        st = inspect.get("State") or {}
        state = str(st.get("Status") or state).lower()
        started = parse_time(st.get("StartedAt"))
        finished = parse_time(st.get("FinishedAt"))
        pid = int(st.get("Pid") or 0) or None
        workspace = any((m.get("Destination") == WORKSPACE) for m in inspect.get("Mounts") or [])
        for req in (inspect.get("HostConfig") or {}).get("DeviceRequests") or []:
            caps = [c for group in (req.get("Capabilities") or []) for c in group]
            if "gpu" in caps or req.get("Driver") == "nvidia":
                device_gpu = True
    return ContainerFacts(
        id=summary["Id"],
        name=name,
        state=state,
        owner=labels.get(OWNER_LABEL) or None,
        container_type=_container_type(labels),
        labels=labels,
        created_at=created,
        started_at=started,
        finished_at=finished,
        gpu_slots=_split(labels.get("ds01.gpu.slots")),
        gpu_uuids=_split(labels.get("ds01.gpu.uuids") or labels.get("ds01.gpu.uuid")),
        gpueq=_gpueq(labels),
        device_request_gpu=device_gpu,
        pid=pid,
        workspace_mounted=workspace,
    )


class DockerOps:
    """The only code here that talks to Docker: one list call, inspect where a rule needs times,
    keep-alive stat (HEAD of the archive endpoint), and the actions — each scoped to one container."""

    def __init__(self, client: Any, filters: Optional[Mapping[str, Any]] = None) -> None:
        self.client = client
        self.api = client.api
        self.filters = dict(filters or {})  # e.g. {"label": ["ds01.test=1"]}: tests see only their own

    def list_containers(self) -> list:
        return self.api.containers(all=True, filters=self.filters or None)

    def inspect(self, cid: str) -> Optional[dict]:
        """The inspect document, or None when the container was removed since the list call."""
        from docker.errors import NotFound

        try:
            return self.api.inspect_container(cid)
        except NotFound:
            return None

    def path_stat(self, cid: str, path: str) -> Optional[dict]:
        """``docker cp``'s stat of a path inside the container (no copy), or None when absent."""
        from docker.errors import NotFound

        url = self.api._url("/containers/{0}/archive", cid)
        response = self.api.head(url, params={"path": path})
        if response.status_code == 404:
            return None
        try:
            self.api._raise_for_status(response)
        except NotFound:
            return None
        header = response.headers.get("X-Docker-Container-Path-Stat")
        if not header:
            return None
        try:
            return json.loads(base64.b64decode(header))
        except (ValueError, binascii.Error):
            return None

    def keepalive_mtime(self, cid: str, path: str) -> Optional[dt.datetime]:
        stat = self.path_stat(cid, path)
        return parse_time(stat.get("mtime")) if stat else None

    def kill(self, cid: str, signal: str) -> bool:
        """Signal the container's PID 1 (Docker signals nothing else); False when it is gone."""
        from docker.errors import NotFound

        try:
            self.api.kill(cid, signal=signal)
        except NotFound:
            return False
        return True

    def stop(self, cid: str, grace_s: float) -> bool:
        """SIGTERM to the container, SIGKILL after ``grace_s``; False when it is already gone."""
        from docker.errors import NotFound

        try:
            self.api.stop(cid, timeout=round(grace_s))
        except NotFound:
            return False
        return True

    def remove(self, cid: str) -> bool:
        """Remove a stopped container (its volumes stay); False when someone removed it first."""
        from docker.errors import NotFound

        try:
            self.api.remove_container(cid, v=False, force=False)
        except NotFound:
            return False
        return True


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


@dataclass
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
            "now": _iso(self.now),
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

    summaries = docker_ops.list_containers()
    facts_list: list = []
    for summary in summaries:
        try:
            state = str(summary.get("State") or "").lower()
            inspect = None
            if state != "created":
                inspect = docker_ops.inspect(summary["Id"])
                if inspect is None:
                    continue  # removed between the list call and now: nothing to do
            facts_list.append(facts_from_api(summary, inspect))
        except Exception as exc:  # noqa: BLE001 - one container's fault (removed mid-sweep…) never stops the sweep
            _fail(report, summary.get("Id", "?"), summary.get("Id", "?")[:12], "read", exc)

    held: dict = {}
    total_alloc = 0.0
    for facts in facts_list:
        if facts.owner:
            count, gpueq = held.get(facts.owner, (0, 0.0))
            held[facts.owner] = (count + 1, gpueq + facts.gpueq)
        total_alloc += facts.gpueq
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
            if facts.owner:
                if facts.owner not in limits_cache:
                    limits_cache[facts.owner] = resolve(facts.owner)
                limits = limits_cache[facts.owner]
            prior = store.load(facts.id)
            sample = None
            if (
                limits is not None
                and facts.state in RUNNING_STATES
                and facts.holds_gpu
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
            _fail(report, facts.id, facts.name, "decide", exc, emit=emit, owner=facts.owner)

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
                {"last_run": time.time(), "now": _iso(now), **report.as_dict()["summary"]},
            )
        except OSError as exc:
            log.warning("could not record the last run: %s", exc)
    return report


def _sample(
    docker_ops: DockerOps, host: HostReader, gpu: GpuProbe, facts: ContainerFacts, pol: config_mod.Policies
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
        gpu_util=gpu.utilization(facts.gpu_uuids) if facts.gpu_uuids else None,
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
            count, gpueq = held.get(facts.owner, (0, 0.0))
            try:
                notifier.deliver(facts.owner, facts, action.notice, quota_line(limits, gpueq, count))
            except Exception as exc:  # noqa: BLE001 - delivery is best effort; the action still happens
                log.warning("could not notify %s about %s: %s", facts.owner, facts.name, exc)
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
            _fail(report, facts.id, facts.name, action.kind, exc, emit=emit, owner=facts.owner)
            return removed  # the rest (e.g. remove after a failed stop) waits for the next sweep
        removed = removed or action.kind == "remove"
        log.info("%s %s (%s): %s", action.kind, facts.name, facts.owner, action.reason)
        if emit is not None and action.event:
            details = {
                "container": facts.name,
                "container_id": facts.short_id,
                "container_type": facts.container_type,
                "rule": action.rule,
                "reason": action.reason,
                "gpu_slots": list(facts.gpu_slots),
            }
            for key, value in action.details.items():
                details["code" if key == "reason" else key] = value
            _emit(emit, action.event, facts.owner, details)
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
