"""What a valid config says: the records ds01 enforces and the ``Config`` that answers ``resolve(login)``.

``Config`` is filled by ``load.load_config`` (never built by hand); ``Config.resolve`` layers builtin ← defaults ←
group ← override key by key into a frozen ``Limits``, which records where each value came from. ``Limits.governing``
applies ``RULE``, the precedence of a container type's lifecycle values. ``safe_limits`` is the answer when no
config ever loaded.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Optional

from .. import identity, logs
from ..record import field, record
from .schema import (
    AGGREGATE_KEYS,
    CONTAINER_TYPE_KEYS,
    CONTAINER_TYPES,
    LIMIT_KEYS,
    OVERRIDES_FILE,
    POLICY_KEYS,
    TYPE_KEYS,
    TYPE_LIMIT_KEYS,
)

log = logs.get(__name__)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@record(frozen=True)
class Aggregate:
    """Per-user totals enforced by the user's systemd slice (``gpu_limit`` by the allocator)."""

    cpu_quota: Optional[str] = None
    memory_max: Optional[str] = None
    memory_high: Optional[str] = None
    tasks_max: Optional[str] = None
    gpu_limit: Optional[float] = None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in AGGREGATE_KEYS}


@record(frozen=True)
class Policies:
    high_demand_threshold: float = 0.8
    high_demand_idle_reduction: float = 0.5
    gpu_idle_threshold: float = 5.0
    cpu_idle_threshold: float = 2.0
    network_idle_threshold: int = 1048576
    process_idle_threshold: int = 0
    idle_detection_window: int = 3
    grace_period_m: float = 30.0
    keepalive_max_duration_h: Optional[float] = 24.0
    keepalive_file: str = "/workspace/.keep-alive"
    sigterm_grace_s: float = 60.0
    created_container_timeout_m: Optional[float] = 30.0
    idle_warning_fractions: tuple = (0.5, 0.875)
    runtime_warning_fractions: tuple = (0.75, 0.9)
    pre_stop_signal: Optional[str] = None
    pre_stop_lead_m: Optional[float] = 10.0
    quota_alert_cooldown_h: float = 4.0

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@record(frozen=True)
class ContainerTypePolicy:
    """Lifecycle values for one container type; None means "use the user's own value"."""

    idle_timeout_h: Optional[float] = None
    max_runtime_h: Optional[float] = None
    sigterm_grace_s: Optional[float] = None
    # Which keys the config set explicitly (so an explicit null means "exempt").
    explicit: frozenset = frozenset()

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in CONTAINER_TYPE_KEYS}


@record(frozen=True)
class Exemption:
    username: str
    exempt_from: frozenset
    expires_on: Optional[dt.datetime]
    container: Optional[str] = None
    category: Optional[str] = None
    reason: Optional[str] = None
    approved_by: Optional[str] = None
    approved_on: Optional[str] = None

    def active(self, now: dt.datetime) -> bool:
        return self.expires_on is None or now < self.expires_on

    def as_dict(self) -> dict:
        return {
            "username": self.username,
            "container": self.container,
            "exempt_from": sorted(self.exempt_from),
            "expires_on": self.expires_on.isoformat() if self.expires_on else None,
            "category": self.category,
            "reason": self.reason,
            "approved_by": self.approved_by,
            "approved_on": self.approved_on,
        }


# The precedence ``Limits.governing`` applies, in words (``ds01 config show`` and ``ds01 limits`` print it).
RULE = (
    "The value that governs a container is the most specific one written down: an exemption (for that "
    "container, then for the user) > the user's override > groups.<group>.container_types.<type> > "
    "container_types.<type> > the group's value > defaults > ds01's built-in default. A null that is "
    "written down counts: it switches the rule off at that level."
)


