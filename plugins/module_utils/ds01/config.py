"""The limits resolver: the only code in ds01 that reads resource-limits.yaml and its companions.

Files (all in one directory, found as documented in ``find_config_path``):

- ``resource-limits.yaml``: ``defaults``, ``default_group``, ``groups``, ``policies``,
  ``container_types``, ``aggregate`` blocks, ``bare_metal_access``, ``paths`` …
- ``groups/<group>.members``: one login per line, ``#`` comments (``archived.members`` lists
  logins to leave out of slice generation);
- ``user-overrides.yaml``: ``login: {keys…}`` layered **on top of the user's group**;
- ``lifecycle-exemptions.yaml``: ``exemptions: [...]`` with an expiry.

``load_config(path)`` validates everything at once and raises ``ConfigError`` listing every
problem (file, line, key path, bad value, what was expected); it never guesses. A valid config
answers ``resolve(login) -> Limits``, a frozen record that says where each value came from.
``ConfigStore`` keeps the last good config for long-running services.

The last good config also outlives the process: whenever a config loads (a CLI command, the gateway's
``ConfigStore``), the exact text of every file that was validated is saved, if it changed, to
``<paths.state_dir>/last-good-config/bundle.json`` (``save_last_good``; one file replaced atomically, mode 0644,
or 0600 when a source file was not world-readable; only where the process may write, so a user's command saves
nothing). While the files are broken, ``load_last_good(path)`` finds that bundle again (``last_good_candidates``):
the state directory named by the broken file's own ``paths.state_dir`` (read leniently, from the ``paths:`` block
alone when the rest is not YAML), else the default ``/var/lib/ds01``; the bundle must name the same config path
and belong to root (or the caller) without group/other write access. It is validated again like any config
(relative paths still resolve against the real config directory). ``ds01 config check`` never uses it.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import logging
import math
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Optional

from . import fsutil, identity

try:
    import yaml

    HAS_YAML = True
except ImportError:  # pragma: no cover - yaml ships with ansible and with the runtime venv
    yaml = None
    HAS_YAML = False

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/ds01/resource-limits.yaml"
CONFIG_ENV = "DS01_CONFIG"
MEMBERS_DIR = "groups"
OVERRIDES_FILE = "user-overrides.yaml"
EXEMPTIONS_FILE = "lifecycle-exemptions.yaml"
ARCHIVED_GROUP = "archived"
LAST_GOOD_SUBDIR = "last-good-config"  # under paths.state_dir
LAST_GOOD_FILE = "bundle.json"
DEFAULT_STATE_DIR = "/var/lib/ds01"

GROUP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
CONTAINER_TYPES = ("devcontainer", "compose", "docker", "ds01", "api", "unknown")
EXEMPTABLE = ("idle_timeout_h", "max_runtime_h", "container_hold_after_stop_h", "gpu_hold_after_stop_h")


def find_config_path(cli_value: Optional[str] = None) -> str:
    """``--config PATH``, else ``$DS01_CONFIG``, else /etc/ds01/resource-limits.yaml."""
    if cli_value:
        return cli_value
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config, said so that an admin can fix it without reading code."""

    file: str
    key: str
    message: str
    line: Optional[int] = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "key": self.key, "message": self.message}


class ConfigError(Exception):
    """The config cannot be used; ``problems`` lists every reason at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        head = f"ds01: the configuration has {count} problem{'s' if count != 1 else ''}:"
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


# --------------------------------------------------------------------------------------------
# Value kinds
# --------------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_SYSTEMD_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?[KMGTP]?|\d+(?:\.\d+)?%|infinity)$")
_PERCENT_RE = re.compile(r"^(\d+(?:\.\d+)?)%$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_UNIT_WORD = {"s": "seconds", "m": "minutes", "h": "hours"}


def parse_size(value: Any) -> int:
    """Docker-style size (``32g``, ``512m``, ``1.5G``, bytes as an int) → bytes (1024-based)."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a size must be > 0")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            number = float(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]
            if number >= 1:
                return int(number)
    raise ValueError("a size such as '32g', '512m' or a number of bytes")


def format_size(n_bytes: Optional[int]) -> str:
    if n_bytes is None:
        return "unlimited"
    for unit, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n_bytes >= factor:
            value = n_bytes / factor
            return f"{value:g}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n_bytes}B"


