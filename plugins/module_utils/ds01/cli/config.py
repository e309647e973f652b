"""``ds01 config check`` and ``ds01 config show USER``.

JSON shapes (stable, schema "1"):

``ds01 config check --json``::

    {"schema_version": "1", "ok": bool, "config": "<path>", "files": ["<path>", ...],
     "problems": [{"file", "line", "key", "message"}, ...], "warnings": ["<sentence>", ...],
     "users": <number of known logins>, "groups": ["student", ...]}

``ds01 config show USER --json``: ``{"schema_version": "1", "config": "<path>"}`` plus the
fields of ``Limits.as_dict()``: ``user, group, sanitized, slice, override, listed,
safe_defaults, limits{…}, aggregate{…}|null, policies{…}, container_types{…}, group_container_types{…},
exemptions[…], sources{key: "builtin"|"defaults"|"group:<name>"|"override"|"policies"}``, plus
``lifecycle_by_type{type: {idle_timeout_h, idle_timeout_h_from, max_runtime_h, max_runtime_h_from,
sigterm_grace_s, sigterm_grace_s_from}}`` (what the lifecycle enforces) and ``rule`` (the sentence
saying which value applies). Sizes are bytes,
durations are in the unit their key names, null means unlimited.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pwd
import sys
from typing import Any

from .. import cli
from .. import config as config_mod
from . import table

SCHEMA_VERSION = "1"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="check the configuration, show a user's limits")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION")

    check = actions.add_parser("check", help="validate resource-limits.yaml and its companion files")
    cli.add_json_flag(check)
    check.set_defaults(func=cmd_check)

    show = actions.add_parser("show", help="the resolved limits of a user, with where each value came from")
    show.add_argument("user", nargs="?", help="login name (default: you)")
    cli.add_json_flag(show)
    show.set_defaults(func=cmd_show)

    imported = actions.add_parser(
        "import", help="print the ds01_common variables for an earlier ds01-infra config directory"
    )
    imported.add_argument("directory", help="the old config directory (its resource-limits.yaml, groups/, ...)")
    cli.add_json_flag(imported)
    imported.set_defaults(func=cmd_import)

    rollback = actions.add_parser("rollback", help="put back the configuration the last deploy replaced")
    cli.add_json_flag(rollback)
    rollback.set_defaults(func=cmd_rollback)

    parser.set_defaults(func=lambda ctx: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return cli.EXIT_USAGE


def cmd_check(ctx: cli.Context) -> int:
    path = os.path.abspath(ctx.config_path)
    try:
        config = config_mod.load_config(path)
    except config_mod.ConfigError as exc:
        rendered = exc.render()
        data = {
            "schema_version": SCHEMA_VERSION,
            "ok": False,
            "config": path,
            "files": [],
            "problems": [p.as_dict() for p in exc.problems],
            "warnings": [],
            "users": None,
            "groups": [],
        }
        ctx.emit(data, lambda _d: rendered)
        return cli.EXIT_NO
    data = {
        "schema_version": SCHEMA_VERSION,
        "ok": True,
        "config": path,
        "files": config.files,
        "problems": [],
        "warnings": config.warnings,
        "users": len(config.known_users()),
        "groups": list(config.groups),
    }

    def human(d: dict) -> str:
        lines = [
            f"ds01: {d['config']} is valid: {len(d['groups'])} groups ({', '.join(d['groups'])}), "
            f"{d['users']} listed users, {len(d['files'])} files read."
        ]
        lines += [f"  warning: {w}" for w in d["warnings"]]
        return "\n".join(lines)

    ctx.emit(data, human)
    return cli.EXIT_OK


def _current_login() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


def cmd_show(ctx: cli.Context) -> int:
    login = ctx.args.user or _current_login()
    config = ctx.config
    limits = config.resolve(login)
    data = {"schema_version": SCHEMA_VERSION, "config": config.path, **limits.as_dict()}
    data["lifecycle_by_type"] = limits.lifecycle_table()
    data["rule"] = config_mod.RULE
    ctx.emit(data, lambda _d: render_limits(limits))
    return cli.EXIT_OK


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "off" if key == "pre_stop_signal" else "unlimited"
    if key in ("memory", "memory_swap", "shm_size"):
        return config_mod.format_size(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:g}"
        for suffix in ("_h", "_m", "_s"):
            if key.endswith(suffix):
                return text + suffix[1]
        return text
    if isinstance(value, (list, tuple)):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def render_limits(limits: config_mod.Limits) -> str:
    """The human view of ``config show``: value and source per line."""
    where = "listed" if limits.listed else f"not listed, so the default group '{limits.group}'"
    lines = [
        f"User {limits.user}: group {limits.group} ({where})"
        + (", with a personal override" if limits.is_override else ""),
        f"  systemd slice: {limits.slice_name}",
        "",
        "  Limits (source in brackets):",
    ]
    # the three key/value/source lists share one table, so their columns line up
    limit_rows = [
        (key, _fmt(key, getattr(limits, key)), f"[{limits.sources.get(key, '?')}]") for key in config_mod.LIMIT_KEYS
    ]
    aggregate_rows = [
        (key, _fmt(key, value), f"[{limits.sources.get('aggregate.' + key, 'unset')}]")
        for key, value in (limits.aggregate.as_dict().items() if limits.aggregate is not None else ())
    ]
    policy_rows = [
        (key, _fmt(key, value), f"[{limits.sources.get('policies.' + key, 'builtin')}]")
        for key, value in limits.policies.as_dict().items()
    ]
    laid = iter(table.lines(None, [*limit_rows, *aggregate_rows, *policy_rows]))
    lines.extend("    " + next(laid) for _row in limit_rows)
    lines.append("")
    if limits.aggregate is None:
        lines.append("  Per-user totals (slice): none (no aggregate block: accounting only)")
    else:
        lines.append(
            "  Per-user totals (slice):"
            + ("" if limits.slice_caps else " NOT ENFORCED (enforcement.aggregate_limits is false: accounting only)")
        )
        lines.extend("    " + next(laid) for _row in aggregate_rows)
    lines.append("")
    lines.append("  Lifecycle policies:")
    lines.extend("    " + next(laid) for _row in policy_rows)
    lines.append("")
    lines.append("  Lifecycle by container type (value [where it is written]):")
    type_rows = [
        (name, ", ".join(f"{key} {_fmt(key, row[key])} [{row[key + '_from']}]" for key in config_mod.TYPE_KEYS))
        for name, row in limits.lifecycle_table().items()
    ]
    lines.extend("    " + line for line in table.lines(None, type_rows))
    lines.append("    " + config_mod.RULE)
    now = dt.datetime.now(dt.timezone.utc)
    if limits.exemptions:
        lines.append("")
        lines.append("  Lifecycle exemptions:")
        for exemption in limits.exemptions:
            state = "active" if exemption.active(now) else "expired"
            until = exemption.expires_on.isoformat() if exemption.expires_on else "permanent"
            scope = f" (container {exemption.container})" if exemption.container else ""
            lines.append(f"    {', '.join(sorted(exemption.exempt_from))}{scope}: {state}, until {until}")
    return "\n".join(lines)


def cmd_import(ctx: cli.Context) -> int:
    """``ds01 config import DIR``: the variables on stdout (YAML), every change of meaning on stderr.

    ``--json``: one document ``{"schema_version", "directory", "variables", "changes": [{where, key, old, new}]}``.
    """
    from .. import migrate

    try:
        variables, changes = migrate.import_directory(ctx.args.directory)
    except migrate.MigrationError as exc:
        raise cli.CommandError(f"{exc}. Nothing was imported.", cli.EXIT_USAGE) from None
    if ctx.json:
        data = {
            "schema_version": SCHEMA_VERSION,
            "directory": os.path.abspath(ctx.args.directory),
            "variables": variables,
            "changes": [c.as_dict() for c in changes],
        }
        ctx.emit(data, str)
        return cli.EXIT_OK
    sys.stdout.write(migrate.to_yaml(variables))
    if changes:
        sys.stderr.write(f"ds01: {len(changes)} key(s) change meaning (old meaning; what ds01 does with the import):\n")
        sys.stderr.write("".join(f"  - {c}\n" for c in changes))
    return cli.EXIT_OK


def cmd_rollback(ctx: cli.Context) -> int:
    """``ds01 config rollback``: the kept previous configuration becomes the live one, once it has been checked."""
    from .. import rollback

    try:
        result = rollback.rollback(ctx.config_path)
    except rollback.RollbackRefused as exc:
        raise cli.CommandError(f"{exc}", cli.EXIT_NO) from None
    except OSError as exc:
        raise cli.CommandError(
            f"cannot roll back ({exc.strerror}: {exc.filename}); run it as root. Nothing was changed.", cli.EXIT_FAULT
        ) from None
    ctx.emit({"schema_version": SCHEMA_VERSION, **result}, lambda d: d["message"])
    return cli.EXIT_OK
