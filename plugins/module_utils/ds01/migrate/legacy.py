"""The model of the earlier ds01-infra's resolver (``Legacy``: how its ``get_resource_limits.py`` resolved a
user), what it read and fell back to, and the error an unusable old directory raises. It reads the raw YAML and
shares nothing with ds01's resolver (the package docstring, ``migrate/__init__.py``, describes the whole)."""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any, Optional

from .. import config

try:
    import yaml
except ImportError:  # pragma: no cover - yaml ships with ansible and with the runtime venv
    yaml = None

LIMITS_FILE = "resource-limits.yaml"
GROUP_OVERRIDES_FILE = "group-overrides.txt"
UPSTREAM = "hertie-data-science-lab/ds01-infra at 2cf1a0e"

# What the old resolver read, and what it fell back to when a key was missing (get_resource_limits.py).
LEGACY_GPUEQ_KEYS = ("max_gpu_equivalents", "max_gpu_slots", "max_gpus_per_user", "max_mig_instances")
LEGACY_SLOTS_KEYS = ("max_gpu_slots_per_container", "max_gpus_per_container", "max_mig_per_container")
LEGACY_DURATIONS = ("max_runtime_h", "idle_timeout_h", "gpu_hold_after_stop_h", "container_hold_after_stop_h")
LEGACY_SIZE_FALLBACK = {"memory": "32g", "shm_size": "16g"}
# The per-user policies the old code resolved (global ← group, or global ← override), and their fallbacks.
LEGACY_USER_POLICIES = {
    "gpu_idle_threshold": 5,
    "cpu_idle_threshold": 2.0,
    "network_idle_threshold": 1048576,
    "idle_detection_window": 3,
    "sigterm_grace_s": 60,
}
# Policies the old code read from the top-level block only.
LEGACY_GLOBAL_POLICIES = {
    "high_demand_threshold": 0.8,
    "high_demand_idle_reduction": 0.5,
    "grace_period_m": 30,
    "created_container_timeout_m": 30,
}
LEGACY_EXEMPTABLE = ("idle_timeout_h", "max_runtime_h")  # the only kinds the old scripts asked about
LEGACY_TYPE_KEYS = ("idle_timeout_h", "max_runtime_h", "sigterm_grace_s")

# Keys the old resolver carried but ds01 has no place for: their old meaning, said once.
LEGACY_DROPPED_LIMITS = {
    "max_tasks": "documented as the per-user task limit, but never read by the old code",
    "priority": "shown by the old `get_resource_limits.py` only; no allocation used it",
    "storage_tmp": "a tmpfs /tmp of that size on containers the old wrapper created",
    "storage_workspace": "shown only (no quota was enforced)",
    "storage_data": "shown only (no quota was enforced)",
    "gpu_memory": "documented, never read",
    "io_read_bps": "documented, never read",
    "io_write_bps": "documented, never read",
    "ulimit_nofile": "documented, never read",
}


class MigrationError(Exception):
    """The old directory cannot be imported; the message says what and what to do."""


# --------------------------------------------------------------------------------------------
# The old semantics
# --------------------------------------------------------------------------------------------