@record(frozen=True)
class Limits:
    """Everything ds01 enforces for one login, with the source of every value.

    ``sources`` maps each limit key to ``builtin``, ``defaults``, ``group:<name>`` or
    ``override``. ``None`` in a limit means unlimited. Sizes are bytes; durations keep the
    unit their key names (``_h`` hours, ``_m`` minutes, ``_s`` seconds).
    """

    user: str
    group: str
    sanitized: str
    slice_name: str
    is_override: bool
    listed: bool
    max_gpu_equivalents: Optional[float]
    max_gpu_slots_per_container: Optional[int]
    allow_full_gpu: bool
    max_cpus: Optional[float]
    memory: Optional[int]
    memory_swap: Optional[int]
    shm_size: Optional[int]
    pids_limit: Optional[int]
    max_containers_per_user: Optional[int]
    max_runtime_h: Optional[float]
    idle_timeout_h: Optional[float]
    gpu_hold_after_stop_h: Optional[float]
    container_hold_after_stop_h: Optional[float]
    aggregate: Optional[Aggregate]
    policies: Policies
    container_types: Mapping[str, ContainerTypePolicy] = field(default_factory=dict)
    exemptions: tuple = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    safe_defaults: bool = False
    group_container_types: Mapping[str, ContainerTypePolicy] = field(default_factory=dict)
    # enforcement.aggregate_limits: False leaves the user's slice uncapped (aggregate shown, not enforced).
    slice_caps: bool = True

    @property
    def gpu_quota(self) -> Optional[float]:
        """The tighter of ``max_gpu_equivalents`` and ``aggregate.gpu_limit`` (None = unlimited)."""
        values = [v for v in (self.max_gpu_equivalents, self.aggregate.gpu_limit if self.aggregate else None) if v]
        return min(values) if values else None

    def type_key(self, name: str) -> str:
        """The container type whose rows apply: ``name`` where either table lists it, else ``unknown``."""
        return name if name in self.container_types or name in self.group_container_types else "unknown"

    def container_type(self, name: str) -> ContainerTypePolicy:
        return self.container_types.get(self.type_key(name)) or ContainerTypePolicy()

    def governing(self, container_type: str, key: str) -> tuple:
        """``(value, source)`` of a lifecycle key for a container of ``container_type``: the most specific
        value written down (``RULE``). ``None`` means the rule is off. An exemption sits above all of
        these and is asked separately (``exemption_for``), since it is dated and may name one container.

        ``key`` is one of ``idle_timeout_h``, ``max_runtime_h`` (limits) or ``sigterm_grace_s`` (a policy).
        """
        kind = self.type_key(container_type)
        if key in TYPE_LIMIT_KEYS:
            source = self.sources.get(key, "builtin")
            if source == "override":
                return getattr(self, key), source
            for table, where in (
                (self.group_container_types, f"group:{self.group}.container_types.{kind}"),
                (self.container_types, f"container_types.{kind}"),
            ):
                row = table.get(kind)
                if row is not None and key in row.explicit:
                    return getattr(row, key), where
            return getattr(self, key), source
        if key == "sigterm_grace_s":
            source = self.sources.get("policies.sigterm_grace_s", "builtin")
            if source == "override":
                return self.policies.sigterm_grace_s, source
            for table, where in (
                (self.group_container_types, f"group:{self.group}.container_types.{kind}"),
                (self.container_types, f"container_types.{kind}"),
            ):
                row = table.get(kind)
                if row is not None and key in row.explicit and row.sigterm_grace_s is not None:
                    return row.sigterm_grace_s, where
            return self.policies.sigterm_grace_s, source
        raise KeyError(key)

    def lifecycle_table(self) -> dict:
        """type -> ``{key, key + "_from"}`` for every container type: what the lifecycle enforces."""
        table: dict = {}
        for name in CONTAINER_TYPES:
            row: dict = {}
            for key in TYPE_KEYS:
                row[key], row[f"{key}_from"] = self.governing(name, key)
            table[name] = row
        return table

    def active_exemptions(self, now: dt.datetime, container: Optional[str] = None) -> list[Exemption]:
        return [
            e
            for e in self.exemptions
            if e.active(now) and (e.container is None or (container is not None and e.container == container))
        ]

    def exemption_for(self, what: str, now: dt.datetime, container: Optional[str] = None) -> Optional[Exemption]:
        for exemption in self.active_exemptions(now, container):
            if what in exemption.exempt_from:
                return exemption
        return None

    def as_dict(self) -> dict:
        return {
            "user": self.user,
            "group": self.group,
            "sanitized": self.sanitized,
            "slice": self.slice_name,
            "override": self.is_override,
            "listed": self.listed,
            "safe_defaults": self.safe_defaults,
            "slice_caps": self.slice_caps,
            "limits": {k: getattr(self, k) for k in LIMIT_KEYS},
            "aggregate": self.aggregate.as_dict() if self.aggregate else None,
            "policies": self.policies.as_dict(),
            "container_types": {k: v.as_dict() for k, v in sorted(self.container_types.items())},
            "group_container_types": {k: v.as_dict() for k, v in sorted(self.group_container_types.items())},
            "exemptions": [e.as_dict() for e in self.exemptions],
            "sources": dict(self.sources),
        }