def parse_duration_text(text: str) -> float:
    """``24h``/``30m``/``60s``/``2d``/``1w`` → seconds. A bare number is refused (no unit)."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


@dataclass(frozen=True)
class Kind:
    """How one key is checked and normalised: ``check(value) -> normalised`` or ValueError(expected)."""

    check: Callable[[Any], Any]
    nullable: bool = True

    def expected_suffix(self) -> str:
        return ", or null for unlimited" if self.nullable else ""


def _number(lo: Optional[float] = None, lo_open: bool = False, hi: Optional[float] = None) -> Callable[[Any], Any]:
    def check(value: Any) -> float:
        desc = "a number"
        if lo is not None:
            desc += f" {'>' if lo_open else '>='} {lo:g}"
        if hi is not None:
            desc += f" and <= {hi:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(desc)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise ValueError(desc)
        if hi is not None and value > hi:
            raise ValueError(desc)
        return float(value)

    return check


def _integer(lo: int = 1) -> Callable[[Any], Any]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"a whole number >= {lo}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _string(pattern: Optional[str] = None, desc: str = "a string") -> Callable[[Any], Any]:
    rx = re.compile(pattern) if pattern else None

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value or (rx and not rx.match(value)):
            raise ValueError(desc)
        return value

    return check


def _choice(*choices: str) -> Callable[[Any], Any]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(repr(c) for c in choices))
        return value

    return check


def _string_list(item_check: Optional[Callable[[Any], Any]] = None, desc: str = "a list of strings"):
    def check(value: Any) -> tuple:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(desc)
        if item_check:
            for item in value:
                item_check(item)
        return tuple(value)

    return check


def _fractions(value: Any) -> tuple:
    desc = "a list of fractions between 0 and 1, e.g. [0.5, 0.875]"
    if not isinstance(value, list) or not value:
        raise ValueError(desc)
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0 < item < 1:
            raise ValueError(desc)
        out.append(float(item))
    return tuple(sorted(out))


def _size(value: Any) -> int:
    return parse_size(value)


def _systemd_size(value: Any) -> str:
    desc = "a systemd size such as '96G', '512M', a percentage such as '50%', or 'infinity'"
    if isinstance(value, bool):
        raise ValueError(desc)
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and _SYSTEMD_SIZE_RE.match(value):
        return value
    raise ValueError(desc)


def _cpu_quota(value: Any) -> str:
    desc = "a percentage such as '400%' (100% is one CPU)"
    if isinstance(value, str):
        match = _PERCENT_RE.match(value)
        if match and float(match.group(1)) > 0:
            return value
    raise ValueError(desc)


def _tasks_max(value: Any) -> str:
    desc = "a whole number > 0, a percentage such as '10%', or 'infinity'"
    if isinstance(value, bool):
        raise ValueError(desc)
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and (value == "infinity" or _PERCENT_RE.match(value) or value.isdigit()):
        return value
    raise ValueError(desc)


def _signal_name(value: Any) -> str:
    import signal

    if not isinstance(value, str) or not value.startswith("SIG") or not hasattr(signal, value):
        raise ValueError("a signal name such as 'SIGUSR1'")
    return value


def _abs_or_rel_path(value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError("a file system path")
    return value


def _duration(unit: str, lo_open: bool = True) -> Callable[[Any], Any]:
    check = _number(0, lo_open=lo_open)

    def run(value: Any) -> float:
        try:
            return check(value)
        except ValueError:
            raise ValueError(f"a number of {_UNIT_WORD[unit]} {'>' if lo_open else '>='} 0") from None

    return run


# Per-user limit keys (allowed in ``defaults``, in each group and in each user override).
LIMIT_KEYS: dict[str, tuple[Kind, Any]] = {
    "max_gpu_equivalents": (Kind(_number(0, lo_open=True)), 1.0),
    "max_gpu_slots_per_container": (Kind(_integer(1)), 1),
    "allow_full_gpu": (Kind(_boolean, nullable=False), True),
    "max_cpus": (Kind(_number(0, lo_open=True)), 32.0),
    "memory": (Kind(_size), parse_size("32g")),
    "memory_swap": (Kind(_size), parse_size("32g")),
    "shm_size": (Kind(_size), parse_size("16g")),
    "pids_limit": (Kind(_integer(1)), 4096),
    "max_containers_per_user": (Kind(_integer(1)), 3),
    "max_runtime_h": (Kind(_duration("h")), 24.0),
    "idle_timeout_h": (Kind(_duration("h")), 0.5),
    "gpu_hold_after_stop_h": (Kind(_duration("h", lo_open=False)), 0.25),
    "container_hold_after_stop_h": (Kind(_duration("h", lo_open=False)), 0.5),
}

# Old names still read (with a deprecation warning). Duration aliases need a unit in the value.
LIMIT_ALIASES: dict[str, str] = {
    "max_gpu_slots": "max_gpu_equivalents",
    "max_gpus_per_user": "max_gpu_equivalents",
    "max_mig_instances": "max_gpu_equivalents",
    "max_gpus_per_container": "max_gpu_slots_per_container",
    "max_mig_per_container": "max_gpu_slots_per_container",
    "max_runtime": "max_runtime_h",
    "idle_timeout": "idle_timeout_h",
    "gpu_hold_after_stop": "gpu_hold_after_stop_h",
    "container_hold_after_stop": "container_hold_after_stop_h",
}
# Keys the old system documented but never read: accepted, warned about, ignored.
LIMIT_IGNORED = {"max_tasks": "set the per-user total as aggregate.tasks_max instead"}

AGGREGATE_KEYS: dict[str, tuple[Kind, Any]] = {
    "cpu_quota": (Kind(_cpu_quota), None),
    "memory_max": (Kind(_systemd_size), None),
    "memory_high": (Kind(_systemd_size), None),
    "tasks_max": (Kind(_tasks_max), None),
    "gpu_limit": (Kind(_number(0, lo_open=True)), None),
}

POLICY_KEYS: dict[str, tuple[Kind, Any]] = {
    "high_demand_threshold": (Kind(_number(0, lo_open=True, hi=1), nullable=False), 0.8),
    "high_demand_idle_reduction": (Kind(_number(0, lo_open=True, hi=1), nullable=False), 0.5),
    "gpu_idle_threshold": (Kind(_number(0, hi=100), nullable=False), 5.0),
    "cpu_idle_threshold": (Kind(_number(0), nullable=False), 2.0),
    "network_idle_threshold": (Kind(_integer(0), nullable=False), 1048576),
    "process_idle_threshold": (Kind(_integer(0), nullable=False), 0),
    "idle_detection_window": (Kind(_integer(1), nullable=False), 3),
    "grace_period_m": (Kind(_duration("m", lo_open=False), nullable=False), 30.0),
    "keepalive_max_duration_h": (Kind(_duration("h")), 24.0),
    "keepalive_file": (Kind(_string(desc="a path inside the container"), nullable=False), "/workspace/.keep-alive"),
    "sigterm_grace_s": (Kind(_duration("s", lo_open=False), nullable=False), 60.0),
    "created_container_timeout_m": (Kind(_duration("m")), 30.0),
    "idle_warning_fractions": (Kind(_fractions, nullable=False), (0.5, 0.875)),
    "runtime_warning_fractions": (Kind(_fractions, nullable=False), (0.75, 0.9)),
    "pre_stop_signal": (Kind(_signal_name), None),
    "pre_stop_lead_m": (Kind(_duration("m")), 10.0),
    "quota_alert_cooldown_h": (Kind(_duration("h"), nullable=False), 4.0),
}
POLICY_ALIASES = {
    "grace_period": "grace_period_m",
    "keepalive_max_duration": "keepalive_max_duration_h",
    "sigterm_grace_seconds": "sigterm_grace_s",
    "created_container_timeout": "created_container_timeout_m",
}
POLICY_IGNORED = {"gpu_hold_after_manual_stop_m": "stopped GPU holders follow gpu_hold_after_stop_h"}
POLICY_IGNORED["gpu_hold_after_manual_stop"] = POLICY_IGNORED["gpu_hold_after_manual_stop_m"]
# Aliases whose old key named its unit, so a bare number there is unambiguous.
_UNIT_IN_OLD_NAME = {"sigterm_grace_seconds"}

CONTAINER_TYPE_KEYS: dict[str, tuple[Kind, Any]] = {
    "idle_timeout_h": (Kind(_duration("h")), None),
    "max_runtime_h": (Kind(_duration("h")), None),
    "sigterm_grace_s": (Kind(_duration("s", lo_open=False), nullable=False), None),
}
CONTAINER_TYPE_ALIASES = {"idle_timeout": "idle_timeout_h", "max_runtime": "max_runtime_h"}
# The per-user limits a container type may also set; ``Limits.governing`` decides which value applies.
TYPE_LIMIT_KEYS = ("idle_timeout_h", "max_runtime_h")
TYPE_KEYS = (*TYPE_LIMIT_KEYS, "sigterm_grace_s")
RULE = (
    "The value that governs a container is the most specific one written down: an exemption (for that "
    "container, then for the user) > the user's override > groups.<group>.container_types.<type> > "
    "container_types.<type> > the group's value > defaults > ds01's built-in default. A null that is "
    "written down counts: it switches the rule off at that level."
)
CONTAINER_TYPE_ALIASES["sigterm_grace_seconds"] = "sigterm_grace_s"
CONTAINER_TYPE_IGNORED = dict.fromkeys(
    ("default_mig_count", "max_mig_per_container", "max_gpus"),
    "GPU caps per container type were removed; use max_gpu_slots_per_container",
)

_login_check = _string(identity.LOGIN_RE.pattern, "a login name (letters, digits, '.', '_', '@', '+', '-')")

# Flat sections: key -> (Kind, default). Features add their own sections here.
SECTIONS: dict[str, dict[str, tuple[Kind, Any]]] = {
    "enforcement": {
        "aggregate_limits": (Kind(_boolean, nullable=False), True),
        "cgroup_driver": (Kind(_choice("systemd", "cgroupfs"), nullable=False), "systemd"),
    },
    "gpu_allocation": {
        "backend": (Kind(_choice("nvml", "fake"), nullable=False), "nvml"),
        "topology": (Kind(_abs_or_rel_path), None),
        "lock_timeout_s": (Kind(_number(0, lo_open=True, hi=600), nullable=False), 10.0),
        "mapping_dir": (Kind(_abs_or_rel_path), None),
    },
    "monitoring": {
        "infrastructure_containers": (Kind(_string_list()), ()),
        "infrastructure_label": (Kind(_string(), nullable=False), "ds01.protected"),
        "exporter_bind": (Kind(_string(), nullable=False), "127.0.0.1"),
        "exporter_port": (Kind(_integer(1)), 9101),
    },
    "bare_metal_access": {
        "exempt_users": (Kind(_string_list(_login_check, "a list of login names")), ()),
        "admin_group": (Kind(_string(), nullable=False), "ds01-admin"),
        "default_grant_duration_h": (Kind(_duration("h"), nullable=False), 24.0),
        "state_dir": (Kind(_abs_or_rel_path), None),
    },
    "access_control": {
        "admin_users": (Kind(_string_list(_login_check, "a list of login names")), ()),
        "admin_group": (Kind(_string(), nullable=False), "ds01-admin"),
    },
    "paths": {
        "state_dir": (Kind(_abs_or_rel_path, nullable=False), "/var/lib/ds01"),
        "log_dir": (Kind(_abs_or_rel_path, nullable=False), "/var/log/ds01"),
        "run_dir": (Kind(_abs_or_rel_path, nullable=False), "/run/ds01"),
        "home_roots": (Kind(_string_list()), ("/home",)),
    },
}
SECTION_IGNORED: dict[str, dict[str, str]] = {
    "gpu_allocation": dict.fromkeys(
        (
            "slots_per_gpu",
            "mig_instances_per_gpu",
            "strategy",
            "allocation_method",
            "enable_mig",
            "mig_strategy",
            "mig_profile",
            "mig_gpus",
            "respect_reservations",
        ),
        "not used: the GPU inventory comes from NVML (or the fake topology)",
    ),
    "access_control": {"wrapper": "the docker wrapper is replaced by the ds01 gateway"},
    "bare_metal_access": {},
}
# Sections whose paths are resolved against the config file's directory.
_PATH_KEYS = {("paths", "state_dir"), ("paths", "log_dir"), ("paths", "run_dir"), ("gpu_allocation", "topology")}
_PATH_KEYS |= {("gpu_allocation", "mapping_dir"), ("bare_metal_access", "state_dir")}

TOP_LEVEL = (
    "defaults",
    "default_group",
    "groups",
    "policies",
    "container_types",
    "user_overrides",
    *SECTIONS.keys(),
)

GROUP_EXTRA = ("members", "aggregate", "policies", "description", "container_types")
OVERRIDE_EXTRA = ("aggregate", "policies", "slice_name", "note")
EXEMPTION_KEYS = (
    "username",
    "container",
    "category",
    "exempt_from",
    "reason",
    "approved_by",
    "approved_on",
    "expires_on",
)


def register_section(name: str, keys: dict[str, tuple[Kind, Any]]) -> None:
    """Let a feature declare its own flat section (e.g. ``gateway``) before configs are loaded."""
    SECTIONS[name] = keys
    global TOP_LEVEL
    if name not in TOP_LEVEL:
        TOP_LEVEL = (*TOP_LEVEL, name)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """Per-user totals enforced by the user's systemd slice (``gpu_limit`` by the allocator)."""

    cpu_quota: Optional[str] = None
    memory_max: Optional[str] = None
    memory_high: Optional[str] = None
    tasks_max: Optional[str] = None
    gpu_limit: Optional[float] = None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in AGGREGATE_KEYS}


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ContainerTypePolicy:
    """Lifecycle values for one container type; None means "use the user's own value"."""

    idle_timeout_h: Optional[float] = None
    max_runtime_h: Optional[float] = None
    sigterm_grace_s: Optional[float] = None
    # Which keys the config set explicitly (so an explicit null means "exempt").
    explicit: frozenset = frozenset()

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in CONTAINER_TYPE_KEYS}


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
# YAML reading with line numbers
# --------------------------------------------------------------------------------------------


