"""The import: ``import_directory`` writes ds01_common variables from which ds01's resolver gives every user what
``Legacy`` gives, reports each change of meaning as a ``Change``, and verifies the result with ds01's own loader."""

from __future__ import annotations

import datetime as dt
import math
import os
import tempfile
from typing import Any, Optional

from .. import config, identity
from ..record import record
from .legacy import (
    GROUP_OVERRIDES_FILE,
    LEGACY_DROPPED_LIMITS,
    LEGACY_DURATIONS,
    LEGACY_EXEMPTABLE,
    LEGACY_GLOBAL_POLICIES,
    LEGACY_GPUEQ_KEYS,
    LEGACY_SLOTS_KEYS,
    LEGACY_TYPE_KEYS,
    LEGACY_USER_POLICIES,
    LIMITS_FILE,
    UPSTREAM,
    Legacy,
    MigrationError,
    legacy_sanitize,
)

try:
    import yaml
except ImportError:  # pragma: no cover - yaml ships with ansible and with the runtime venv
    yaml = None
_SECTION_NOTES = {
    "state_dir": (
        "where the old bare-metal grant files lived",
        "left out: ds01 keeps grants under <paths.state_dir>/bare-metal-grants; old grant files are not carried over",
    ),
    "wrapper": ("settings of the old docker wrapper", "left out: the ds01 gateway replaces the wrapper"),
}


@record(frozen=True)
class Change:
    """One key whose meaning changes: where it is, what it meant, what it means now (and what the import did)."""

    where: str
    key: str
    old: str
    new: str

    def as_dict(self) -> dict:
        return {"where": self.where, "key": self.key, "old": self.old, "new": self.new}

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: was: {self.old}; now: {self.new}"


# --------------------------------------------------------------------------------------------
# The import
# --------------------------------------------------------------------------------------------


def _size_text(n_bytes: int) -> Any:
    text = config.format_size(n_bytes)
    try:
        return text if config.parse_size(text) == n_bytes else n_bytes
    except ValueError:
        return n_bytes


def _written(key: str, value: Any) -> Any:
    """A value as it is written into the variables (sizes as ``32G`` where that is exact)."""
    if value is not None and key in ("memory", "memory_swap", "shm_size"):
        return _size_text(value)
    return value


def _new_value(key: str, value: Any) -> Any:
    """A written value as ds01's resolver reads it (for comparing with the old one)."""
    if value is None:
        return None
    if key in ("memory", "memory_swap", "shm_size"):
        return config.parse_size(value)
    if key in ("max_gpu_slots_per_container", "pids_limit", "max_containers_per_user"):
        return int(value)
    if key == "allow_full_gpu":
        return bool(value)
    return float(value)


def _same(key: str, new: Any, old: Any) -> bool:
    if new is None or old is None:
        return new is old
    if isinstance(old, float):
        return math.isclose(float(new), old, rel_tol=0, abs_tol=1e-9)
    return new == old


def _mentions(raw: dict, key: str) -> bool:
    """Whether a layer of the old file names ``key`` (itself or one of the old names it was read from)."""
    names = {
        "max_gpu_equivalents": LEGACY_GPUEQ_KEYS,
        "max_gpu_slots_per_container": LEGACY_SLOTS_KEYS,
        "max_cpus": ("max_cpus", "cpus"),
        "memory_swap": ("memory_swap", "memory"),
    }.get(key, (key,))
    return any(name in raw for name in names)


