"""``ds01 events`` (query the audit trail), ``ds01 events log`` (append to it from a shell script) and
``ds01 events verify`` (check its hash chain).

Query::

    ds01 events [--user U] [--type PREFIX] [--container NAME|ID] [--since T] [--until T]
                [--limit N | --all] [--json]

Filters combine with AND; ``--type gpu`` matches ``gpu.allocate`` but not ``gpuxyz.a``; ``--container`` takes a
name or an id prefix; ``T`` is ISO-8601 (local time without a zone), ``now``, ``today``, ``yesterday`` or an age
(``30s``, ``15m``, ``2h``, ``7d``, ``1w``); ``since <= time < until``. The last ``--limit`` (default 50) matching
events are shown, oldest first; ``--all`` shows every match. Rotated plain files (``events.jsonl.1``,
``events.jsonl-YYYYMMDD``) are read when ``--since`` reaches back before their last write.

Who reads what: whoever can read the log (root, the admin group) reads it. A non-admin, who cannot, reads their
own view instead (``event_views``: the events whose ``user`` is their login, copied by the exporter every minute
into ``<state_dir>/events-by-user/<login>.jsonl``, which only they and root can read), with the same filters and
output; one line on stderr says so and gives the time of the last refresh, and ``--user`` naming someone else
exits 1.

``ds01 events --json`` (stable, schema "1")::

    {"schema_version": "1", "count": N, "skipped_lines": K,
     "events": [{"timestamp": "2026-11-22T12:00:00.123Z", "event_type": "gpu.allocate",
                 "schema_version": "1", "user"?: "alice", "source"?: "gateway", "details"?: {...}}, ...]}

From one's own view the document also has ``"view": {"user": login, "refreshed_at": ISO}``.
``events`` are envelopes as ``events.py`` writes them (older upstream lines normalised to that shape, with
their own ``schema_version``), oldest first; ``count`` is ``len(events)``; ``skipped_lines`` counts blank or
unparseable lines met while reading.

Chain check (admins; the log is theirs to read)::

    ds01 events verify [--json]

reads the log and its rotated files (compressed ones too) and checks every line's link to the one before it
(``events.verify_chain``). Exit 0 when intact (lines written before the chain existed are named as unchained, not
failed), 1 when broken, naming the first line that was edited, inserted or removed, or a cut head; 3 when a file
cannot be read. ``--json``: ``{"schema_version": "1", "ok", "status": "intact|broken|empty|unchained", "files",
"lines", "chained", "unlocked", "begins", "unchained", "broken": {"file", "line", "what", "message"} | null,
"message"}``.

Writer for shell callers::

    ds01 events log TYPE [--user U] [--source S] [KEY=VALUE ...]

Values are JSON-decoded when they parse (``n=3`` is a number, ``ok=true`` a boolean), else kept as text;
``user=…`` and ``source=…`` pairs set the envelope fields as upstream's ``ds01_events.py log`` did. It exits 0
even when the event could not be recorded (a warning goes to stderr), so a ``set -e`` script never dies for the
audit trail; only malformed arguments exit 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import zlib
from typing import Any, Optional

from .. import cli, event_views, events, identity
from .. import config as config_mod
from ..record import replace
from . import table

SCHEMA_VERSION = "1"
DEFAULT_LIMIT = 50


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "events",
        help="query the event log (audit trail); `events log` appends to it",
        description="Show the last matching events of the audit trail (timestamps in UTC).",
        usage=(
            "ds01 events [--user U] [--type PREFIX] [--container C] [--since T] [--until T] [--limit N | --all] "
            "[--json]\n       ds01 events log TYPE [--user U] [--source S] [KEY=VALUE ...]"
            "\n       ds01 events verify [--json]"
        ),
    )
    parser.add_argument("--user", metavar="U", help="only events of this login (exact)")
    parser.add_argument(
        "--type", metavar="PREFIX", dest="type_prefix", help="event type prefix, e.g. gpu or gpu.allocate"
    )
    parser.add_argument("--container", metavar="C", help="a container name, or an id prefix")
    parser.add_argument("--since", metavar="T", help="from this time: ISO-8601, now, today, yesterday, 30m, 2h, 7d …")
    parser.add_argument("--until", metavar="T", help="before this time (same forms as --since)")
    count = parser.add_mutually_exclusive_group()
    count.add_argument(
        "--limit", metavar="N", type=_positive_int, default=DEFAULT_LIMIT, help="the last N matches (default 50)"
    )
    count.add_argument("--all", action="store_true", help="every match, no limit")
    cli.add_json_flag(parser)
    parser.set_defaults(func=cmd_query)

    actions = parser.add_subparsers(dest="events_action", metavar="ACTION")
    writer = actions.add_parser(
        "log",
        help="append one event (for shell scripts; exits 0 even when it could not be recorded)",
        description="Append one event to the audit trail. Exits 0 even when it could not be recorded.",
    )
    writer.add_argument("event_type", metavar="TYPE", help="category.action, e.g. maintenance.idle_kill")
    writer.add_argument("--user", dest="log_user", metavar="U", help="the login the event is about")
    writer.add_argument("--source", dest="log_source", metavar="S", help="the component recording it")
    # REMAINDER: `--user U` may also come after the pairs (argparse cannot intermix a `*` positional with options)
    writer.add_argument(
        "pairs", nargs=argparse.REMAINDER, metavar="KEY=VALUE", help="details; values are JSON when they parse"
    )
    writer.set_defaults(func=cmd_log)

    checker = actions.add_parser(
        "verify",
        help="check the audit trail's hash chain (exit 1 names the first edited, inserted or removed line)",
        description=(
            "Check the hash chain of the event log and its rotated files. Exit 0: intact (or written before the "
            "chain existed); 1: broken, with the first line that was edited, inserted or removed, or a cut head; "
            "3: a file could not be read."
        ),
    )
    checker.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print a stable JSON document instead of text"
    )
    checker.set_defaults(func=cmd_verify)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more (use --all for every event)")
    return value


# -- query -------------------------------------------------------------------------------------------


def _time(option: str, value: Optional[str]) -> Any:
    if value is None:
        return None
    try:
        return events.parse_time(value)
    except ValueError as exc:
        raise cli.CommandError(f"{option}: {exc}", cli.EXIT_USAGE) from None


def _unreadable(path: str, exc: OSError, admin_group: str) -> cli.CommandError:
    if isinstance(exc, PermissionError):
        return cli.CommandError(
            f"cannot read {path}: permission denied (the event log is readable by root and the {admin_group} group)",
            cli.EXIT_FAULT,
        )
    return cli.CommandError(f"cannot read {path}: {exc.strerror or exc}", cli.EXIT_FAULT)


def cmd_query(ctx: cli.Context) -> int:
    args = ctx.args
    since = _time("--since", args.since)
    until = _time("--until", args.until)
    if since is not None and until is not None and since >= until:
        raise cli.CommandError(
            f"--since ({events.format_timestamp(since)}) is not before --until ({events.format_timestamp(until)})",
            cli.EXIT_USAGE,
        )
    filters = events.EventFilter(
        user=args.user,
        type_prefix=args.type_prefix,
        container=args.container,
        since=since,
        until=until,
        limit=None if args.all else args.limit,
    )
    path = events.default_log_path(ctx.config)
    own = _own_view(ctx.config, path, args.user)
    if own is not None:
        return _query_view(ctx, own, filters)
    stream = events.EventLog(path).read(filters)
    try:
        found = list(stream)
    except OSError as exc:
        where = exc.filename if isinstance(exc.filename, str) else path  # a rotated file, or the log itself
        raise _unreadable(where, exc, getattr(ctx.config, "admin_group", None) or "ds01-admin") from None
    data = {
        "schema_version": SCHEMA_VERSION,
        "count": len(found),
        "skipped_lines": stream.skipped_lines,
        "events": found,
    }
    if stream.skipped_lines and not ctx.json:
        sys.stderr.write(f"ds01: skipped {stream.skipped_lines} unreadable line(s) in {', '.join(stream.files)}\n")
    if not found and not ctx.json and not os.path.exists(path):
        sys.stderr.write(f"ds01: {path} does not exist yet: nothing has been recorded\n")
    ctx.emit(data, render_table)
    return cli.EXIT_OK


def _own_view(config: Any, path: str, asked: Optional[str]) -> Optional[str]:
    """The caller's login when they read their own view instead of the log: a non-admin who cannot read it."""
    if os.access(path, os.R_OK):
        return None
    uid = os.getuid()
    login = identity.login_of_uid(uid)
    if identity.is_admin(login, uid, config.admin_group, config.admin_users):
        return None
    if login is None:
        raise cli.CommandError(
            f"uid {uid} has no login name, so it has no events of its own; ask an admin", cli.EXIT_NO
        )
    if asked is not None and asked != login:
        raise cli.CommandError(f"only admins may see another user's events; you are {login}", cli.EXIT_NO)
    return login