class _Reader:
    """Collects problems and warnings while reading one directory's files."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.lines: dict[tuple[str, tuple], int] = {}
        self.texts: dict[str, str] = {}  # file -> the text that was validated (for the last good config)

    def problem(self, file: str, path: tuple, message: str) -> None:
        self.problems.append(Problem(file, _dotted(path), message, self.line(file, path)))

    def warn(self, file: str, path: tuple, message: str) -> None:
        line = self.line(file, path)
        where = f"{file}:{line}" if line else file
        self.warnings.append(f"{where}: {_dotted(path)}: {message}")

    def line(self, file: str, path: tuple) -> Optional[int]:
        while path:
            if (file, path) in self.lines:
                return self.lines[(file, path)]
            path = path[:-1]
        return None

    def load_yaml(self, file: str, required: bool) -> Any:
        try:
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            if required:
                self.problems.append(Problem(file, "", "file not found"))
            return None
        except PermissionError:
            self.problems.append(
                Problem(file, "", "cannot be read (permission denied); it must be readable (mode 0644)")
            )
            return None
        except IsADirectoryError:
            self.problems.append(Problem(file, "", "is a directory, not a YAML file"))
            return None
        except OSError as exc:
            self.problems.append(Problem(file, "", f"cannot be read: {exc.strerror}"))
            return None
        except UnicodeDecodeError:
            self.problems.append(Problem(file, "", "is not UTF-8 text"))
            return None
        self.texts[file] = text
        if not HAS_YAML:
            self.problems.append(Problem(file, "", "PyYAML is not installed in this Python"))
            return None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            self.problems.append(Problem(file, "", f"is not valid YAML: {problem}", line))
            return None
        if node is not None:
            self._index(file, node, ())
        return data

    def _index(self, file: str, node: Any, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, value_node in node.value:
                key = key_node.value
                sub = (*path, key)
                if key in seen:
                    self.problems.append(
                        Problem(
                            file,
                            _dotted(sub),
                            "duplicate key (YAML keeps only the last one)",
                            key_node.start_mark.line + 1,
                        )
                    )
                seen.add(key)
                self.lines.setdefault((file, sub), key_node.start_mark.line + 1)
                self._index(file, value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                sub = (*path, index)
                self.lines[(file, sub)] = item.start_mark.line + 1
                self._index(file, item, sub)


def _dotted(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _did_you_mean(key: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_section(reader: _Reader, file: str, path: tuple, value: Any) -> dict:
    """A section that is empty or comments-only (YAML null) is ``{}``; anything else must be a mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        reader.problem(file, path, f"got {_show(value)}, expected a mapping of keys to values")
        return {}
    return value


