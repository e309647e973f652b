"""``ds01 lifecycle run [--dry-run] [--json] [--now ISO] [--only-label KEY=VALUE]``: one lifecycle sweep.

Run by ``ds01-lifecycle.timer`` every 5 minutes (role ds01_runtime_units). ``--dry-run`` lists
the decisions and changes nothing (no state, no notice, no signal, no event). ``--now`` replaces
the clock of the *policy* (tests, "what would happen at 18:00?"); activity rates are still measured
over real seconds.

JSON (schema "1")::

    {"schema_version": "1", "now": ISO, "dry_run": bool, "demand": float|null,
     "containers": [{"id", "name", "owner", "state", "type", "gpu": bool,
                     "actions": [{"kind", "rule", "reason", "event", "grace_s"?, "signal"?, "notice"?}],
                     "notes": [str], "skipped": str|null}],
     "errors": [{"id", "container", "step", "error"}],
     "summary": {"containers", "actions", "stops", "removes", "notices", "errors", "wall_s", "cpu_s"}}

``errors`` also lists each lifecycle event that could not be written to the event log (step ``event``: the
action was done, its record is lost and counted in ``<run_dir>/events-dropped/lifecycle.json``) and each
failure of the bare-metal grant pass (step ``bare-metal grants``).

Exit status: 0, or 3 when a container could not be handled or an event could not be recorded (it is logged and
in ``errors``; the sweep still handled every other container), or when Docker cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from typing import Any, Optional

from .. import access_expiry, cli, docker, events, fsutil, logs, notify
from .. import lifecycle as lc
from . import table

log = logs.get(__name__)
LOCK_NAME = "lifecycle.lock"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("lifecycle", help="idle/runtime enforcement and cleanup of containers")
    actions = parser.add_subparsers(dest="lifecycle_action", metavar="ACTION")
    run = actions.add_parser(
        "run",
        help="one sweep: warn, stop and remove idle or overdue containers (the timer runs it every 5 minutes)",
    )
    run.add_argument("--dry-run", action="store_true", help="list the decisions; change, send and record nothing")
    run.add_argument("--now", metavar="ISO", help="decide as if it were this time (e.g. 2026-11-22T18:00:00Z)")
    run.add_argument(
        "--only-label",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="look only at containers carrying this label (repeatable; e.g. one project, or a test's own containers)",
    )
    cli.add_json_flag(run)
    run.set_defaults(func=cmd_run)
    parser.set_defaults(func=lambda ctx: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return cli.EXIT_USAGE


def _parse_now(text: Optional[str]) -> dt.datetime:
    if not text:
        return dt.datetime.now(dt.timezone.utc)
    when = lc.parse_time(text)
    if when is None:
        raise cli.CommandError(f"--now {text!r} is not an ISO time such as 2026-11-22T18:00:00Z", cli.EXIT_USAGE)
    return when


def docker_client() -> Any:
    try:
        client = docker.client_from_env(30)
        client.ping()
    except docker.DockerStateError as exc:
        raise cli.CommandError(f"{exc}; nothing was changed", cli.EXIT_FAULT) from exc
    except docker.DOCKER_ERRORS as exc:
        raise cli.CommandError(f"cannot reach Docker ({exc}); nothing was changed", cli.EXIT_FAULT) from exc
    return client


def event_emitter(config: Any, lost: Optional[list] = None) -> Any:
    """``emit(event_type, user=…, **details)`` onto the event log.

    Each event that could not be written is appended to ``lost`` as an ``errors`` entry of the report.
    """
    event_log = events.EventLog(events.default_log_path(config))

    def emit(event_type: str, user: Optional[str] = None, **details: Any) -> None:
        if not event_log.write(event_type, user=user, source="lifecycle", **details):
            log.warning("event %s could not be recorded", event_type)
            if lost is not None:
                container = details.get("container") or details.get("container_name")
                lost.append(
                    {
                        "id": details.get("container_id"),
                        "container": container if isinstance(container, str) else None,
                        "step": "event",
                        "error": f"{event_log.last_error}; the action itself was done (see the journal), "
                        "free space on or remount the log's file system",
                    }
                )

    return emit


def cmd_run(ctx: cli.Context) -> int:
    now = _parse_now(ctx.args.now)
    config = ctx.config
    faults: list = []  # events that could not be written, grant notices that failed: reported in ``errors``
    if not ctx.args.dry_run:  # bare-metal grants: warned an hour ahead, their end recorded; needs no Docker
        lost_before = events.dropped_in_process().get("lifecycle", 0)
        for error in access_expiry.run(config, now, source="lifecycle")["errors"]:
            log.warning("bare-metal grants: %s", error)
            faults.append({"id": None, "container": None, "step": "bare-metal grants", "error": str(error)})
        lost = events.dropped_in_process().get("lifecycle", 0) - lost_before
        if lost:
            faults.append(
                {
                    "id": None,
                    "container": None,
                    "step": "event",
                    "error": f"{lost} bare-metal grant event(s) could not be written to "
                    f"{events.default_log_path(config)}; free space on or remount the log's file system",
                }
            )
    client = docker_client()
    ops = lc.DockerOps(client, filters={"label": list(ctx.args.only_label)} if ctx.args.only_label else None)
    gpu = lc.gpu_probe_from_config(config)
    dry = bool(ctx.args.dry_run)
    if dry:
        report = lc.run_sweep(config, ops, now, dry_run=True, gpu=gpu)
    else:
        notifier = notify.Notifier(client, spool_dir=notify.spool_dir(config.paths.state_dir))
        with fsutil.FileLock(os.path.join(config.paths.run_dir, LOCK_NAME), mode=0o644, wait_s=0) as lock:
            if not lock.acquired:
                raise cli.CommandError("another lifecycle sweep is running; try again in a moment", cli.EXIT_FAULT)
            report = lc.run_sweep(config, ops, now, gpu=gpu, notifier=notifier, emit=event_emitter(config, faults))
    report.errors.extend(faults)
    ctx.emit(report.as_dict(), _human)
    return cli.EXIT_FAULT if report.errors else cli.EXIT_OK


def _human(data: dict) -> str:
    head = "would" if data["dry_run"] else "did"
    rows = []
    for item in data["containers"]:
        who = f"{item['name']} ({item['owner'] or 'no owner'}, {item['state']})"
        rows.extend((head, action["kind"], f"{who}: {action['reason']}") for action in item["actions"])
    out = table.lines(None, rows, gap=" ")
    for error in data["errors"]:
        out.append(f"FAILED {error['step']} {error['container']}: {error['error']}")
    summary = data["summary"]
    demand = f", GPU demand {data['demand']:.0%}" if data.get("demand") is not None else ""
    out.append(
        f"{summary['containers']} containers checked at {data['now']}{demand}: "
        f"{summary['actions']} actions ({summary['stops']} stops, {summary['removes']} removals, "
        f"{summary['notices']} notices), {summary['errors']} errors"
        + (" — dry run, nothing changed" if data["dry_run"] else "")
    )
    return "\n".join(out)