# --------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------


@record
class Group:
    """One group of ``groups:`` as read (``load``); ``Config.resolve`` layers it over the defaults."""

    name: str
    limits: dict
    aggregate: Optional[dict]  # None: key absent; {} with _cleared: explicitly null
    aggregate_set: bool
    policies: dict
    members: list
    container_types: dict = field(default_factory=dict)  # type -> ContainerTypePolicy


class Config:
    """A validated configuration. Build it with ``load_config``; ask it with ``resolve``."""

    def __init__(self, path: str, base_dir: Optional[str] = None) -> None:
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)
        self.base_dir = os.path.abspath(base_dir) if base_dir else self.directory  # relative paths resolve here
        self.texts: dict[str, str] = {}  # file -> validated text
        self.last_good: Optional[dict] = None  # when loaded from the saved bundle: what and why (load_last_good)
        self.warnings: list[str] = []
        self.files: list[str] = []
        self.defaults: dict = {}
        self.defaults_aggregate: Optional[dict] = None
        self.default_group = ""
        self.groups: dict[str, Group] = {}
        self.policies: dict = {}
        self.policies_set: frozenset = frozenset()
        self.container_types: dict[str, ContainerTypePolicy] = {}
        self.overrides: dict[str, dict] = {}
        self.members: dict[str, str] = {}  # login -> group
        self.archived: frozenset = frozenset()
        self.exemptions: list[Exemption] = []
        self.sections: dict[str, dict] = {}

    # -- sections ---------------------------------------------------------------------------
    def section(self, name: str) -> Mapping[str, Any]:
        """A flat section with every key present (defaults filled in)."""
        return MappingProxyType(self.sections[name])

    @property
    def paths(self) -> Any:
        return _Namespace(self.sections["paths"])

    @property
    def admin_group(self) -> str:
        return self.sections["access_control"]["admin_group"]

    @property
    def admin_users(self) -> tuple:
        return self.sections["access_control"]["admin_users"]

    @property
    def gpu_exempt_users(self) -> tuple:
        return self.sections["bare_metal_access"]["exempt_users"]

    # -- users --------------------------------------------------------------------------------
    def group_of(self, login: str) -> tuple[str, bool]:
        """(group, listed): the group whose members include ``login``, else the default group."""
        if login in self.members:
            return self.members[login], True
        sanitized = identity.sanitize_username(login)
        if sanitized != login and sanitized in self.members:
            return self.members[sanitized], True
        return self.default_group, login in self.overrides

    def known_users(self) -> dict[str, str]:
        """Every login the config names (members and override users) → its group; archived excluded."""
        users = dict(self.members)
        for login in self.overrides:
            users.setdefault(login, self.group_of(login)[0])
        return {u: g for u, g in users.items() if u not in self.archived}

    def slice_problems(self, extra_logins: Iterable[str] = ()) -> list[str]:
        """Sanitiser collisions among known users plus ``extra_logins``, as sentences."""
        seen: dict[str, str] = {}
        problems = []
        logins = list(self.known_users()) + [u for u in extra_logins if u not in self.archived]
        for login in sorted(set(logins)):
            token = self._slice_token(login)
            other = seen.get(token)
            if other is not None and other != login:
                problems.append(
                    f"logins '{other}' and '{login}' both map to the slice name '{token}'; set "
                    f"'slice_name' for one of them in {OVERRIDES_FILE}"
                )
            seen.setdefault(token, login)
        return problems

    def _slice_token(self, login: str) -> str:
        override = self.overrides.get(login, {})
        return override.get("slice_name") or identity.sanitize_username(login)

    def resolve(self, login: str) -> Limits:
        """The limits of ``login``: builtin ← defaults ← its group ← its override (key by key)."""
        group_name, listed = self.group_of(login)
        group = self.groups[group_name]
        override = self.overrides.get(login)
        values: dict = {}
        sources: dict = {}
        for key, (_kind, default) in LIMIT_KEYS.items():
            values[key], sources[key] = default, "builtin"
            for layer, source in (
                (self.defaults, "defaults"),
                (group.limits, f"group:{group_name}"),
                ((override or {}).get("limits", {}), "override"),
            ):
                if key in layer:
                    values[key], sources[key] = layer[key], source

        aggregate, agg_sources = self._merge_aggregate(group, override)
        sources.update({f"aggregate.{k}": v for k, v in agg_sources.items()})
        policy_values = dict(self.policies)
        for key in policy_values:
            sources[f"policies.{key}"] = "policies" if key in self.policies_set else "builtin"
        for layer, source in (
            (group.policies, f"group:{group_name}"),
            ((override or {}).get("policies", {}), "override"),
        ):
            for key, value in layer.items():
                policy_values[key] = value
                sources[f"policies.{key}"] = source
        policies = Policies(**{k: policy_values.get(k, d) for k, (_kind, d) in POLICY_KEYS.items()})

        sanitized = self._slice_token(login)
        return Limits(
            user=login,
            group=group_name,
            sanitized=sanitized,
            slice_name=identity.slice_unit(group_name, sanitized),
            is_override=override is not None,
            listed=listed or override is not None,
            aggregate=aggregate,
            policies=policies,
            container_types=MappingProxyType(dict(self.container_types)),
            group_container_types=MappingProxyType(dict(group.container_types)),
            slice_caps=bool(self.sections["enforcement"]["aggregate_limits"]),
            exemptions=tuple(e for e in self.exemptions if e.username == login),
            sources=MappingProxyType(sources),
            **values,
        )

    def group_aggregate(self, name: str) -> Optional[Aggregate]:
        """The per-user totals a member of group ``name`` gets before any override (defaults, then the group)."""
        return self._merge_aggregate(self.groups[name], None)[0]

    def _merge_aggregate(self, group: Group, override: Optional[dict]) -> tuple[Optional[Aggregate], dict]:
        merged: Optional[dict] = None
        sources: dict = {}
        layers = [(self.defaults_aggregate, "defaults", self.defaults_aggregate is not None)]
        layers.append((group.aggregate, f"group:{group.name}", group.aggregate_set))
        if override is not None:
            layers.append((override.get("aggregate"), "override", "aggregate" in override))
        for layer, source, present in layers:
            if not present:
                continue
            if layer is None:  # explicit `aggregate: null` clears what came before
                merged, sources = None, {}
                continue
            merged = dict(merged or {})
            for key, value in layer.items():
                merged[key] = value
                sources[key] = source
        if merged is None:
            return None, {}
        return Aggregate(**merged), sources


class _Namespace:
    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)


def safe_limits(login: str, reason: str = "no valid configuration has been loaded") -> Limits:
    """Limits for when no config ever loaded: 1.0 GPU-equivalent, no whole GPU (ARCHITECTURE.md)."""
    values = {key: default for key, (_kind, default) in LIMIT_KEYS.items()}
    values.update(max_gpu_equivalents=1.0, allow_full_gpu=False)
    sources = dict.fromkeys(LIMIT_KEYS, "safe-defaults")
    sanitized = identity.sanitize_username(login)
    log.warning("using safe default limits for %s: %s", login, reason)
    return Limits(
        user=login,
        group="unknown",
        sanitized=sanitized,
        slice_name=identity.slice_unit("unknown", sanitized),
        is_override=False,
        listed=False,
        aggregate=None,
        policies=Policies(),
        sources=MappingProxyType(sources),
        safe_defaults=True,
        **values,
    )