def _check_keys(
    reader: _Reader,
    file: str,
    path: tuple,
    raw: dict,
    keys: Mapping[str, tuple[Kind, Any]],
    aliases: Mapping[str, str] = MappingProxyType({}),
    ignored: Mapping[str, str] = MappingProxyType({}),
    extra: Iterable[str] = (),
) -> dict:
    """Validate ``raw`` against ``keys``; return {canonical key: normalised value} for keys present."""
    out: dict = {}
    extra = tuple(extra)
    for key, value in raw.items():
        sub = (*path, key)
        if key in extra:
            continue
        if not isinstance(key, str):
            reader.problem(file, sub, f"key {_show(key)} is not a name")
            continue
        if key in ignored:
            reader.warn(file, sub, f"is deprecated and ignored: {ignored[key]}")
            continue
        canonical = aliases.get(key)
        if canonical is not None:
            if canonical in raw:
                reader.problem(
                    file, sub, f"both '{canonical}' and its old name '{key}' are set; keep only '{canonical}'"
                )
                continue
            value = _convert_alias(reader, file, sub, key, canonical, value)
            if value is _INVALID:
                continue
            reader.warn(file, sub, f"is deprecated; use '{canonical}' (read as {canonical}: {_show(value)})")
            key = canonical
        elif key not in keys:
            reader.problem(file, sub, "unknown key" + _did_you_mean(key, [*keys, *extra]))
            continue
        kind, _default = keys[key]
        if value is None or (value == "unlimited" and kind.nullable):
            if not kind.nullable:
                reader.problem(file, sub, "must be set (null is not allowed here)")
                continue
            out[key] = None
            continue
        try:
            out[key] = kind.check(value)
        except ValueError as exc:
            reader.problem(file, sub, f"got {_show(value)}, expected {exc}{kind.expected_suffix()}")
    return out


_INVALID = object()


def _convert_alias(reader: _Reader, file: str, path: tuple, old: str, new: str, value: Any) -> Any:
    """Old duration keys carry no unit in their name, so the value must carry one."""
    unit = new.rsplit("_", 1)[-1] if new.endswith(("_h", "_m", "_s")) else None
    if unit is None or value is None or old in _UNIT_IN_OLD_NAME:
        return value
    if isinstance(value, str) and value != "unlimited":
        try:
            seconds = parse_duration_text(value)
        except ValueError:
            reader.problem(
                file, path, f"got {_show(value)}, expected a duration with a unit such as '24h', '30m' or '60s'"
            )
            return _INVALID
        return round(seconds / _SECONDS[unit], 6)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        reader.problem(
            file,
            path,
            f"got {value!r}: a bare number is ambiguous here (the old system read it as seconds); "
            f"write '{new}: {value}' if you mean {_UNIT_WORD[unit]}, or give a unit such as '{value}h'",
        )
        return _INVALID
    return value