class _Importer:
    def __init__(self, legacy: Legacy, now: dt.datetime) -> None:
        self.legacy = legacy
        self.now = now
        self.changes: list[Change] = []
        self.file = os.path.join(legacy.directory, LIMITS_FILE)

    def change(self, where: str, key: str, old: str, new: str) -> None:
        self.changes.append(Change(where, key, old, new))

    # -- limits ---------------------------------------------------------------------------------
    def _dropped_keys(self, where: str, raw: dict, extra: tuple) -> None:
        known = set(config.LIMIT_KEYS) | set(LEGACY_GPUEQ_KEYS) | set(LEGACY_SLOTS_KEYS) | {"cpus"} | set(extra)
        for key in raw:
            if key in known:
                continue
            old = LEGACY_DROPPED_LIMITS.get(key)
            if old is None and key in config.LIMIT_ALIASES:
                old = f"not read by the old code at {UPSTREAM} (it read only '{config.LIMIT_ALIASES[key]}')"
            old = old or "not read by the old code"
            self.change(where, key, old, "left out (ds01 has no such key, or would read it where the old code did not)")
        for key in raw:
            if key in LEGACY_GPUEQ_KEYS[1:] or key in LEGACY_SLOTS_KEYS[1:] or key == "cpus":
                target = (
                    "max_cpus"
                    if key == "cpus"
                    else ("max_gpu_equivalents" if key in LEGACY_GPUEQ_KEYS else "max_gpu_slots_per_container")
                )
                self.change(
                    where,
                    key,
                    f"an old name the old code read as {target} when no earlier name was set in the merged "
                    "defaults+group (or defaults+override)",
                    f"written as {target} with the value the old code used",
                )

    def _explicit(self, out: dict, old: dict, fallback: dict, raw: dict) -> None:
        """Write each limit into ``out`` where the layer names it or where ds01 would otherwise differ."""
        for key in config.LIMIT_KEYS:
            inherited = fallback.get(key)
            if _mentions(raw, key) or not _same(key, inherited, old[key]):
                out[key] = _written(key, old[key])

    def defaults(self) -> tuple[dict, dict]:
        """(written defaults, their values as ds01 reads them)."""
        raw = self.legacy.defaults
        self._dropped_keys("defaults", raw, ("aggregate",))
        if "aggregate" in raw:
            self.change(
                "defaults",
                "aggregate",
                "not read by the old code (aggregates came from the group or the override)",
                "left out",
            )
        old = self.legacy.limits_of(dict(raw))
        builtin = {k: default for k, (_kind, default) in config.LIMIT_KEYS.items()}
        out: dict = {}
        for key in config.LIMIT_KEYS:
            if not _mentions(raw, key) and not _same(key, builtin[key], old[key]):
                self.change(
                    "defaults",
                    key,
                    f"unset: the old code used {_show_value(key, old[key])}",
                    f"written as {_show_value(key, old[key])} (ds01's own default is {_show_value(key, builtin[key])})",
                )
        self._explicit(out, old, builtin, raw)
        return out, {k: _new_value(k, out[k]) if k in out else builtin[k] for k in config.LIMIT_KEYS}

    def groups(self, default_values: dict) -> tuple[dict, dict]:
        """(written groups, each group's values as ds01 reads them for a member without an override)."""
        out: dict = {}
        values: dict = {}
        for name, raw in self.legacy.groups.items():
            where = f"groups.{name}"
            self._dropped_keys(where, raw, ("members", "aggregate", "policies", "description", "container_types"))
            old = self.legacy.limits_of(self.legacy.group_merged(name))
            body: dict = {}
            if isinstance(raw.get("description"), str):
                body["description"] = raw["description"]
            self._explicit(body, old, default_values, raw)
            if "aggregate" in raw:
                body["aggregate"] = self._aggregate(where, raw["aggregate"])
            policies = self._user_policies(where, raw.get("policies"))
            if policies:
                body["policies"] = policies
            if raw.get("container_types"):
                self.change(where, "container_types", "not read by the old code", "left out (ds01 would read it)")
            out[name] = body
            values[name] = {k: _new_value(k, body[k]) if k in body else default_values[k] for k in config.LIMIT_KEYS}
        return out, values

    def _aggregate(self, where: str, raw: Any) -> Optional[dict]:
        if not isinstance(raw, dict):
            return None
        out = {}
        for key, value in raw.items():
            if key in config.AGGREGATE_KEYS:
                out[key] = value
            else:
                self.change(f"{where}.aggregate", key, "not read by the old code", "left out")
        return out

    def _user_policies(self, where: str, raw: Any) -> dict:
        raw = raw if isinstance(raw, dict) else {}
        for key in raw:
            if key not in LEGACY_USER_POLICIES:
                self.change(
                    f"{where}.policies",
                    key,
                    "not read by the old code (only gpu/cpu/network idle thresholds, the detection window and "
                    "sigterm_grace_s were read per group or user)",
                    "left out (ds01 would apply it)",
                )
        return {k: raw[k] for k in LEGACY_USER_POLICIES if k in raw}

    # -- overrides ------------------------------------------------------------------------------
    def overrides(self, groups_out: dict, group_values: dict) -> dict:
        legacy = self.legacy
        logins = {key: key for key in legacy.overrides}
        for login in legacy.logins():  # an override written under the sanitised form applied to these logins
            key = legacy.override_key(login)
            if key and key != login:
                logins[login] = key
                self.change(
                    f"{config.OVERRIDES_FILE}",
                    key,
                    f"applied to the login '{login}' too (the old lookup tried the sanitised form)",
                    f"written for '{login}' (ds01 matches overrides by the exact login)",
                )
        for key in {k for login, k in logins.items() if login != k}:
            if key not in legacy.logins():
                del logins[key]  # a sanitised name, not a login: written for the logins it stood for
        out: dict = {}
        for login in sorted(logins):
            raw = legacy.overrides[logins[login]]
            raw = raw if isinstance(raw, dict) else {}
            where = f"{config.OVERRIDES_FILE}: {login}"
            group = legacy.membership_group(login)
            self._dropped_keys(where, raw, ("aggregate", "policies"))
            body: dict = {}
            self._explicit(body, legacy.limits(login), group_values[group], raw)
            dropped = sorted(k for k in config.LIMIT_KEYS if k not in raw and k in groups_out[group] and k in body)
            if dropped:
                self.change(
                    where,
                    ", ".join(dropped),
                    f"the old code ignored group '{group}' for a user with an override: these came from defaults",
                    "ds01 layers an override on the group, so they are written into the override with the old values",
                )
            if "aggregate" in raw:
                agg = self._aggregate(where, raw["aggregate"])
                group_agg = groups_out[group].get("aggregate") or {}
                if agg is not None:
                    agg = {**dict.fromkeys(group_agg), **agg}
                body["aggregate"] = agg
            if "policies" in raw:
                policies = self._user_policies(where, raw["policies"])
                group_policies = groups_out[group].get("policies") or {}
                for key in group_policies:
                    policies.setdefault(key, legacy.policies.get(key, LEGACY_USER_POLICIES[key]))
                body["policies"] = policies
            out[login] = body
            self.change(
                where,
                "group",
                f"'override': the old slice was ds01-override-{legacy_sanitize(login)}.slice, with no parent drop-in",
                f"'{group}' (the group the old code took aggregates and policies from): the slice is "
                f"{identity.slice_unit(group, identity.sanitize_username(login))}",
            )
        return out

    # -- members ----------------------------------------------------------------------------------
    def members(self) -> dict:
        legacy = self.legacy
        seen: dict = {}
        out: dict = {}
        for name in legacy.groups:
            logins = []
            for login in sorted(legacy.members[name]):
                if not identity.valid_login(login):
                    self.change(
                        f"groups/{name}.members",
                        login,
                        "a line the old code compared with logins",
                        "left out: it is not a login name",
                    )
                    continue
                if login in seen:
                    self.change(
                        f"groups/{name}.members",
                        login,
                        f"also listed in '{seen[login]}', which comes first in {LIMITS_FILE}: the old code used "
                        f"'{seen[login]}'",
                        f"listed in '{seen[login]}' only (ds01 refuses a login in two groups)",
                    )
                    continue
                seen[login] = name
                logins.append(login)
            out[name] = logins
        for group, logins in legacy.other_members_files.items():
            if group == config.ARCHIVED_GROUP:
                out[group] = sorted(x for x in logins if identity.valid_login(x))
                self.change(
                    "groups/archived.members",
                    "archived",
                    "read only by the sync script (it skipped these logins)",
                    "kept: ds01 makes no slice for them; they still resolve like anyone unlisted",
                )
            else:
                self.change(
                    f"groups/{group}.members",
                    group,
                    f"ignored: {LIMITS_FILE} defines no group '{group}'",
                    "left out (ds01 would refuse it)",
                )
        for number, login, group in legacy.group_overrides:
            listed = seen.get(login)
            now = f"listed in '{listed}'" if listed else f"not listed, so in the default group '{legacy.default_group}'"
            self.change(
                f"{GROUP_OVERRIDES_FILE}:{number}",
                login,
                f"'{group}' for the sync script's next run, which only added logins not listed in any group "
                "(the resolver never read this file)",
                f"{now}, as the old resolver had it; ds01 has no sync: put the login into "
                "ds01_common_group_members to move it",
            )
        return out

    # -- exemptions ------------------------------------------------------------------------------
    def exemptions(self) -> list:
        legacy = self.legacy
        out = []
        for index, entry in enumerate(legacy.exemptions):
            where = f"{config.EXEMPTIONS_FILE}: exemptions[{index}]"
            if not isinstance(entry, dict) or not identity.valid_login(entry.get("username")):
                self.change(where, "username", "a record the old code could not match", "left out")
                continue
            login = entry["username"]
            kinds = []
            for kind in entry.get("exempt_from") or []:
                if kind not in LEGACY_EXEMPTABLE:
                    self.change(
                        where,
                        str(kind),
                        "never asked about by the old scripts (idle_timeout_h, max_runtime_h only)",
                        "left out (ds01 would honour it)",
                    )
                    continue
                if not self._honoured(index, login, kind):
                    self.change(
                        where,
                        kind,
                        "never honoured: an earlier record of this user with an expiry without a time zone (or a "
                        "YAML date) made the old check give up, or this record's expiry did",
                        "left out",
                    )
                    continue
                kinds.append(kind)
            if not kinds:
                continue
            item = {"username": login, "exempt_from": kinds}
            for key in ("category", "reason", "approved_by", "approved_on", "expires_on"):
                if entry.get(key) is not None:
                    item[key] = str(entry[key])
            item.setdefault("expires_on", None)
            out.append(item)
        return out

    def _honoured(self, index: int, login: str, kind: str) -> bool:
        """Whether the old check could ever reach and honour record ``index`` (at any time)."""
        for earlier, entry in enumerate(self.legacy.exemptions[: index + 1]):
            if not isinstance(entry, dict):
                return False
            if entry.get("username") != login or kind not in (entry.get("exempt_from") or []):
                continue
            expires = entry.get("expires_on")
            if expires is None:
                continue
            if isinstance(expires, (dt.date, dt.datetime)):
                return False
            if not isinstance(expires, str):
                if earlier == index:
                    return False
                continue
            try:
                when = dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
            except ValueError:
                if earlier == index:
                    return False
                continue
            if when.tzinfo is None:
                return False
        return True

    # -- the rest of resource-limits.yaml ---------------------------------------------------------
    def sections(self, out: dict) -> None:
        raw = self.legacy.raw
        keep = {
            "enforcement": ("aggregate_limits", "cgroup_driver"),
            "monitoring": ("infrastructure_containers", "infrastructure_label"),
            "bare_metal_access": ("exempt_users", "admin_group", "default_grant_duration_h"),
            "access_control": ("admin_users", "admin_group"),
        }
        for section, keys in keep.items():
            body = raw.get(section) if isinstance(raw.get(section), dict) else {}
            kept = {k: body[k] for k in keys if k in body}
            if kept:
                out[section] = kept
            for key in body:
                if key not in keys:
                    self.change(
                        section,
                        key,
                        _SECTION_NOTES.get(key, ("not read in this form", "left out"))[0],
                        _SECTION_NOTES.get(key, ("not read in this form", "left out"))[1],
                    )
        gpu = raw.get("gpu_allocation")
        for key in gpu if isinstance(gpu, dict) else {}:
            self.change("gpu_allocation", key, "not used by the old allocator at 2cf1a0e", "left out")
        policies = {}
        for key, value in self.legacy.policies.items():
            if key in LEGACY_USER_POLICIES or key in LEGACY_GLOBAL_POLICIES:
                policies[key] = value
            else:
                self.change(
                    "policies", key, "not read by the old code", "left out (ds01 would read it; its default applies)"
                )
        if policies:
            out["policies"] = policies
        types = raw.get("container_types") if isinstance(raw.get("container_types"), dict) else {}
        table = {}
        for name, body in types.items():
            body = body if isinstance(body, dict) else {}
            if name not in config.CONTAINER_TYPES:
                self.change("container_types", name, "a type the old scripts never produced", "left out")
                continue
            table[name] = {k: body[k] for k in LEGACY_TYPE_KEYS if k in body}
            for key in body:
                if key not in LEGACY_TYPE_KEYS:
                    self.change(f"container_types.{name}", key, "not read by the old code", "left out")
        if table:
            out["container_types"] = table
            self.change(
                "container_types",
                "idle_timeout_h, max_runtime_h",
                "for containers made outside the old ds01 CLI the type's value applied to everyone, above a user's "
                "override, and a null or missing idle_timeout_h meant 0.5 h",
                "the most specific value written down applies: a user's override, then the type's row, then the "
                "group; a null switches the rule off (see `ds01 config show USER`)",
            )
        for key in raw:
            if key not in (
                "defaults",
                "default_group",
                "groups",
                "policies",
                "container_types",
                "user_overrides",
                "gpu_allocation",
                *keep,
            ):
                self.change(LIMITS_FILE, key, "not read by the old resolver", "left out")


