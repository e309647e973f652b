"""The lifecycle's data: the policy's inputs (a container as ``docker.ContainerInfo``, the one record,
read through the docker package; an activity sample; the sweep context) and outputs (notices,
actions, a decision), the event names and the time helpers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Optional

from .. import config as config_mod
from .. import docker
from ..record import field, record

SUBDIR = "lifecycle"
LAST_RUN_FILE = "last-run.json"
STATE_VERSION = "1"
EXEMPT_LABEL = "ds01.lifecycle.exempt"
MONITORING_LABEL = "ds01.monitoring"
OWNER_LABEL = "ds01.user"
TYPE_LABEL = docker.TYPE_LABEL
WORKSPACE = docker.WORKSPACE_MOUNT

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


EPOCH = dt.datetime.fromtimestamp(0, dt.timezone.utc)  # a container without a create time: created long ago


def container_type_of(labels: Mapping[str, str]) -> str:
    """The container's type for the limits: its ``ds01.container_type`` label when it names one of
    the config's types, else devcontainer/compose by their tools' labels, else unknown."""
    value = labels.get(TYPE_LABEL)
    if value in config_mod.CONTAINER_TYPES:
        return value
    if any(k.startswith("devcontainer.") for k in labels):
        return "devcontainer"
    if "com.docker.compose.project" in labels:
        return "compose"
    return "unknown"


def holds_gpu(info: docker.ContainerInfo) -> bool:
    """The GPU rules apply: its ds01 GPU labels name a slot or UUID, or a DeviceRequest asks for a GPU."""
    return bool(info.labelled_slots or info.labelled_uuids or info.requests_gpu)


@record(frozen=True)
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


@record(frozen=True)
class SweepContext:
    now: dt.datetime
    demand: Optional[float] = None  # allocated gpueq / capacity; None when unknown
    protected_label: str = "ds01.protected"
    protected_names: frozenset = frozenset()


@record(frozen=True)
class Notice:
    """What the owner is told: a level, a title and the body lines (the quota line is added later)."""

    level: str  # WARNING | ALERT | STOPPED | NOTICE
    title: str
    lines: tuple


@record(frozen=True)
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


@record
class Decision:
    container: docker.ContainerInfo
    actions: list = field(default_factory=list)
    state: Optional[dict] = None  # None: keep no state for this container
    skipped: Optional[str] = None  # why no rule looked at it (protected, no owner)
    notes: list = field(default_factory=list)  # what the rules saw, for --dry-run and logs

    def as_dict(self) -> dict:
        facts = self.container
        return {
            "id": facts.id,
            "name": facts.name,
            "owner": facts.labelled_owner,
            "state": facts.state,
            "type": container_type_of(facts.labels),
            "gpu": holds_gpu(facts),
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