_DOCKER_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_DOCKER_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def docker_bytes(value: Any) -> int:
    """A size as the Docker CLI read the old wrapper's ``--memory=32g`` (1024-based, ``b`` optional)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    match = _DOCKER_SIZE_RE.match(str(value).strip())
    if not match:
        raise ValueError(value)
    return int(float(match.group(1)) * _DOCKER_UNITS[(match.group(2) or "").lower()])


def legacy_sanitize(login: str) -> str:
    """The old slice token: domain dropped, '.' and anything outside ``[A-Za-z0-9_:]`` → '_', runs collapsed."""
    name = login.split("@", 1)[0].replace(".", "_")
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    return re.sub(r"_+", "_", name).strip("_")


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrationError(f"{path} cannot be read ({exc}); make it readable by this user and run again") from None


def _load_yaml(path: str, required: bool = False) -> Any:
    text = _read_text(path)
    if text is None:
        if required:
            raise MigrationError(f"{path} not found: give the old installation's config directory (config/runtime)")
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MigrationError(f"{path} is not valid YAML ({exc}); the old system could not read it either") from None


def _members_lines(text: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


class Legacy:
    """How the old system (``UPSTREAM``) resolved each login from one config directory."""

    def __init__(self, directory: str) -> None:
        if yaml is None:
            raise MigrationError("PyYAML is not installed in this Python")
        self.directory = os.path.abspath(directory)
        if not os.path.isdir(self.directory):
            raise MigrationError(f"{self.directory} is not a directory: give the old config directory")
        raw = _load_yaml(os.path.join(self.directory, LIMITS_FILE), required=True)
        if not isinstance(raw, dict):
            raise MigrationError(f"{os.path.join(self.directory, LIMITS_FILE)} is not a mapping of sections")
        self.raw = raw
        self.defaults = raw.get("defaults") if isinstance(raw.get("defaults"), dict) else {}
        groups = raw.get("groups") if isinstance(raw.get("groups"), dict) else {}
        self.groups: dict[str, dict] = {name: (body if isinstance(body, dict) else {}) for name, body in groups.items()}
        self.default_group = raw.get("default_group", "student")
        self.policies = raw.get("policies") if isinstance(raw.get("policies"), dict) else {}
        # members: file and inline, per group in file order (the old loader read files of defined groups only)
        self.file_members: dict[str, list[str]] = {}
        self.members: dict[str, set] = {}
        for name, body in self.groups.items():
            text = _read_text(os.path.join(self.directory, "groups", f"{name}.members"))
            self.file_members[name] = _members_lines(text) if text else []
            inline = body.get("members") or []
            self.members[name] = set(self.file_members[name]) | {str(m) for m in inline}
        self.other_members_files: dict[str, list[str]] = {}
        groups_dir = os.path.join(self.directory, "groups")
        if os.path.isdir(groups_dir):
            for entry in sorted(os.listdir(groups_dir)):
                group = entry[: -len(".members")]
                if entry.endswith(".members") and group not in self.groups:
                    self.other_members_files[group] = _members_lines(_read_text(os.path.join(groups_dir, entry)) or "")
        inline_overrides = raw.get("user_overrides") or {}
        file_overrides = _load_yaml(os.path.join(self.directory, config.OVERRIDES_FILE)) or {}
        if not isinstance(inline_overrides, dict) or not isinstance(file_overrides, dict):
            raise MigrationError(f"{config.OVERRIDES_FILE} must map logins to their keys")
        self.overrides: dict[str, dict] = {**inline_overrides, **file_overrides}
        exemptions = _load_yaml(os.path.join(self.directory, config.EXEMPTIONS_FILE)) or {}
        self.exemptions: list = list(exemptions.get("exemptions") or []) if isinstance(exemptions, dict) else []
        self.group_overrides: list[tuple[int, str, str]] = []
        text = _read_text(os.path.join(self.directory, GROUP_OVERRIDES_FILE)) or ""
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if ":" in line:
                login, group = line.rsplit(":", 1)
                self.group_overrides.append((number, login.strip(), group.strip()))

    # -- who is who ----------------------------------------------------------------------------
    def override_key(self, login: str) -> Optional[str]:
        if login in self.overrides:
            return login
        sanitized = legacy_sanitize(login)
        return sanitized if sanitized != login and sanitized in self.overrides else None

    def membership_group(self, login: str) -> str:
        """The first group (file order) listing the login or its sanitised form; else the default group."""
        sanitized = legacy_sanitize(login)
        for name in self.groups:
            if login in self.members[name] or (sanitized != login and sanitized in self.members[name]):
                return name
        return self.default_group

    def group_of(self, login: str) -> str:
        """What the old ``--group`` said: ``override`` for a user with an override."""
        return "override" if self.override_key(login) else self.membership_group(login)

    def logins(self) -> list[str]:
        """Every login the directory names (members, overrides, exemptions, group-overrides.txt)."""
        found = set()
        for members in self.members.values():
            found |= members
        for logins in self.other_members_files.values():  # archived.members, files of undefined groups
            found |= set(logins)
        listed = set(found)
        for key in self.overrides:  # a sanitised name that stood for listed logins is not a login of its own
            if key in listed or not any(key == legacy_sanitize(login) != login for login in listed):
                found.add(key)
        found |= {e.get("username") for e in self.exemptions if isinstance(e, dict) and e.get("username")}
        found |= {login for _n, login, _g in self.group_overrides}
        return sorted(str(x) for x in found)

    # -- values --------------------------------------------------------------------------------
    def merged(self, login: str) -> dict:
        key = self.override_key(login)
        merged = dict(self.defaults)
        if key:
            merged.update(self.overrides[key] or {})
        else:
            body = self.groups.get(self.membership_group(login), {})
            merged.update({k: v for k, v in body.items() if k != "members"})
        return merged

    def group_merged(self, group: str) -> dict:
        merged = dict(self.defaults)
        merged.update({k: v for k, v in self.groups.get(group, {}).items() if k != "members"})
        return merged

    @staticmethod
    def limits_of(merged: dict) -> dict:
        """The old values in ds01's vocabulary (sizes in bytes, durations in hours, None = unlimited)."""

        def first(keys: tuple, fallback: Any) -> Any:
            for key in keys:
                if key in merged:
                    return merged[key]
            return fallback

        gpueq = first(LEGACY_GPUEQ_KEYS, 1.0)
        slots = first(LEGACY_SLOTS_KEYS, 1)
        memory = merged.get("memory", LEGACY_SIZE_FALLBACK["memory"])
        containers = merged.get("max_containers_per_user", 3)
        out = {
            "max_gpu_equivalents": None if gpueq is None else float(gpueq),
            "max_gpu_slots_per_container": None if slots is None else int(slots),
            "allow_full_gpu": bool(merged.get("allow_full_gpu", False)),
            "max_cpus": float(merged.get("max_cpus") or merged.get("cpus", 16)),
            "memory": docker_bytes(memory),
            "memory_swap": docker_bytes(merged.get("memory_swap", memory)),
            "shm_size": docker_bytes(merged.get("shm_size", LEGACY_SIZE_FALLBACK["shm_size"])),
            "pids_limit": int(merged.get("pids_limit", 4096)),
            "max_containers_per_user": None if containers is None else int(containers),
        }
        for key in LEGACY_DURATIONS:
            value = merged.get(key)
            out[key] = None if value is None else float(value)
        return out

    def limits(self, login: str) -> dict:
        return self.limits_of(self.merged(login))

    def aggregate(self, login: str) -> Optional[dict]:
        key = self.override_key(login)
        if key and isinstance(self.overrides[key], dict) and "aggregate" in self.overrides[key]:
            found = self.overrides[key]["aggregate"]
        else:
            found = self.groups.get(self.membership_group(login), {}).get("aggregate")
        if not isinstance(found, dict):
            return None
        out = {}
        for name in config.AGGREGATE_KEYS:
            value = found.get(name)
            out[name] = None if value is None else (float(value) if name == "gpu_limit" else str(value))
        return out

    def policies_for(self, login: str) -> dict:
        result = {k: self.policies.get(k, d) for k, d in LEGACY_USER_POLICIES.items()}
        key = self.override_key(login)
        if key and isinstance(self.overrides[key], dict) and "policies" in self.overrides[key]:
            layer = self.overrides[key]["policies"] or {}
        else:
            layer = self.groups.get(self.membership_group(login), {}).get("policies") or {}
        result.update({k: layer[k] for k in LEGACY_USER_POLICIES if k in layer})
        result.update({k: self.policies.get(k, d) for k, d in LEGACY_GLOBAL_POLICIES.items()})
        return {k: float(v) if isinstance(v, float) else v for k, v in result.items()}

    def exemption_index(self, login: str, kind: str, now: dt.datetime) -> Optional[int]:
        """The index of the record the old check honoured for ``login`` and ``kind`` at ``now``, or None.

        As the old code did: records in file order; a null expiry is permanent; an ISO text with a zone is
        compared with now; an unparseable text is skipped; anything that made the comparison raise (a time
        without a zone, a YAML date) ended the whole check with "not exempt".
        """
        for index, record in enumerate(self.exemptions):
            if not isinstance(record, dict):
                return None
            if record.get("username") != login or kind not in (record.get("exempt_from") or []):
                continue
            expires = record.get("expires_on")
            if expires is None:
                return index
            if not isinstance(expires, str):
                # datetime/date objects: .replace("Z", ...) raised TypeError (the whole check gave up);
                # numbers: AttributeError (this record skipped)
                if isinstance(expires, (dt.date, dt.datetime)):
                    return None
                continue
            try:
                when = dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
            except ValueError:
                continue
            if when.tzinfo is None:
                return None
            if now < when:
                return index
        return None

    def resolve(self, login: str, now: dt.datetime) -> dict:
        group = self.group_of(login)
        return {
            "user": login,
            "group": group,
            "membership_group": self.membership_group(login),
            "override": group == "override",
            "slice": f"ds01-{group}-{legacy_sanitize(login)}.slice",
            "limits": self.limits(login),
            "aggregate": self.aggregate(login),
            "policies": self.policies_for(login),
            "exempt": {k: self.exemption_index(login, k, now) is not None for k in LEGACY_EXEMPTABLE},
        }
