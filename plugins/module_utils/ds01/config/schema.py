"""The schema of resource-limits.yaml and its companions: every key, its kind, its default and its old names.

One table per block (``LIMIT_KEYS``, ``AGGREGATE_KEYS``, ``POLICY_KEYS``, ``CONTAINER_TYPE_KEYS``) and one per
flat section (``SECTIONS``, the feature sections from ``features`` included). ``load`` checks a file against
these tables; ``model`` builds its records from them.
"""

from __future__ import annotations

import re
from typing import Any

from .. import identity
from .features import FEATURE_SECTIONS
from .units import (
    Kind,
    boolean,
    choice,
    cpu_quota,
    duration,
    file_path,
    fractions,
    integer,
    number,
    parse_size,
    signal_name,
    size,
    string,
    string_list,
    systemd_size,
    tasks_max,
)

MEMBERS_DIR = "groups"
OVERRIDES_FILE = "user-overrides.yaml"
EXEMPTIONS_FILE = "lifecycle-exemptions.yaml"
ARCHIVED_GROUP = "archived"

GROUP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
CONTAINER_TYPES = ("devcontainer", "compose", "docker", "ds01", "api", "unknown")
EXEMPTABLE = ("idle_timeout_h", "max_runtime_h", "container_hold_after_stop_h", "gpu_hold_after_stop_h")

# Per-user limit keys (allowed in ``defaults``, in each group and in each user override).
LIMIT_KEYS: dict[str, tuple[Kind, Any]] = {
    "max_gpu_equivalents": (Kind(number(0, lo_open=True)), 1.0),
    "max_gpu_slots_per_container": (Kind(integer(1)), 1),
    "allow_full_gpu": (Kind(boolean, nullable=False), True),
    "max_cpus": (Kind(number(0, lo_open=True)), 32.0),
    "memory": (Kind(size), parse_size("32g")),
    "memory_swap": (Kind(size), parse_size("32g")),
    "shm_size": (Kind(size), parse_size("16g")),
    "pids_limit": (Kind(integer(1)), 4096),
    "max_containers_per_user": (Kind(integer(1)), 3),
    "max_runtime_h": (Kind(duration("h")), 24.0),
    "idle_timeout_h": (Kind(duration("h")), 0.5),
    "gpu_hold_after_stop_h": (Kind(duration("h", lo_open=False)), 0.25),
    "container_hold_after_stop_h": (Kind(duration("h", lo_open=False)), 0.5),
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
    "cpu_quota": (Kind(cpu_quota), None),
    "memory_max": (Kind(systemd_size), None),
    "memory_high": (Kind(systemd_size), None),
    "tasks_max": (Kind(tasks_max), None),
    "gpu_limit": (Kind(number(0, lo_open=True)), None),
}