def _parse_when(value: Any) -> dt.datetime:
    """YAML date/datetime or ISO-8601 text (``Z`` accepted) → aware UTC datetime."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        when = dt.datetime.fromisoformat(text)
    else:
        raise ValueError
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


# --------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------


@dataclass
class _Group:
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
        self.groups: dict[str, _Group] = {}
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

    def _merge_aggregate(self, group: _Group, override: Optional[dict]) -> tuple[Optional[Aggregate], dict]:
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


def load_config(path: str, base_dir: Optional[str] = None) -> Config:
    """Read and validate ``path`` and its companion files; ``ConfigError`` lists every problem.

    ``base_dir`` (default: the file's directory) is where relative paths in it resolve (``load_last_good``).
    """
    reader = _Reader()
    config = Config(path, base_dir)
    file = config.path
    raw = reader.load_yaml(file, required=True)
    config.files.append(file)
    if reader.problems:
        raise ConfigError(reader.problems)
    top = _as_section(reader, file, (), raw)
    if reader.problems:  # not a mapping: nothing below can be read
        raise ConfigError(reader.problems)
    for key in top:
        if key not in TOP_LEVEL:
            reader.problem(file, (key,), "unknown top-level key" + _did_you_mean(key, TOP_LEVEL))

    _read_sections(reader, config, file, top)
    config.defaults = _read_limits(
        reader, file, ("defaults",), _as_section(reader, file, ("defaults",), top.get("defaults")), extra=("aggregate",)
    )
    defaults_raw = top.get("defaults") if isinstance(top.get("defaults"), dict) else {}
    if "aggregate" in defaults_raw:
        config.defaults_aggregate = _read_aggregate(reader, file, ("defaults", "aggregate"), defaults_raw["aggregate"])
    policies_raw = _as_section(reader, file, ("policies",), top.get("policies"))
    policies = _check_keys(reader, file, ("policies",), policies_raw, POLICY_KEYS, POLICY_ALIASES, POLICY_IGNORED)
    config.policies = {k: policies.get(k, d) for k, (_kind, d) in POLICY_KEYS.items()}
    config.policies_set = frozenset(policies)
    _read_container_types(
        reader, config, file, _as_section(reader, file, ("container_types",), top.get("container_types"))
    )
    _read_groups(reader, config, file, _as_section(reader, file, ("groups",), top.get("groups")))
    _read_default_group(reader, config, file, top)
    _read_members(reader, config)
    inline = _as_section(reader, file, ("user_overrides",), top.get("user_overrides"))
    _read_overrides(reader, config, file, ("user_overrides",), inline)
    overrides_file = os.path.join(config.directory, OVERRIDES_FILE)
    from_file = reader.load_yaml(overrides_file, required=False)
    if os.path.exists(overrides_file):
        config.files.append(overrides_file)
    _read_overrides(reader, config, overrides_file, (), _as_section(reader, overrides_file, (), from_file))
    _read_exemptions(reader, config)
    for sentence in config.slice_problems():
        reader.problems.append(Problem(os.path.join(config.directory, MEMBERS_DIR), "", sentence))
    if reader.problems:
        raise ConfigError(reader.problems)
    if not config.sections["enforcement"]["aggregate_limits"]:
        reader.warn(
            file,
            ("enforcement", "aggregate_limits"),
            "is false: user slices keep accounting but get no caps (no CPUQuota, MemoryMax, MemoryHigh or TasksMax); "
            "aggregate.gpu_limit still counts towards the GPU quota. Set it to true to cap each user's total",
        )
    config.warnings = reader.warnings
    config.texts = {file: reader.texts[file] for file in config.files if file in reader.texts}
    return config


def _read_sections(reader: _Reader, config: Config, file: str, top: dict) -> None:
    for name, keys in SECTIONS.items():
        raw = _as_section(reader, file, (name,), top.get(name))
        values = _check_keys(reader, file, (name,), raw, keys, ignored=SECTION_IGNORED.get(name, {}))
        section = {k: values.get(k, d) for k, (_kind, d) in keys.items()}
        for sect, key in _PATH_KEYS:
            if sect == name and isinstance(section.get(key), str):
                section[key] = os.path.normpath(os.path.join(config.base_dir, section[key]))
        config.sections[name] = section
    paths = config.sections["paths"]
    if config.sections["bare_metal_access"].get("state_dir") is None:
        config.sections["bare_metal_access"]["state_dir"] = os.path.join(paths["state_dir"], "bare-metal-grants")
    if config.sections["gpu_allocation"].get("mapping_dir") is None:
        config.sections["gpu_allocation"]["mapping_dir"] = os.path.join(paths["state_dir"], "dcgm-job-mapping")
    gpu = config.sections["gpu_allocation"]
    if gpu["backend"] == "fake" and not gpu["topology"]:
        reader.problem(file, ("gpu_allocation", "topology"), "must name a topology file when backend is 'fake'")


def _read_limits(reader: _Reader, file: str, path: tuple, raw: dict, extra: Iterable[str] = ()) -> dict:
    return _check_keys(reader, file, path, raw, LIMIT_KEYS, LIMIT_ALIASES, LIMIT_IGNORED, extra=extra)


def _read_aggregate(reader: _Reader, file: str, path: tuple, raw: Any) -> Optional[dict]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        reader.problem(file, path, f"got {_show(raw)}, expected a mapping (cpu_quota, memory_max, ...) or null")
        return None
    values = _check_keys(reader, file, path, raw, AGGREGATE_KEYS)
    high, top = values.get("memory_high"), values.get("memory_max")
    if high and top and high != "infinity" and top != "infinity" and not high.endswith("%") and not top.endswith("%"):
        try:
            if parse_size(high) > parse_size(top):
                reader.problem(
                    file, (*path, "memory_high"), f"{high} is above memory_max {top}; it must be <= memory_max"
                )
        except ValueError:
            pass
    return values


def _read_container_types(reader: _Reader, config: Config, file: str, raw: dict) -> None:
    config.container_types.update(_read_type_table(reader, file, ("container_types",), raw))


def _read_type_table(reader: _Reader, file: str, where: tuple, raw: Any) -> dict:
    """``container_types`` (top level, or inside a group): type -> ContainerTypePolicy."""
    table: dict = {}
    for name, body in _as_section(reader, file, where, raw).items():
        path = (*where, name)
        if name not in CONTAINER_TYPES:
            reader.problem(file, path, "unknown container type" + _did_you_mean(name, CONTAINER_TYPES))
            continue
        body = _as_section(reader, file, path, body)
        values = _check_keys(
            reader, file, path, body, CONTAINER_TYPE_KEYS, CONTAINER_TYPE_ALIASES, CONTAINER_TYPE_IGNORED
        )
        table[name] = ContainerTypePolicy(explicit=frozenset(values), **values)
    return table


def _read_groups(reader: _Reader, config: Config, file: str, raw: dict) -> None:
    if not raw:
        reader.problem(file, ("groups",), "must define at least one group (e.g. student)")
    for name, body in raw.items():
        path = ("groups", name)
        if not isinstance(name, str) or not GROUP_NAME_RE.match(name) or name == ARCHIVED_GROUP:
            reader.problem(
                file,
                path,
                "group names are lower-case letters, digits and '_' (no '-': it would split the slice name)"
                + ("; 'archived' is reserved for archived.members" if name == ARCHIVED_GROUP else ""),
            )
            continue
        body = _as_section(reader, file, path, body)
        limits = _read_limits(reader, file, path, body, extra=GROUP_EXTRA)
        aggregate_set = "aggregate" in body
        aggregate = (
            _read_aggregate(reader, file, (*path, "aggregate"), body.get("aggregate")) if aggregate_set else None
        )
        pol_raw = _as_section(reader, file, (*path, "policies"), body.get("policies"))
        pol = _check_keys(reader, file, (*path, "policies"), pol_raw, POLICY_KEYS, POLICY_ALIASES, POLICY_IGNORED)
        members = body.get("members")
        inline: list = []
        if members is not None:
            if not isinstance(members, list):
                reader.problem(file, (*path, "members"), f"got {_show(members)}, expected a list of login names")
            else:
                for index, login in enumerate(members):
                    if not identity.valid_login(login):
                        reader.problem(file, (*path, "members", index), f"got {_show(login)}, expected a login name")
                    else:
                        inline.append(login)
        types = _read_type_table(reader, file, (*path, "container_types"), body.get("container_types"))
        config.groups[name] = _Group(name, limits, aggregate, aggregate_set, pol, inline, types)


def _read_default_group(reader: _Reader, config: Config, file: str, top: dict) -> None:
    value = top.get("default_group", "student")
    if not isinstance(value, str) or value not in config.groups:
        if config.groups:
            reader.problem(
                file,
                ("default_group",),
                f"got {_show(value)}, expected one of the defined groups: " + ", ".join(sorted(config.groups)),
            )
        return
    config.default_group = value


def _read_members(reader: _Reader, config: Config) -> None:
    where: dict[str, tuple[str, str, Optional[int]]] = {}

    def add(login: str, group: str, file: str, line: Optional[int]) -> None:
        if login in where and where[login][0] != group:
            first_group, first_file, first_line = where[login]
            first = f"{first_file}:{first_line}" if first_line else first_file
            reader.problems.append(
                Problem(
                    file,
                    login,
                    f"is listed in group '{group}' and also in group '{first_group}' ({first}); "
                    "a login belongs to one group: remove one of the entries",
                    line,
                )
            )
            return
        where.setdefault(login, (group, file, line))

    for name, group in config.groups.items():
        for index, login in enumerate(group.members):
            add(login, name, config.path, reader.line(config.path, ("groups", name, "members", index)))

    members_dir = os.path.join(config.directory, MEMBERS_DIR)
    try:
        entries = sorted(os.listdir(members_dir))
    except FileNotFoundError:
        entries = []
    except OSError as exc:
        reader.problems.append(Problem(members_dir, "", f"cannot be listed: {exc.strerror}"))
        entries = []
    archived: set = set()
    for entry in entries:
        if not entry.endswith(".members"):
            continue
        group = entry[: -len(".members")]
        file = os.path.join(members_dir, entry)
        if group != ARCHIVED_GROUP and group not in config.groups:
            reader.problems.append(
                Problem(
                    file,
                    "",
                    f"names group '{group}', which resource-limits.yaml does not define"
                    + _did_you_mean(group, config.groups)
                    + " (define the group, or rename/remove the file)",
                )
            )
            continue
        try:
            with open(file, encoding="utf-8") as handle:
                reader.texts[file] = handle.read()
                lines = reader.texts[file].splitlines()
        except PermissionError:
            reader.problems.append(
                Problem(file, "", "cannot be read (permission denied); members files must be readable (mode 0644)")
            )
            continue
        except IsADirectoryError:
            reader.problems.append(Problem(file, "", "is a directory; a members file lists one login per line"))
            continue
        except OSError as exc:
            reader.problems.append(Problem(file, "", f"cannot be read: {exc.strerror}"))
            continue
        except UnicodeDecodeError:
            reader.problems.append(Problem(file, "", "is not UTF-8 text"))
            continue
        config.files.append(file)
        for number, text in enumerate(lines, start=1):
            login = text.split("#", 1)[0].strip()
            if not login:
                continue
            if not identity.valid_login(login):
                reader.problems.append(Problem(file, "", f"line {_show(login)} is not a login name", number))
                continue
            if group == ARCHIVED_GROUP:
                archived.add(login)
            else:
                add(login, group, file, number)
    config.members = {login: info[0] for login, info in where.items()}
    config.archived = frozenset(archived)


def _read_overrides(reader: _Reader, config: Config, file: str, path: tuple, raw: dict) -> None:
    for login, body in raw.items():
        sub = (*path, login)
        if not identity.valid_login(login):
            reader.problem(file, sub, f"{_show(login)} is not a login name")
            continue
        body = _as_section(reader, file, sub, body)
        limits = _read_limits(reader, file, sub, body, extra=OVERRIDE_EXTRA)
        entry: dict = {"limits": limits}
        if "aggregate" in body:
            entry["aggregate"] = _read_aggregate(reader, file, (*sub, "aggregate"), body["aggregate"])
        pol_raw = _as_section(reader, file, (*sub, "policies"), body.get("policies"))
        entry["policies"] = _check_keys(
            reader, file, (*sub, "policies"), pol_raw, POLICY_KEYS, POLICY_ALIASES, POLICY_IGNORED
        )
        if "slice_name" in body:
            name = body["slice_name"]
            if (
                not isinstance(name, str)
                or identity.sanitize_username(name) != name
                or len(name) > identity.SLICE_NAME_MAX
            ):
                reader.problem(
                    file, (*sub, "slice_name"), f"got {_show(name)}, expected letters, digits and '_' (at most 32)"
                )
            else:
                entry["slice_name"] = name
        config.overrides[login] = entry  # file entries replace inline ones of the same login


def _read_exemptions(reader: _Reader, config: Config) -> None:
    file = os.path.join(config.directory, EXEMPTIONS_FILE)
    data = reader.load_yaml(file, required=False)
    if data is None:
        return
    config.files.append(file)
    top = _as_section(reader, file, (), data)
    for key in top:
        if key != "exemptions":
            reader.problem(file, (key,), "unknown key" + _did_you_mean(key, ["exemptions"]))
    items = top.get("exemptions") or []
    if not isinstance(items, list):
        reader.problem(file, ("exemptions",), "expected a list of exemptions")
        return
    for index, item in enumerate(items):
        path = ("exemptions", index)
        if not isinstance(item, dict):
            reader.problem(file, path, f"got {_show(item)}, expected a mapping with username, exempt_from, expires_on")
            continue
        ok = True
        for key in item:
            if key not in EXEMPTION_KEYS:
                reader.problem(file, (*path, key), "unknown key" + _did_you_mean(key, EXEMPTION_KEYS))
                ok = False
        username = item.get("username")
        if not identity.valid_login(username):
            reader.problem(file, (*path, "username"), f"got {_show(username)}, expected a login name")
            ok = False
        exempt_from = item.get("exempt_from")
        names: set = set()
        if not isinstance(exempt_from, list) or not exempt_from:
            reader.problem(file, (*path, "exempt_from"), "expected a list such as [idle_timeout_h, max_runtime_h]")
            ok = False
        else:
            for pos, what in enumerate(exempt_from):
                canonical = LIMIT_ALIASES.get(what, what)
                if canonical not in EXEMPTABLE:
                    reader.problem(
                        file,
                        (*path, "exempt_from", pos),
                        f"got {_show(what)}, expected one of {', '.join(EXEMPTABLE)}",
                    )
                    ok = False
                names.add(canonical)
        expires = item.get("expires_on")
        when = None
        if expires is not None:
            try:
                when = _parse_when(expires)
            except (ValueError, TypeError):
                reader.problem(
                    file,
                    (*path, "expires_on"),
                    f"got {_show(expires)}, expected an ISO date or time such as 2026-12-31T23:59:59Z, "
                    "or null for permanent",
                )
                ok = False
        container = item.get("container")
        if container is not None and not (isinstance(container, str) and container):
            reader.problem(file, (*path, "container"), "expected a container name")
            ok = False
        if ok:
            config.exemptions.append(
                Exemption(
                    username=username,
                    exempt_from=frozenset(names),
                    expires_on=when,
                    container=container,
                    category=_opt_str(item.get("category")),
                    reason=_opt_str(item.get("reason")),
                    approved_by=_opt_str(item.get("approved_by")),
                    approved_on=_opt_str(item.get("approved_on")),
                )
            )


def _opt_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)


# --------------------------------------------------------------------------------------------
# The last good config, kept on disk (see the module docstring)
# --------------------------------------------------------------------------------------------

_MEMBERS_NAME_RE = re.compile(r"^" + MEMBERS_DIR + r"/[A-Za-z0-9_][A-Za-z0-9_.-]*\.members$")


def last_good_path(state_dir: str) -> str:
    return os.path.join(state_dir, LAST_GOOD_SUBDIR, LAST_GOOD_FILE)


def save_last_good(config: Config) -> bool:
    """Keep ``config``'s validated files as the last good config; True when the bundle was (re)written.

    Best effort and quiet: a process that may not write the state directory (a user's command), a config that
    came from the bundle itself, or an unchanged bundle writes nothing; a failure is logged at info level.
    """
    if config.last_good is not None or not config.texts:
        return False
    state_dir = config.paths.state_dir
    if not os.path.isdir(state_dir) or not os.access(state_dir, os.W_OK):
        return False
    files = {os.path.relpath(file, config.directory): text for file, text in config.texts.items()}
    digest = hashlib.sha256(json.dumps([config.path, config.base_dir, files], sort_keys=True).encode()).hexdigest()
    target = last_good_path(state_dir)
    try:
        with open(target, encoding="utf-8") as handle:
            saved = json.load(handle)
        if isinstance(saved, dict) and saved.get("digest") == digest:
            return False
    except (OSError, ValueError):
        pass  # none yet, or damaged: write it
    private = False
    for file in config.texts:
        try:
            private = private or not os.stat(file).st_mode & stat.S_IROTH
        except OSError:
            private = True
    bundle = {
        "schema_version": "1",
        "config_path": config.path,
        "base_dir": config.base_dir,
        "main": os.path.basename(config.path),
        "saved_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "digest": digest,
        "files": files,
    }
    try:
        fsutil.atomic_write_json(target, bundle, mode=0o600 if private else 0o644)
    except OSError as exc:
        log.info("cannot keep the last good configuration in %s: %s", target, exc)
        return False
    return True


def _paths_block(text: str) -> Any:
    """The top-level ``paths:`` block of a file whose YAML as a whole does not parse, parsed alone."""
    block: list = []
    for line in text.splitlines():
        if not block:
            if re.match(r"^paths\s*:", line):
                block.append(line)
            continue
        if line[:1] not in ("", " ", "\t", "#"):
            break
        block.append(line)
    try:
        return yaml.safe_load("\n".join(block)) if block else None
    except yaml.YAMLError:
        return None


def _lenient_state_dir(path: str) -> Optional[str]:
    """``paths.state_dir`` of a config file that may be broken, when it can still be read."""
    if not HAS_YAML:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = _paths_block(text)
    paths = data.get("paths") if isinstance(data, dict) else None
    state_dir = paths.get("state_dir") if isinstance(paths, dict) else None
    if not isinstance(state_dir, str) or not state_dir:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), state_dir))


def last_good_candidates(path: str) -> list[str]:
    """Where the last good config of ``path`` may be: its own ``paths.state_dir``, then the default state dir."""
    found: list = []
    for state_dir in (_lenient_state_dir(path), DEFAULT_STATE_DIR):
        if state_dir and state_dir not in found:
            found.append(state_dir)
    return found


def _trusted(bundle_path: str) -> bool:
    """The bundle and its directory belong to root (or the caller) and no group or other may write them."""
    for name in (os.path.dirname(bundle_path), bundle_path):
        st = os.stat(name)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def _load_bundle(bundle_path: str, bundle: Mapping[str, Any]) -> Config:
    files, main, base_dir = bundle.get("files"), bundle.get("main"), bundle.get("base_dir")
    if not (isinstance(files, dict) and isinstance(main, str) and main in files and isinstance(base_dir, str)):
        raise ConfigError([Problem(bundle_path, "", "is not a ds01 last-good bundle")])
    with tempfile.TemporaryDirectory(prefix="ds01-last-good-") as tmp:
        for name, text in files.items():
            allowed = name in (main, OVERRIDES_FILE, EXEMPTIONS_FILE) or _MEMBERS_NAME_RE.match(name)
            if not allowed or "/" in main or not isinstance(text, str):
                raise ConfigError([Problem(bundle_path, "", f"holds an unexpected file {name!r}")])
            target = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as handle:
                handle.write(text)
        return load_config(os.path.join(tmp, main), base_dir=base_dir)


def load_last_good(path: str) -> Optional[Config]:
    """The last good config saved for ``path``, validated again; None when there is none to use."""
    want = os.path.abspath(path)
    for state_dir in last_good_candidates(want):
        bundle_path = last_good_path(state_dir)
        try:
            if not _trusted(bundle_path):
                log.warning("ignoring %s: it must belong to root and be writable by no one else", bundle_path)
                continue
            with open(bundle_path, encoding="utf-8") as handle:
                bundle = json.load(handle)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("the last good configuration %s cannot be read: %s", bundle_path, exc)
            continue
        if not isinstance(bundle, dict) or bundle.get("config_path") != want:
            continue
        try:
            config = _load_bundle(bundle_path, bundle)
        except (ConfigError, OSError) as exc:
            why = exc.problems[0] if isinstance(exc, ConfigError) and exc.problems else exc
            log.warning("the last good configuration %s cannot be used: %s", bundle_path, why)
            continue
        config.path, config.directory, config.files = bundle_path, os.path.dirname(want), [bundle_path]
        config.last_good = {"path": bundle_path, "saved_at": bundle.get("saved_at"), "config_path": want}
        return config
    return None


def fallback_warning(path: str, error: ConfigError, config: Config) -> str:
    """One line: which file is broken and how, and which last good config is used instead."""
    first = str(error.problems[0]) if error.problems else "it cannot be used"
    more = len(error.problems) - 1
    extra = f" (and {more} more problem{'s' if more != 1 else ''})" if more > 0 else ""
    saved = (config.last_good or {}).get("saved_at") or "earlier"
    line = (
        f"the configuration {os.path.abspath(path)} is invalid: {first}{extra}; using the last good configuration, "
        f"saved {saved} in {config.path}. Fix the file, then run `ds01 config check`."
    )
    return " ".join(line.split())


# --------------------------------------------------------------------------------------------
# Last good config for long-running services
# --------------------------------------------------------------------------------------------


class ConfigStore:
    """Reloads the config when any of its files change; keeps the last good one on errors.

    ``get()`` returns the current Config or None when none ever loaded (callers then use
    ``safe_limits``). ``resolve(login)`` does that for them. A broken file is logged once per
    change, never raised: a fault in the config must not block work it does not concern.
    """

    def __init__(self, path: str, min_interval_s: float = 2.0) -> None:
        self.path = path
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._config: Optional[Config] = None
        self._stamp: Optional[tuple] = None
        self._checked_at = -1e18
        self.last_error: Optional[ConfigError] = None

    def _fingerprint(self) -> tuple:
        directory = os.path.dirname(os.path.abspath(self.path))
        files = [self.path, os.path.join(directory, OVERRIDES_FILE), os.path.join(directory, EXEMPTIONS_FILE)]
        members = os.path.join(directory, MEMBERS_DIR)
        try:
            files += [os.path.join(members, f) for f in sorted(os.listdir(members))]
        except OSError:
            pass
        stamp = []
        for name in files:
            try:
                st = os.stat(name)
                stamp.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamp.append((name, None))
        return tuple(stamp)

    def get(self, now: Optional[float] = None) -> Optional[Config]:
        import time

        now = time.monotonic() if now is None else now
        with self._lock:
            if now - self._checked_at < self.min_interval_s and self._config is not None:
                return self._config
            self._checked_at = now
            stamp = self._fingerprint()
            if stamp == self._stamp:
                return self._config
            self._stamp = stamp
            try:
                self._config = load_config(self.path)
                self.last_error = None
            except ConfigError as exc:
                self.last_error = exc
                if self._config is None:  # none in this process yet (e.g. a restart): the one kept on disk
                    self._config = load_last_good(self.path)
                if self._config is not None and self._config.last_good is not None:
                    log.error("%s", fallback_warning(self.path, exc, self._config))
                else:
                    log.error("keeping the last good configuration: %s", exc.render())
            else:
                save_last_good(self._config)
            return self._config

    def resolve(self, login: str) -> Limits:
        config = self.get()
        if config is None:
            return safe_limits(login)
        return config.resolve(login)


# Feature sections declared beside their feature (registered on import, before any config loads).
from . import images as _images_schema  # noqa: E402, F401
from .gateway import schema as _gateway_schema  # noqa: E402, F401
