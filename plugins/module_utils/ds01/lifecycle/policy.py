"""The lifecycle's policy (pure): ``decide(facts, limits, prior, sample, ctx) -> Decision``, the
activity classification it rests on, and the notices it writes. No clock, no Docker, no files."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from .. import config as config_mod
from .. import docker
from .model import (
    EPOCH,
    EV_EXEMPT_NOTICE,
    EV_IDLE_STOP,
    EV_IDLE_WARNING,
    EV_PRE_STOP,
    EV_REMOVE,
    EV_RUNTIME_STOP,
    EV_RUNTIME_WARNING,
    EXEMPT_LABEL,
    MONITORING_LABEL,
    RUNNING_STATES,
    STATE_VERSION,
    STOPPED_STATES,
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

_TRUE = ("true", "1", "yes")


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


def is_protected(facts: docker.ContainerInfo, ctx: SweepContext) -> Optional[str]:
    """Why the lifecycle must never touch this container, or None."""
    labels = facts.labels
    for label in (ctx.protected_label, "ds01.protected", MONITORING_LABEL):
        if str(labels.get(label, "")).lower() in _TRUE:
            return f"label {label}=true"
    if facts.name in ctx.protected_names:
        return "listed in monitoring.infrastructure_containers"
    return None


def _label_exempt(facts: docker.ContainerInfo) -> bool:
    return str(facts.labels.get(EXEMPT_LABEL, "")).lower() in _TRUE


def _exemption(facts: docker.ContainerInfo, limits: config_mod.Limits, key: str, now: dt.datetime) -> Optional[str]:
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


def decide(
    facts: docker.ContainerInfo,
    limits: Optional[config_mod.Limits],
    prior: Optional[Mapping[str, Any]],
    sample: Optional[Sample],
    ctx: SweepContext,
) -> Decision:
    """What to do with one container now, and the state to keep (pure; see the package docstring, ``lifecycle``)."""
    decision = Decision(facts)
    why = is_protected(facts, ctx)
    if why:
        decision.skipped = f"protected ({why}): never touched"
        return decision
    if not facts.labelled_owner or limits is None:
        decision.skipped = "no owner (no ds01.user label): left alone"
        return decision
    state = carry_state(prior or {}, facts)
    decision.state = state
    if facts.state == "created":
        _rule_created(decision, limits, ctx)
    elif facts.state in STOPPED_STATES:
        _rule_stopped(decision, limits, state, ctx)
    elif facts.state in RUNNING_STATES:
        if not holds_gpu(facts):
            decision.notes.append("holds no GPU: idle and runtime rules do not apply")
        else:
            done = _rule_runtime(decision, limits, state, ctx)
            _rule_idle(decision, limits, state, sample=sample, ctx=ctx, stopping=done)
    else:
        decision.notes.append(f"state {facts.state}: nothing to do this sweep")
    return decision


def carry_state(prior: Mapping[str, Any], facts: docker.ContainerInfo) -> dict:
    state = dict(prior)
    state.update(version=STATE_VERSION, id=facts.id, name=facts.name, owner=facts.labelled_owner)
    started = iso(facts.started_at)
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
    age = ctx.now - (facts.created or EPOCH)
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


def _gpu_clause(facts: docker.ContainerInfo) -> str:
    return ", which also frees the GPU it reserved" if holds_gpu(facts) else ""


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
    if holds_gpu(facts):
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
    ctype = container_type_of(facts.labels)
    hours = effective_timeout(limits, ctype, "max_runtime_h")
    if hours is None:
        decision.notes.append(f"max runtime: none for type {ctype} / user {facts.labelled_owner}")
        return False
    first = parse_time(state.get("first_started_at"))
    if first is None:
        return False
    limit = dt.timedelta(hours=hours)
    ran = ctx.now - first
    exempt = _exemption(facts, limits, "max_runtime_h", ctx.now)
    if exempt:
        if ran >= limit and not state.get("runtime_exempt_noticed"):
            state["runtime_exempt_noticed"] = iso(ctx.now)
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
        grace_s=sigterm_grace(limits, container_type_of(facts.labels)),
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
    ctype = container_type_of(facts.labels)
    base_h = effective_timeout(limits, ctype, "idle_timeout_h")
    if base_h is None:
        decision.notes.append(f"idle rule off for type {ctype} / user {facts.labelled_owner}")
        return
    started = parse_time(state.get("started_at")) or (facts.created or EPOCH)
    grace_end = started + dt.timedelta(minutes=pol.grace_period_m)
    if ctx.now < grace_end:
        decision.notes.append(f"idle: in the start grace period until {_clock(grace_end)}")
        state["idle_streak"] = 0
        return
    if verdict == ACTIVE:
        state.update(last_active=iso(ctx.now), idle_streak=0, idle_warned=0)
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
            state["idle_exempt_noticed"] = iso(ctx.now)
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
        grace_s=sigterm_grace(limits, container_type_of(facts.labels)),
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
            state[final_key] = iso(now)
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
        state[signal_key] = iso(now)
        stop_at = max(stop_at, now + lead)
        reason = f"{pol.pre_stop_signal} to PID 1 of {facts.name}, {_minutes(stop_at - now)} before the {rule} stop"
        decision.actions.append(
            Action("signal", rule, reason, EV_PRE_STOP, signal=pol.pre_stop_signal, details={"stop_at": iso(stop_at)})
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
            state["runtime_stopped_at"] = iso(now)
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
    return Action("notify", rule, reason, event, notice, details={**details, "level": level, "stop_at": iso(stop_at)})


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
        details={**details, "container_type": container_type_of(facts.labels), "grace_s": grace_s},
    )