def _query_view(ctx: cli.Context, login: str, filters: events.EventFilter) -> int:
    """``ds01 events`` from the caller's own view (``event_views``), in the log's output format."""
    state_dir = ctx.config.paths.state_dir
    when = event_views.refreshed_at(state_dir)
    if when is None:
        raise cli.CommandError(
            "your own events are not prepared yet: the ds01-exporter service writes each user's view every "
            "minute (the event log itself is readable by admins only); if this persists, ask an admin",
            cli.EXIT_FAULT,
        )
    filters = replace(filters, user=login)
    stream = event_views.read_view(state_dir, login, filters)
    try:
        found = list(stream)
    except OSError as exc:
        raise cli.CommandError(
            f"cannot read your events in {event_views.view_path(state_dir, login)}: {exc.strerror or exc}; "
            "ask an admin",
            cli.EXIT_FAULT,
        ) from None
    stamp = events.format_timestamp(when)
    age_min = (dt.datetime.now(dt.timezone.utc) - when).total_seconds() / 60
    stale = (
        f" (over {event_views.STALE_MIN} min old: the ds01-exporter service may be down)"
        if age_min > event_views.STALE_MIN
        else ""
    )
    sys.stderr.write(f"ds01: showing your own events ({login}) as of the last refresh, {stamp}{stale}\n")
    data = {
        "schema_version": SCHEMA_VERSION,
        "count": len(found),
        "skipped_lines": stream.skipped_lines,
        "events": found,
        "view": {"user": login, "refreshed_at": stamp},
    }
    ctx.emit(data, render_table)
    return cli.EXIT_OK


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) and '"' not in value else json.dumps(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def render_table(data: dict) -> str:
    """``TIMESTAMP  EVENT_TYPE  USER  CONTAINER  k=v …`` in aligned columns."""
    rows = []
    for event in data["events"]:
        details = event.get("details") if isinstance(event.get("details"), dict) else {}
        container = events.container_of(event)
        shown = {
            key: value for key, value in details.items() if not (key in events.CONTAINER_KEYS and value == container)
        }
        rows.append(
            (
                str(event.get("timestamp") or "-"),
                str(event.get("event_type") or "-"),
                str(event.get("user") or "-"),
                container or "-",
                " ".join(f"{key}={_value_text(value)}" for key, value in shown.items()),
            )
        )
    if not rows:
        return "no matching events"
    return table.render(("TIMESTAMP", "EVENT_TYPE", "USER", "CONTAINER", "DETAILS"), rows)


# -- verify ------------------------------------------------------------------------------------------


def verify_report(config: Any) -> dict:
    """``events.verify_chain`` of the configured log, as the JSON document of ``ds01 events verify --json``.

    Raises ``OSError`` (a file that cannot be read) and ``EOFError``/``zlib.error`` (a damaged ``.gz``)."""
    report = events.verify_chain(events.default_log_path(config))
    return {"schema_version": SCHEMA_VERSION, **report.to_dict()}


def cmd_verify(ctx: cli.Context) -> int:
    path = events.default_log_path(ctx.config)
    try:
        data = verify_report(ctx.config)
    except OSError as exc:
        where = exc.filename if isinstance(exc.filename, str) else path
        raise _unreadable(where, exc, getattr(ctx.config, "admin_group", None) or "ds01-admin") from None
    except (EOFError, zlib.error) as exc:
        raise cli.CommandError(f"cannot read a compressed rotated file of {path}: {exc}", cli.EXIT_FAULT) from None
    ctx.emit(data, render_verify)
    return cli.EXIT_OK if data["ok"] else cli.EXIT_NO


def render_verify(data: dict) -> str:
    if data["ok"]:
        return data["message"]
    broken = data["broken"]
    return f"BROKEN at {broken['file']} line {broken['line']} ({broken['what']}): {data['message']}"


# -- log ---------------------------------------------------------------------------------------------


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


_LOG_OPTIONS = {"--user": "user", "--source": "source"}


def parse_pairs(words: list[str]) -> tuple[dict, dict]:
    """``(options, details)`` from the words after TYPE: ``--user U``/``--source S`` and ``KEY=VALUE`` pairs.

    ``["n=3", "name=alice", "--user", "bob"]`` → ``({"user": "bob"}, {"n": 3, "name": "alice"})``;
    ``ValueError`` for anything else.
    """
    options: dict[str, str] = {}
    details: dict[str, Any] = {}
    words = list(words)
    while words:
        word = words.pop(0)
        if word.startswith("-"):
            name, sep, value = word.partition("=")
            if name not in _LOG_OPTIONS:
                raise ValueError(f"unknown option {name} (only --user and --source)")
            if not sep:
                if not words:
                    raise ValueError(f"{name} needs a value")
                value = words.pop(0)
            options[_LOG_OPTIONS[name]] = value
            continue
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"{word!r} is not KEY=VALUE")
        details[key] = _decode(value)
    return options, details


def cmd_log(ctx: cli.Context) -> int:
    args = ctx.args
    try:
        options, details = parse_pairs(args.pairs)
    except ValueError as exc:
        raise cli.CommandError(f"events log: {exc}", cli.EXIT_USAGE) from None
    user = options.get("user", args.log_user)
    source = options.get("source", args.log_source)
    # upstream's `ds01_events.py log TYPE user=… source=… k=v` form
    if user is None and "user" in details:
        user = str(details.pop("user"))
    if source is None and "source" in details:
        source = str(details.pop("source"))
    try:
        path = events.default_log_path(ctx.config)
    except config_mod.ConfigError as exc:
        sys.stderr.write(f"ds01: warning: event {args.event_type} not recorded: the configuration is invalid\n")
        sys.stderr.write(exc.render() + "\n")
        return cli.EXIT_OK
    if not events.EventLog(path).write(args.event_type, user=user, source=source, **details):
        sys.stderr.write(
            f"ds01: warning: event {args.event_type} not recorded in {path} (see the message above); continuing\n"
        )
    return cli.EXIT_OK