def _show_value(key: str, value: Any) -> str:
    if value is None:
        return "unlimited" if key not in LEGACY_DURATIONS else "none (no limit)"
    if key in ("memory", "memory_swap", "shm_size"):
        return config.format_size(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def import_directory(directory: str, now: Optional[dt.datetime] = None) -> tuple[dict, list[Change]]:
    """``(variables, changes)`` for the old config directory; ``MigrationError`` when it cannot be imported."""
    now = now or dt.datetime.now(dt.timezone.utc)
    legacy = Legacy(directory)
    if legacy.default_group not in legacy.groups:
        raise MigrationError(
            f"{os.path.join(legacy.directory, LIMITS_FILE)}: default_group {legacy.default_group!r} is not one of "
            f"the groups ({', '.join(legacy.groups) or 'none'}); define it, then import again"
        )
    importer = _Importer(legacy, now)
    limits: dict = {}
    defaults, default_values = importer.defaults()
    limits["defaults"] = defaults
    limits["default_group"] = legacy.default_group
    groups, group_values = importer.groups(default_values)
    importer.sections(limits)
    limits["groups"] = groups
    variables = {
        "ds01_common_limits": limits,
        "ds01_common_group_members": importer.members(),
        "ds01_common_user_overrides": importer.overrides(groups, group_values),
        "ds01_common_lifecycle_exemptions": importer.exemptions(),
    }
    for problem in verify(variables, legacy, now):
        importer.change("verification", problem[0], problem[1], problem[2])
    return variables, importer.changes


def render_directory(variables: dict, directory: str) -> str:
    """Write the four variables as the ds01_common role writes them; returns the resource-limits.yaml path."""
    os.makedirs(os.path.join(directory, config.MEMBERS_DIR), exist_ok=True)
    main = os.path.join(directory, LIMITS_FILE)
    files = {
        main: variables["ds01_common_limits"],
        os.path.join(directory, config.OVERRIDES_FILE): variables["ds01_common_user_overrides"],
        os.path.join(directory, config.EXEMPTIONS_FILE): {"exemptions": variables["ds01_common_lifecycle_exemptions"]},
    }
    for path, data in files.items():
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
    for group, logins in variables["ds01_common_group_members"].items():
        with open(os.path.join(directory, config.MEMBERS_DIR, f"{group}.members"), "w", encoding="utf-8") as handle:
            handle.write("".join(f"{login}\n" for login in logins))
    return main


def project(limits: Any, now: dt.datetime) -> dict:
    """The fields of a ds01 resolution that the old system also had (``Legacy.resolve``'s shape)."""
    data = limits.as_dict()
    exempt = {}
    for kind in LEGACY_EXEMPTABLE:
        exempt[kind] = limits.exemption_for(kind, now) is not None
    return {
        "group": data["group"],
        "slice": data["slice"],
        "limits": data["limits"],
        "aggregate": data["aggregate"],
        "policies": {k: data["policies"][k] for k in (*LEGACY_USER_POLICIES, *LEGACY_GLOBAL_POLICIES)},
        "exempt": exempt,
    }


def differences(new: dict, old: dict) -> list[str]:
    """Where a ds01 projection (``project``) and an old resolution (``Legacy.resolve``) differ, as sentences."""
    out = []
    expected_group = old["membership_group"] if old["override"] else old["group"]
    if new["group"] != expected_group:
        out.append(f"group {new['group']!r}, old {expected_group!r}")
    if not old["override"] and new["slice"] != old["slice"]:
        out.append(f"slice {new['slice']}, old {old['slice']}")
    for key, value in old["limits"].items():
        if not _same(key, new["limits"][key], value):
            out.append(f"{key} {new['limits'][key]!r}, old {value!r}")
    if (new["aggregate"] is None) != (old["aggregate"] is None):
        out.append(f"aggregate {new['aggregate']!r}, old {old['aggregate']!r}")
    elif old["aggregate"] is not None:
        for key, value in old["aggregate"].items():
            if new["aggregate"][key] != value:
                out.append(f"aggregate.{key} {new['aggregate'][key]!r}, old {value!r}")
    for key, value in old["policies"].items():
        if float(new["policies"][key]) != float(value):
            out.append(f"policies.{key} {new['policies'][key]!r}, old {value!r}")
    if new["exempt"] != old["exempt"]:
        out.append(f"exemptions {new['exempt']}, old {old['exempt']}")
    return out


def verify(variables: dict, legacy: Legacy, now: dt.datetime) -> list[tuple]:
    """Load the variables with ds01's own loader and compare every login; ``(login, old, new)`` per mismatch."""
    with tempfile.TemporaryDirectory(prefix="ds01-import-") as tmp:
        main = render_directory(variables, tmp)
        try:
            loaded = config.load_config(main)
        except config.ConfigError as exc:
            raise MigrationError(
                "the imported variables do not pass ds01's check (a bug in the import; please report it):\n"
                + exc.render()
            ) from None
        found = []
        for login in [*legacy.logins(), "ds01-import-unlisted-probe"]:
            problems = differences(project(loaded.resolve(login), now), legacy.resolve(login, now))
            if problems:
                found.append((login, "resolved as the old directory says", "differs: " + "; ".join(problems)))
        return found


def to_yaml(variables: dict) -> str:
    head = f"# ds01 config import: the ds01_common variables for the old directory (from {UPSTREAM} semantics)\n"
    return head + yaml.safe_dump(variables, sort_keys=False, default_flow_style=False, allow_unicode=True)