POLICY_KEYS: dict[str, tuple[Kind, Any]] = {
    "high_demand_threshold": (Kind(number(0, lo_open=True, hi=1), nullable=False), 0.8),
    "high_demand_idle_reduction": (Kind(number(0, lo_open=True, hi=1), nullable=False), 0.5),
    "gpu_idle_threshold": (Kind(number(0, hi=100), nullable=False), 5.0),
    "cpu_idle_threshold": (Kind(number(0), nullable=False), 2.0),
    "network_idle_threshold": (Kind(integer(0), nullable=False), 1048576),
    "process_idle_threshold": (Kind(integer(0), nullable=False), 0),
    "idle_detection_window": (Kind(integer(1), nullable=False), 3),
    "grace_period_m": (Kind(duration("m", lo_open=False), nullable=False), 30.0),
    "keepalive_max_duration_h": (Kind(duration("h")), 24.0),
    "keepalive_file": (Kind(string(desc="a path inside the container"), nullable=False), "/workspace/.keep-alive"),
    "sigterm_grace_s": (Kind(duration("s", lo_open=False), nullable=False), 60.0),
    "created_container_timeout_m": (Kind(duration("m")), 30.0),
    "idle_warning_fractions": (Kind(fractions, nullable=False), (0.5, 0.875)),
    "runtime_warning_fractions": (Kind(fractions, nullable=False), (0.75, 0.9)),
    "pre_stop_signal": (Kind(signal_name), None),
    "pre_stop_lead_m": (Kind(duration("m")), 10.0),
    "quota_alert_cooldown_h": (Kind(duration("h"), nullable=False), 4.0),
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
UNIT_IN_OLD_NAME = {"sigterm_grace_seconds"}

CONTAINER_TYPE_KEYS: dict[str, tuple[Kind, Any]] = {
    "idle_timeout_h": (Kind(duration("h")), None),
    "max_runtime_h": (Kind(duration("h")), None),
    "sigterm_grace_s": (Kind(duration("s", lo_open=False), nullable=False), None),
}
CONTAINER_TYPE_ALIASES = {"idle_timeout": "idle_timeout_h", "max_runtime": "max_runtime_h"}
# The per-user limits a container type may also set; ``Limits.governing`` decides which value applies.
TYPE_LIMIT_KEYS = ("idle_timeout_h", "max_runtime_h")
TYPE_KEYS = (*TYPE_LIMIT_KEYS, "sigterm_grace_s")
CONTAINER_TYPE_ALIASES["sigterm_grace_seconds"] = "sigterm_grace_s"
CONTAINER_TYPE_IGNORED = dict.fromkeys(
    ("default_mig_count", "max_mig_per_container", "max_gpus"),
    "GPU caps per container type were removed; use max_gpu_slots_per_container",
)

_login_check = string(identity.LOGIN_RE.pattern, "a login name (letters, digits, '.', '_', '@', '+', '-')")

# Flat sections: key -> (Kind, default); the feature sections (``features``) follow the core ones.
SECTIONS: dict[str, dict[str, tuple[Kind, Any]]] = {
    "enforcement": {
        "aggregate_limits": (Kind(boolean, nullable=False), True),
        "cgroup_driver": (Kind(choice("systemd", "cgroupfs"), nullable=False), "systemd"),
    },
    "gpu_allocation": {
        "backend": (Kind(choice("nvml", "fake"), nullable=False), "nvml"),
        "topology": (Kind(file_path), None),
        "lock_timeout_s": (Kind(number(0, lo_open=True, hi=600), nullable=False), 10.0),
        "mapping_dir": (Kind(file_path), None),
    },
    "monitoring": {
        "infrastructure_containers": (Kind(string_list()), ()),
        "infrastructure_label": (Kind(string(), nullable=False), "ds01.protected"),
        "exporter_bind": (Kind(string(), nullable=False), "127.0.0.1"),
        "exporter_port": (Kind(integer(1)), 9101),
    },
    "bare_metal_access": {
        "exempt_users": (Kind(string_list(_login_check, "a list of login names")), ()),
        "admin_group": (Kind(string(), nullable=False), "ds01-admin"),
        "default_grant_duration_h": (Kind(duration("h"), nullable=False), 24.0),
        "state_dir": (Kind(file_path), None),
    },
    "access_control": {
        "admin_users": (Kind(string_list(_login_check, "a list of login names")), ()),
        "admin_group": (Kind(string(), nullable=False), "ds01-admin"),
    },
    "paths": {
        "state_dir": (Kind(file_path, nullable=False), "/var/lib/ds01"),
        "log_dir": (Kind(file_path, nullable=False), "/var/log/ds01"),
        "run_dir": (Kind(file_path, nullable=False), "/run/ds01"),
        "home_roots": (Kind(string_list()), ("/home",)),
    },
    **FEATURE_SECTIONS,
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
PATH_KEYS = {("paths", "state_dir"), ("paths", "log_dir"), ("paths", "run_dir"), ("gpu_allocation", "topology")}
PATH_KEYS |= {("gpu_allocation", "mapping_dir"), ("bare_metal_access", "state_dir")}

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


def section_defaults(name: str) -> dict:
    """The values of flat section ``name`` when no config ever loaded (e.g. ``gateway``)."""
    return {key: default for key, (_kind, default) in SECTIONS[name].items()}
