"""``ds01 access``: time-bounded bare-metal GPU grants (reference §7.3, without its ``at`` jobs).

A grant is a file ``<bare_metal_access.state_dir>/<login>.json`` in the format of
``profile.render_grant`` (the profile.d deterrent reads it at login). Grants expire by their
own ``expires_epoch``: no background job has to remember to remove them.

- ``ds01 access grant USER [--for 24h | --permanent]`` (admins): the user's next login shell sees GPUs.
- ``ds01 access revoke USER`` (admins).
- ``ds01 access status [USER] [--json]``: anyone, for themselves; admins for anyone.
- ``ds01 access list [--json]`` (admins).
- ``ds01 access sweep [--now ISO] [--dry-run] [--json]`` (admins): warn users whose grant ends within the
  hour and record grants that ended (``access_expiry``); ``ds01 lifecycle run`` does the same on its timer.

Grants live in a root-owned directory: an admin who is not root runs ``sudo ds01 access grant …``; without
it the command says so instead of failing half-way.

JSON shape of ``status``/``list``: ``{"schema_version": "1", "grants": [{"user", "type",
"granted_by", "granted_at", "expires_at", "active": bool}], "exempt": bool}`` (``exempt`` in
``status`` only: listed in ``bare_metal_access.exempt_users``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import sys
import time
from typing import Any

from .. import access_expiry, cli, events, fsutil, identity, profile
from .. import config as config_mod
from .. import grants as grants_mod
from . import table

SCHEMA_VERSION = "1"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("access", help="bare-metal GPU grants (outside containers)")
    actions = parser.add_subparsers(dest="access_action", metavar="ACTION")

    grant = actions.add_parser("grant", help="let USER use GPUs from login shells for a while (admins)")
    grant.add_argument("user")
    length = grant.add_mutually_exclusive_group()
    length.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="e.g. 90m, 24h, 7d (default: bare_metal_access.default_grant_duration_h)",
    )
    length.add_argument("--permanent", action="store_true", help="no expiry")
    cli.add_json_flag(grant)
    grant.set_defaults(func=cmd_grant)

    revoke = actions.add_parser("revoke", help="remove USER's grant (admins)")
    revoke.add_argument("user")
    revoke.set_defaults(func=cmd_revoke)

    status = actions.add_parser("status", help="your grant (admins: anyone's)")
    status.add_argument("user", nargs="?")
    cli.add_json_flag(status)
    status.set_defaults(func=cmd_status)

    listing = actions.add_parser("list", help="every grant (admins)")
    cli.add_json_flag(listing)
    listing.set_defaults(func=cmd_list)

    sweep = actions.add_parser("sweep", help="warn about grants ending within the hour, record ended ones (admins)")
    sweep.add_argument("--now", metavar="ISO", help="decide as if it were this time (e.g. 2026-11-22T18:00:00Z)")
    sweep.add_argument("--dry-run", action="store_true", help="list what would be said; write and send nothing")
    cli.add_json_flag(sweep)
    sweep.set_defaults(func=cmd_sweep)
    parser.set_defaults(func=lambda ctx: (parser.print_help(), cli.EXIT_USAGE)[1])


def _caller() -> tuple[int, str]:
    uid = os.getuid()
    return uid, identity.login_of_uid(uid) or str(uid)


def _require_admin(config: config_mod.Config, what: str) -> str:
    uid, login = _caller()
    if not identity.is_admin(login, uid, config.admin_group, config.admin_users):
        raise cli.CommandError(
            f"only admins (root or the {config.admin_group} group) can {what}; ask one of them.", cli.EXIT_NO
        )
    return login


def _grant_dir(config: config_mod.Config) -> str:
    return config.section("bare_metal_access")["state_dir"]


def _not_writable(path: str, exc: OSError, what: str) -> cli.CommandError:
    reason = exc.strerror or str(exc)
    return cli.CommandError(
        f"cannot {what} {path} ({reason}): grants live in a root-owned directory, "
        f"so run the command as root (`sudo ds01 access ...`). Nothing was changed.",
        cli.EXIT_FAULT,
    )


def _log(config: config_mod.Config, event_type: str, user: str, **details: Any) -> None:
    events.EventLog(events.default_log_path(config)).write(event_type, user=user, source="ds01 access", **details)


def cmd_grant(ctx: cli.Context) -> int:
    config = ctx.config
    admin = _require_admin(config, "grant bare-metal GPU access")
    user = ctx.args.user
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise cli.CommandError(
            f"there is no account named '{user}' on this host; check the login name.", cli.EXIT_NO
        ) from None
    now = dt.datetime.now(dt.timezone.utc)
    if ctx.args.permanent:
        expires = None
    else:
        hours = config.section("bare_metal_access")["default_grant_duration_h"]
        seconds = hours * 3600
        if ctx.args.duration:
            try:
                seconds = config_mod.parse_duration_text(ctx.args.duration)
            except ValueError:
                raise cli.CommandError(
                    f"--for {ctx.args.duration!r}: give a duration with a unit, such as 90m, 24h or 7d.", cli.EXIT_USAGE
                ) from None
        expires = now + dt.timedelta(seconds=seconds)
    directory = _grant_dir(config)
    text = profile.render_grant(user, admin, now, expires)
    path = os.path.join(directory, f"{user}.json")
    try:
        os.makedirs(directory, mode=0o711, exist_ok=True)
        os.chmod(directory, 0o711)  # noqa: S103 - users open their own grant by name, cannot list others
        fsutil.atomic_write(path, text)
    except PermissionError as exc:
        raise _not_writable(path, exc, "write") from None
    _log(config, "access.grant", user, granted_by=admin, expires_at=json.loads(text)["expires_at"])
    data = {"schema_version": SCHEMA_VERSION, "grants": [{**json.loads(text), "active": True}]}
    until = "with no expiry" if expires is None else f"until {expires.strftime('%Y-%m-%d %H:%M UTC')}"
    ctx.emit(data, lambda _d: f"{user} may use GPUs outside containers {until}. They must open a new login shell.")
    return cli.EXIT_OK


def cmd_revoke(ctx: cli.Context) -> int:
    config = ctx.config
    admin = _require_admin(config, "revoke bare-metal GPU access")
    user = ctx.args.user
    if not identity.valid_login(user):
        raise cli.CommandError(f"'{user}' is not a login name.", cli.EXIT_USAGE)
    path = os.path.join(_grant_dir(config), f"{user}.json")
    try:
        os.unlink(path)
    except FileNotFoundError:
        sys.stdout.write(f"{user} had no grant; nothing to revoke.\n")
        return cli.EXIT_OK
    except PermissionError as exc:
        raise _not_writable(path, exc, "remove") from None
    _log(config, "access.revoke", user, revoked_by=admin, reason="manual")
    sys.stdout.write(f"{user}'s grant is revoked; their next login shell hides the GPUs again.\n")
    return cli.EXIT_OK


def cmd_status(ctx: cli.Context) -> int:
    config = ctx.config
    uid, login = _caller()
    user = ctx.args.user or login
    if user != login and not identity.is_admin(login, uid, config.admin_group, config.admin_users):
        raise cli.CommandError("you can only see your own grant; admins can see anyone's.", cli.EXIT_NO)
    if not identity.valid_login(user):
        raise cli.CommandError(f"'{user}' is not a login name.", cli.EXIT_USAGE)
    found = grants_mod.read(_grant_dir(config), user, time.time())
    grant = found.as_dict() if found is not None and found.doc else None
    exempt = user in config.gpu_exempt_users
    data = {"schema_version": SCHEMA_VERSION, "user": user, "exempt": exempt, "grants": [grant] if grant else []}

    def human(_d: dict) -> str:
        if exempt:
            return f"{user} is exempt: login shells see the GPUs."
        if grant and grant["active"]:
            until = grant.get("expires_at") or "no expiry"
            return f"{user} holds a bare-metal GPU grant (until {until})."
        if grant:
            return (
                f"{user}'s grant expired at {grant.get('expires_at')}; GPUs are for containers (ask an admin to renew)."
            )
        return f"{user} has no grant: GPUs are used from containers (`docker run --gpus 1 ...`)."

    ctx.emit(data, human)
    return cli.EXIT_OK


def cmd_list(ctx: cli.Context) -> int:
    config = ctx.config
    _require_admin(config, "list grants")
    directory = _grant_dir(config)
    now = time.time()
    grants = []
    try:
        logins = grants_mod.logins(directory)
    except PermissionError as exc:
        raise _not_writable(directory, exc, "list") from None
    for login in logins:
        found = grants_mod.read(directory, login, now)
        if found is not None and found.doc:
            grants.append(found.as_dict())
    data = {"schema_version": SCHEMA_VERSION, "grants": grants}

    def human(_d: dict) -> str:
        if not grants:
            return "No bare-metal GPU grants."
        rows = [
            (
                g.get("user") or "-",
                "active" if g["active"] else "expired",
                g.get("expires_at") or "permanent",
                g.get("granted_by") or "-",
            )
            for g in grants
        ]
        return table.render(("USER", "STATE", "UNTIL", "GRANTED BY"), rows)

    ctx.emit(data, human)
    return cli.EXIT_OK


def cmd_sweep(ctx: cli.Context) -> int:
    config = ctx.config
    _require_admin(config, "run the grant expiry sweep")
    if ctx.args.now:
        try:
            now = events.parse_time(ctx.args.now)
        except ValueError:
            raise cli.CommandError(
                f"--now {ctx.args.now!r} is not a time such as 2026-11-22T18:00:00Z; give an ISO time.", cli.EXIT_USAGE
            ) from None
    else:
        now = dt.datetime.now(dt.timezone.utc)
    report = access_expiry.run(config, now, dry_run=bool(ctx.args.dry_run))
    data = {"schema_version": SCHEMA_VERSION, **report}

    def human(_d: dict) -> str:
        if report.get("busy"):
            return "Another expiry sweep is running; it does the work."
        head = "would tell" if report["dry_run"] else "told"
        out = [f"{head} {a['user']}: {a['message']}" for a in report["actions"]]
        out.extend(f"FAILED: {e}" for e in report["errors"])
        out.append(f"{len(report['actions'])} grant notice(s).")
        return "\n".join(out)

    ctx.emit(data, human)
    return cli.EXIT_FAULT if report["errors"] else cli.EXIT_OK
