"""Loading: find the config file, read it and its companions, validate everything at once.

``load_config(path)`` reads resource-limits.yaml, ``groups/<group>.members``, ``user-overrides.yaml`` and
``lifecycle-exemptions.yaml`` against the tables of ``schema`` and fills a ``model.Config``; it raises one
``ConfigError`` listing every problem (file, line, key path, bad value, what was expected). It never guesses.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from typing import Any, Optional

from .. import identity
from .model import Config, ContainerTypePolicy, Exemption, Group
from .reader import ConfigError, Problem, Reader, as_section, check_keys, did_you_mean, show
from .schema import (
    AGGREGATE_KEYS,
    ARCHIVED_GROUP,
    CONTAINER_TYPE_ALIASES,
    CONTAINER_TYPE_IGNORED,
    CONTAINER_TYPE_KEYS,
    CONTAINER_TYPES,
    EXEMPTABLE,
    EXEMPTION_KEYS,
    EXEMPTIONS_FILE,
    GROUP_EXTRA,
    GROUP_NAME_RE,
    LIMIT_ALIASES,
    LIMIT_IGNORED,
    LIMIT_KEYS,
    MEMBERS_DIR,
    OVERRIDE_EXTRA,
    OVERRIDES_FILE,
    PATH_KEYS,
    POLICY_ALIASES,
    POLICY_IGNORED,
    POLICY_KEYS,
    SECTION_IGNORED,
    SECTIONS,
    TOP_LEVEL,
)
from .units import parse_size

DEFAULT_CONFIG_PATH = "/etc/ds01/resource-limits.yaml"
CONFIG_ENV = "DS01_CONFIG"


def find_config_path(cli_value: Optional[str] = None) -> str:
    """``--config PATH``, else ``$DS01_CONFIG``, else /etc/ds01/resource-limits.yaml."""
    if cli_value:
        return cli_value
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str, base_dir: Optional[str] = None) -> Config:
    """Read and validate ``path`` and its companion files; ``ConfigError`` lists every problem.

    ``base_dir`` (default: the file's directory) is where relative paths in it resolve (``load_last_good``).
    """
    reader = Reader()
    config = Config(path, base_dir)
    file = config.path
    raw = reader.load_yaml(file, required=True)
    config.files.append(file)
    if reader.problems:
        raise ConfigError(reader.problems)
    top = as_section(reader, file, (), raw)
    if reader.problems:  # not a mapping: nothing below can be read
        raise ConfigError(reader.problems)
    for key in top:
        if key not in TOP_LEVEL:
            reader.problem(file, (key,), "unknown top-level key" + did_you_mean(key, TOP_LEVEL))

    _read_sections(reader, config, file, top)
    config.defaults = _read_limits(
        reader, file, ("defaults",), as_section(reader, file, ("defaults",), top.get("defaults")), extra=("aggregate",)
    )
    defaults_raw = top.get("defaults") if isinstance(top.get("defaults"), dict) else {}
    if "aggregate" in defaults_raw:
        config.defaults_aggregate = _read_aggregate(reader, file, ("defaults", "aggregate"), defaults_raw["aggregate"])
    policies_raw = as_section(reader, file, ("policies",), top.get("policies"))
    policies = check_keys(reader, file, ("policies",), policies_raw, POLICY_KEYS, POLICY_ALIASES, POLICY_IGNORED)
    config.policies = {k: policies.get(k, d) for k, (_kind, d) in POLICY_KEYS.items()}
    config.policies_set = frozenset(policies)
    _read_container_types(
        reader, config, file, as_section(reader, file, ("container_types",), top.get("container_types"))
    )
    _read_groups(reader, config, file, as_section(reader, file, ("groups",), top.get("groups")))
    _read_default_group(reader, config, file, top)
    _read_members(reader, config)
    inline = as_section(reader, file, ("user_overrides",), top.get("user_overrides"))
    _read_overrides(reader, config, file, ("user_overrides",), inline)
    overrides_file = os.path.join(config.directory, OVERRIDES_FILE)
    from_file = reader.load_yaml(overrides_file, required=False)
    if os.path.exists(overrides_file):
        config.files.append(overrides_file)
    _read_overrides(reader, config, overrides_file, (), as_section(reader, overrides_file, (), from_file))
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
    else:
        for name in sorted(config.groups):
            aggregate = config.group_aggregate(name)
            if aggregate is not None and aggregate.tasks_max is None:  # capped, but not the number of processes
                reader.warn(
                    file,
                    ("groups", name, "aggregate", "tasks_max"),
                    "is not set: a user's processes are then capped per container only (pids_limit), and a build's "
                    "steps, which Docker runs with no pids limit, not at all. Set it (e.g. 12288) to cap each "
                    "user's total",
                )
    config.warnings = reader.warnings
    config.texts = {file: reader.texts[file] for file in config.files if file in reader.texts}
    return config


def _read_sections(reader: Reader, config: Config, file: str, top: dict) -> None:
    for name, keys in SECTIONS.items():
        raw = as_section(reader, file, (name,), top.get(name))
        values = check_keys(reader, file, (name,), raw, keys, ignored=SECTION_IGNORED.get(name, {}))
        section = {k: values.get(k, d) for k, (_kind, d) in keys.items()}
        for sect, key in PATH_KEYS:
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


def _read_limits(reader: Reader, file: str, path: tuple, raw: dict, extra: Iterable[str] = ()) -> dict:
    return check_keys(reader, file, path, raw, LIMIT_KEYS, LIMIT_ALIASES, LIMIT_IGNORED, extra=extra)


def _read_aggregate(reader: Reader, file: str, path: tuple, raw: Any) -> Optional[dict]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        reader.problem(file, path, f"got {show(raw)}, expected a mapping (cpu_quota, memory_max, ...) or null")
        return None
    values = check_keys(reader, file, path, raw, AGGREGATE_KEYS)
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


def _read_container_types(reader: Reader, config: Config, file: str, raw: dict) -> None:
    config.container_types.update(_read_type_table(reader, file, ("container_types",), raw))


def _read_type_table(reader: Reader, file: str, where: tuple, raw: Any) -> dict:
    """``container_types`` (top level, or inside a group): type -> ContainerTypePolicy."""
    table: dict = {}
    for name, body in as_section(reader, file, where, raw).items():
        path = (*where, name)
        if name not in CONTAINER_TYPES:
            reader.problem(file, path, "unknown container type" + did_you_mean(name, CONTAINER_TYPES))
            continue
        body = as_section(reader, file, path, body)
        values = check_keys(
            reader, file, path, body, CONTAINER_TYPE_KEYS, CONTAINER_TYPE_ALIASES, CONTAINER_TYPE_IGNORED
        )
        table[name] = ContainerTypePolicy(explicit=frozenset(values), **values)
    return table


def _read_groups(reader: Reader, config: Config, file: str, raw: dict) -> None:
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
        body = as_section(reader, file, path, body)
        limits = _read_limits(reader, file, path, body, extra=GROUP_EXTRA)
        aggregate_set = "aggregate" in body
        aggregate = (
            _read_aggregate(reader, file, (*path, "aggregate"), body.get("aggregate")) if aggregate_set else None
        )
        pol_raw = as_section(reader, file, (*path, "policies"), body.get("policies"))
        pol = check_keys(reader, file, (*path, "policies"), pol_raw, POLICY_KEYS, POLICY_ALIASES, POLICY_IGNORED)
        members = body.get("members")
        inline: list = []
        if members is not None:
            if not isinstance(members, list):
                reader.problem(file, (*path, "members"), f"got {show(members)}, expected a list of login names")
            else:
                for index, login in enumerate(members):
                    if not identity.valid_login(login):
                        reader.problem(file, (*path, "members", index), f"got {show(login)}, expected a login name")
                    else:
                        inline.append(login)
        types = _read_type_table(reader, file, (*path, "container_types"), body.get("container_types"))
        config.groups[name] = Group(name, limits, aggregate, aggregate_set, pol, inline, types)


def _read_default_group(reader: Reader, config: Config, file: str, top: dict) -> None:
    value = top.get("default_group", "student")
    if not isinstance(value, str) or value not in config.groups:
        if config.groups:
            reader.problem(
                file,
                ("default_group",),
                f"got {show(value)}, expected one of the defined groups: " + ", ".join(sorted(config.groups)),
            )
        return
    config.default_group = value


def _read_members(reader: Reader, config: Config) -> None:
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
                    + did_you_mean(group, config.groups)
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
                reader.problems.append(Problem(file, "", f"line {show(login)} is not a login name", number))
                continue
            if group == ARCHIVED_GROUP:
                archived.add(login)
            else:
                add(login, group, file, number)
    config.members = {login: info[0] for login, info in where.items()}
    config.archived = frozenset(archived)


def _read_overrides(reader: Reader, config: Config, file: str, path: tuple, raw: dict) -> None:
    for login, body in raw.items():
        sub = (*path, login)
        if not identity.valid_login(login):
            reader.problem(file, sub, f"{show(login)} is not a login name")
            continue
        body = as_section(reader, file, sub, body)
        limits = _read_limits(reader, file, sub, body, extra=OVERRIDE_EXTRA)
        entry: dict = {"limits": limits}
        if "aggregate" in body:
            entry["aggregate"] = _read_aggregate(reader, file, (*sub, "aggregate"), body["aggregate"])
        pol_raw = as_section(reader, file, (*sub, "policies"), body.get("policies"))
        entry["policies"] = check_keys(
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
                    file, (*sub, "slice_name"), f"got {show(name)}, expected letters, digits and '_' (at most 32)"
                )
            else:
                entry["slice_name"] = name
        config.overrides[login] = entry  # file entries replace inline ones of the same login


def _read_exemptions(reader: Reader, config: Config) -> None:
    file = os.path.join(config.directory, EXEMPTIONS_FILE)
    data = reader.load_yaml(file, required=False)
    if data is None:
        return
    config.files.append(file)
    top = as_section(reader, file, (), data)
    for key in top:
        if key != "exemptions":
            reader.problem(file, (key,), "unknown key" + did_you_mean(key, ["exemptions"]))
    items = top.get("exemptions") or []
    if not isinstance(items, list):
        reader.problem(file, ("exemptions",), "expected a list of exemptions")
        return
    for index, item in enumerate(items):
        path = ("exemptions", index)
        if not isinstance(item, dict):
            reader.problem(file, path, f"got {show(item)}, expected a mapping with username, exempt_from, expires_on")
            continue
        ok = True
        for key in item:
            if key not in EXEMPTION_KEYS:
                reader.problem(file, (*path, key), "unknown key" + did_you_mean(key, EXEMPTION_KEYS))
                ok = False
        username = item.get("username")
        if not identity.valid_login(username):
            reader.problem(file, (*path, "username"), f"got {show(username)}, expected a login name")
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
                        f"got {show(what)}, expected one of {', '.join(EXEMPTABLE)}",
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
                    f"got {show(expires)}, expected an ISO date or time such as 2026-12-31T23:59:59Z, "
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
