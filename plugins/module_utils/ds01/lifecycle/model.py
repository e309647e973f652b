"""The lifecycle's data: the policy's inputs (a container's facts, an activity sample, the sweep
context) and outputs (notices, actions, a decision), the event names and the time helpers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import docker

SUBDIR = "lifecycle"
LAST_RUN_FILE = "last-run.json"
STATE_VERSION = "1"
EXEMPT_LABEL = "ds01.lifecycle.exempt"
MONITORING_LABEL = "ds01.monitoring"
OWNER_LABEL = "ds01.user"
TYPE_LABEL = "ds01.container_type"
WORKSPACE = "/workspace"

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


def iso(when: Optional[dt.datetime]) -> Optional[str]:
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z") if when else None


def parse_time(value: Any) -> Optional[dt.datetime]:
    """Docker's RFC 3339 text (nanoseconds, ``Z``), our ISO text, or an epoch → aware UTC; zero → None
    (``docker.parse_time``, the one parser, in UTC)."""
    when = docker.parse_time(value)
    return when.astimezone(dt.timezone.utc) if when else None
