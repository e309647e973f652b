"""``ds01 exporter serve``, ``ds01 limits``, ``ds01 why``, ``ds01 alerts run``.

``ds01 exporter serve [--bind ADDR] [--port N] [--cache-s S]``
    The Prometheus exporter (``/metrics``, ``/health``; defaults from the config's ``monitoring``
    section). A background refresh rebuilds the snapshot every ``--cache-s`` seconds (scrapes only
    read it); after each refresh the quota-alert pass runs and, when GPU holdings changed (or
    every 5 minutes), ``allocator.sync_job_mapping`` rewrites dcgm-exporter's job mapping; at most every
    minute, ``greetings.GreetingPass`` pre-renders each user's login greeting (``<state_dir>/greetings/<login>``).

``ds01 limits [USER] [--brief] [--json]``
    Quota and current usage side by side. Non-admins may ask about themselves only. ``--brief`` is
    the greeting's one line (logins print the exporter's pre-rendered copy, see ``greetings``); it reads
    no Docker and no NVML while the detector's inventory is fresh. JSON (schema "1")::

        {"schema_version": "1", "user", "group", "listed": bool, "note": str|null, "now": ISO,
         "source": "detector"|"docker"|"none",
         "gpu": {"used_gpueq", "quota_gpueq": float|null, "slots": int, "max_slots_per_container",
                 "allow_full_gpu": bool, "holders": [{"container", "state", "slots": [str], "gpueq"}]},
         "containers": {"count", "max": int|null, "items": [{"name", "state", "type", "gpueq"}]},
         "aggregate": {"slice", "slice_exists": bool, "capped": bool (false: enforcement.aggregate_limits is off),
                       "memory": {"used_bytes": int|null, "max_bytes": int|null, "high": str|null},
                       "cpu": {"quota": str|null, "usage_seconds": float|null},
                       "tasks": {"current": int|null, "max": int|str|null}, "oom_kills": int|null},
         "per_container": {"max_cpus", "memory_bytes", "shm_size_bytes", "pids_limit"},
         "lifecycle": {"idle_timeout_h", "max_runtime_h", "gpu_hold_after_stop_h",
                       "container_hold_after_stop_h",
                       "by_type": {type: {"idle_timeout_h", "idle_timeout_h_from", "max_runtime_h",
                                          "max_runtime_h_from", "sigterm_grace_s", "sigterm_grace_s_from"}}},
                       (by_type holds what the lifecycle enforces, by config.RULE; the top-level
                       idle_timeout_h/max_runtime_h are the user's own row, which a type may override)
         "exemptions": [{"username", "container", "exempt_from": [str], "expires_on", "category",
                         "reason", "approved_by", "approved_on"}],
         "bare_metal": {"exempt": bool, "grant": {"type", "granted_by", "granted_at", "expires_at",
                        "active": bool}|null, "gpu_on_host": bool},
         "notices": [{"at", "level", "title", "lines": [str], "quota", "container"}]  (the spool's
                    notices of the last 7 days, at most 10; with --brief only those not shown before),
         "alerts": [{"measure": "gpu"|"containers"|"memory", "level": 80|100, "used", "limit",
                     "sent_at", "sentence"}],
         "errors": [str]}

    ``--brief --json`` prints the same document.

``ds01 why [--json]``
    The caller's most recent refusal in plain words (from the private refusal record), with an
    estimate of when a suitable GPU frees up for ``NO_GPU_AVAILABLE`` and the containers to remove
    for quota refusals. Admins may add ``--user LOGIN``. JSON (schema "1")::

        {"schema_version": "1", "user", "now": ISO,
         "refusal": {"timestamp", "code", "message", "details": {}}|null,
         "explanation": str,
         "estimate": {"expected_free_at": ISO|null, "free_now": [slot], "holders": [{"container", "user",
                      "slots": [str], "gpueq", "expected_free_at": ISO|null, "reason"}]}|null,
         "remove": [{"name", "state", "gpueq", "slots": [str]}]}

    Other users' container names and logins are shown to admins only (``null`` otherwise).

``ds01 alerts run [--dry-run] [--json]``
    One quota-alert pass (the exporter runs the same after each refresh). JSON (schema "1")::

        {"schema_version": "1", "now": ISO, "dry_run": bool,
         "users": {login: {"alerts": [{"measure", "level", "used", "limit", "sent_at"}],
                           "delivered": [{"measure", "level", "sentence"}]}},
         "errors": [str]}

Exit codes: 0; 1 for a question a non-admin may not ask; 3 when a source failed (limits still
answers with what it could read and lists the failure in ``errors``).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from typing import Any, Optional

from .. import cli, docker, event_views, greetings, identity, logs, quota_alerts, refusals
from .. import observe as ob
from ..record import replace
from . import table

log = logs.get(__name__)

BRIEF_DOCKER_TIMEOUT_S = 0.5
DOCKER_TIMEOUT_S = 5.0
MAPPING_RESYNC_S = 300.0


def register(subparsers: Any) -> None:
    exp = subparsers.add_parser("exporter", help="the Prometheus exporter")
    exp_actions = exp.add_subparsers(dest="exporter_action", metavar="ACTION")
    serve = exp_actions.add_parser("serve", help="serve /metrics and /health (the ds01-exporter service)")
    serve.add_argument("--bind", help="address to listen on (default: monitoring.exporter_bind, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: monitoring.exporter_port, 9101; 0: any free port)")
    serve.add_argument("--cache-s", type=float, default=15.0, help="rebuild the snapshot at most this often")
    serve.set_defaults(func=cmd_serve)
    exp.set_defaults(func=lambda ctx: _usage(exp))

    lim = subparsers.add_parser("limits", help="your quota and current usage side by side")
    lim.add_argument("user", nargs="?", metavar="USER", help="another user (admins only)")
    lim.add_argument("--brief", action="store_true", help="one line (the login greeting)")
    cli.add_json_flag(lim)
    lim.set_defaults(func=cmd_limits)

    why = subparsers.add_parser("why", help="why was my last request refused, and what now?")
    why.add_argument("--user", help="another user's last refusal (admins only)")
    cli.add_json_flag(why)
    why.set_defaults(func=cmd_why)

    alerts = subparsers.add_parser("alerts", help="quota alerts at 80%% and 100%%")
    alert_actions = alerts.add_subparsers(dest="alerts_action", metavar="ACTION")
    run = alert_actions.add_parser("run", help="one quota-alert pass (cron/timer; the exporter runs it too)")
    run.add_argument("--dry-run", action="store_true", help="evaluate only: deliver, record and write nothing")
    cli.add_json_flag(run)
    run.set_defaults(func=cmd_alerts_run)
    alerts.set_defaults(func=lambda ctx: _usage(alerts))


def _usage(parser: Any) -> int:
    parser.print_help()
    return cli.EXIT_USAGE


# --------------------------------------------------------------------------------------------
# Who is asking
# --------------------------------------------------------------------------------------------


def _caller() -> tuple:
    uid = os.getuid()
    login = identity.login_of_uid(uid)
    if login is None:
        raise cli.CommandError(f"uid {uid} has no login name; ask an admin", cli.EXIT_NO)
    return login, uid


def _subject(ctx: cli.Context, asked: Optional[str]) -> tuple:
    """(login to report on, caller is admin)."""
    login, uid = _caller()
    config = ctx.config
    admin = identity.is_admin(login, uid, config.admin_group, config.admin_users)
    if asked and asked != login:
        if not admin:
            raise cli.CommandError(f"only admins may look at another user's limits; you are {login}", cli.EXIT_NO)
        if not identity.valid_login(asked):
            raise cli.CommandError(f"{asked!r} is not a login name", cli.EXIT_USAGE)
        return asked, admin
    return login, admin


# --------------------------------------------------------------------------------------------
# Gathering (edges)
# --------------------------------------------------------------------------------------------


def _saved_weights(config: Any) -> dict:
    path = os.path.join(config.paths.state_dir, ob.EXPORTER_SUBDIR, ob.SLOTS_FILE)
    try:
        data = ob.read_json(path) or {}
    except (OSError, ValueError):
        return {}
    return {slot: float(v.get("gpueq", 0.0)) for slot, v in (data.get("slots") or {}).items() if isinstance(v, dict)}


def _weights(config: Any, brief: bool, errors: list) -> tuple:
    """(slot → gpueq, slot table or None). Brief: the exporter's saved table only (no NVML)."""
    weights = _saved_weights(config)
    if brief:
        return weights, None
    try:
        table = ob.slot_table(ob.load_gpu_inventory(config))
    except Exception as exc:  # noqa: BLE001 - the GPU edge: limits still answers from the labels
        log.info("GPU inventory unavailable: %s", exc)
        errors.append(f"GPU inventory: {exc}")
        return weights, None
    return ob.slot_weights(table), table


def _docker(timeout: float) -> Any:
    """A reader of Docker (list and inspect): the standard-library engine client on a Unix socket."""
    return docker.reader_from_env(timeout)


def gather_holdings(config: Any, *, brief: bool, login: Optional[str], errors: list) -> tuple:
    """(containers as ``docker.ContainerInfo``, source, slot table or None, slot → gpueq weights):
    the detector's fresh inventory, else one Docker list call (filtered to ``login``'s label when given)."""
    weights, table = _weights(config, brief, errors)
    doc, _stamp = ob.read_detector_inventory(config, time.time())
    if doc is not None:
        return ob.containers_from_inventory(doc), "detector", table, weights
    try:
        client = _docker(BRIEF_DOCKER_TIMEOUT_S if brief else DOCKER_TIMEOUT_S)
        try:
            filters = {"label": f"ds01.user={login}"} if login else None
            summaries = client.api.containers(all=True, filters=filters)
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - the Docker edge: answer with what else is known
        log.info("Docker unavailable: %s", exc)
        errors.append(f"Docker: {exc}")
        return [], "none", table, weights
    return ob.containers_from_summaries(summaries), "docker", table, weights


def _slice_usage(limits: Any, brief: bool, errors: list) -> Optional[dict]:
    # No systemctl at login (--brief): systemd's naming rule says where the slice lives.
    reader = ob.SliceReader(control_group=lambda unit: None) if brief else None
    try:
        return ob.read_slices({limits.user: limits}, reader)[limits.user]
    except Exception as exc:  # noqa: BLE001 - the cgroup edge: the rest of the answer stands
        errors.append(f"slice: {exc}")
        return None


def build_limits(ctx: cli.Context, login: str, brief: bool) -> dict:
    config = ctx.config
    now = dt.datetime.now(dt.timezone.utc)
    errors: list = []
    limits = config.resolve(login)
    holdings, source, _table, weights = gather_holdings(config, brief=brief, login=login, errors=errors)
    mine = [h for h in holdings if h.owner == login]
    usage = _slice_usage(limits, brief, errors)
    alerts = quota_alerts.load_state(config.paths.state_dir, login)
    grant = ob.read_grant(config, login, now.timestamp())
    report = ob.limits_report(
        limits,
        mine=mine,
        weights=weights,
        slice_usage=usage,
        alerts=alerts,
        grant=grant,
        exempt_bare_metal=login in config.gpu_exempt_users,
        now=now,
        source=source,
        errors=errors,
    )
    report["notices"] = recent_notices(config, login, now, new_only=brief)
    return report


NOTICE_DAYS = greetings.NOTICE_DAYS
NOTICE_MAX = greetings.NOTICE_MAX


def _seen_marker() -> Optional[str]:
    home = os.environ.get("HOME")
    return os.path.join(home, greetings.SEEN_MARKER) if home else None


def recent_notices(config: Any, login: str, now: dt.datetime, *, new_only: bool) -> list:
    """The caller's spooled notices: those of the last NOTICE_DAYS days, or (``new_only``, ``--brief``)
    those not shown before. Either way the caller's own notices count as shown afterwards (the seen marker
    the login greeting compares with)."""
    from .. import notify

    path = notify.spool_path(notify.spool_dir(config.paths.state_dir), login)
    mine = login == identity.login_of_uid(os.getuid())
    marker = _seen_marker() if mine else None
    since = ob.iso(now - dt.timedelta(days=NOTICE_DAYS))
    if marker and new_only:
        try:
            with open(marker, encoding="utf-8") as handle:
                since = max(since, handle.read().strip())
        except OSError:
            pass
    notices = notify.read_spool(path, since)[-NOTICE_MAX:]
    if marker and notices:
        try:
            os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
            with open(marker, "w", encoding="utf-8") as handle:
                handle.write(notices[-1]["at"] + "\n")
        except OSError as exc:
            log.info("cannot remember the notices shown: %s", exc)
    elif new_only and not mine:
        notices = []
    return notices


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_limits(ctx: cli.Context) -> int:
    login, _admin = _subject(ctx, ctx.args.user)
    brief = bool(ctx.args.brief)
    report = build_limits(ctx, login, brief)
    ctx.emit(report, ob.brief_line if brief else ob.limits_text)
    return cli.EXIT_OK


def cmd_why(ctx: cli.Context) -> int:
    login, admin = _subject(ctx, ctx.args.user)
    config = ctx.config
    now = dt.datetime.now(dt.timezone.utc)
    record = refusals.read(config.paths.state_dir, login)
    out: dict = {
        "schema_version": "1",
        "user": login,
        "now": ob.iso(now),
        "refusal": None,
        "explanation": "",
        "estimate": None,
        "remove": [],
    }
    if record is None:
        out["explanation"] = "No refusal is recorded for you: your last requests went through."
        ctx.emit(out, _why_text)
        return cli.EXIT_OK
    out["refusal"] = {k: record.get(k) for k in ("timestamp", "code", "message", "details")}
    code = str(record.get("code") or "")
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    errors: list = []
    holdings, _source, table, weights = gather_holdings(config, brief=False, login=None, errors=errors)
    limits = config.resolve(login)
    mine = [h for h in holdings if h.owner == login]
    out["explanation"] = explain(code, record, limits)
    if code == "NO_GPU_AVAILABLE":
        out["estimate"] = _estimate(config, holdings, table, weights, details, now=now, admin=admin, me=login)
    elif code in ob.QUOTA_CODES:
        out["remove"] = [
            {"name": h.name, "state": h.state, "gpueq": ob.container_gpueq(h, weights), "slots": list(ob.held_slots(h))}
            for h in ob.removal_advice(code, mine, details, limits, weights)
        ]
    ctx.emit(out, _why_text)
    return cli.EXIT_OK


EXPLAIN = {
    "USER_AT_LIMIT": "You already hold all the GPU-equivalents your quota allows ({quota}).",
    "AGGREGATE_GPU_QUOTA_EXCEEDED": "This request would take you past your GPU quota of {quota} GPU-equivalents.",
    "EXCEEDS_CONTAINER_LIMIT": "One container may hold at most {per} GPU slot(s); ask for fewer in one container.",
    "CONTAINER_LIMIT": "You already have {cmax} containers (running or stopped), your maximum.",
    "FULL_GPU_NOT_ALLOWED": "Your group may use MIG slices only, not whole GPUs; ask for a MIG slice instead.",
    "NO_GPU_AVAILABLE": "Every GPU slot that fits your request is held by another container right now.",
    "NOT_OWNER": "That container belongs to someone else; you can only act on your own containers.",
    "POLICY_DENIED": "The request asked for a setting the server does not allow (see the message).",
}


def explain(code: str, record: dict, limits: Any) -> str:
    template = EXPLAIN.get(code, "The request was refused (see the message).")
    text = template.format(
        quota=ob.num_text(limits.gpu_quota),
        per=ob.num_text(limits.max_gpu_slots_per_container),
        cmax=ob.num_text(limits.max_containers_per_user),
    )
    return f"{text} Refused at {record.get('timestamp')}: {record.get('message') or code}"


def _estimate(
    config: Any,
    holdings: list,
    table: Optional[list],
    weights: dict,
    details: dict,
    *,
    now: Any,
    admin: bool,
    me: str,
) -> dict:
    """When a suitable slot is likely to be free: the k-th earliest release among the holders."""
    want_full = bool(details.get("full_gpu") or details.get("whole_gpu"))
    suitable = None
    if table:
        suitable = {r["slot"] for r in table if (r["kind"] == "gpu") or not want_full}
        held = {s for h in holdings for s in ob.held_slots(h)}
        free_now = sorted(s for s in suitable if s not in held)
    else:
        free_now = []
    releases = []
    cache: dict = {}
    for h in holdings:
        if not ob.holds_gpu(h):
            continue
        if suitable is not None and not (set(ob.held_slots(h)) & suitable):
            continue
        if h.owner and h.owner not in cache:
            cache[h.owner] = config.resolve(h.owner)
        state = ob.lifecycle_state(config, h.id) if h.id else {}
        if h.state in ("running", "paused") and not h.started_at and not state.get("first_started_at"):
            h = replace(h, started_at=docker.parse_time(_started_at(h.id)))
        rel = ob.estimate_release(h, cache.get(h.owner), state, now, weights)
        row = rel.as_dict()
        if not admin and h.owner != me:
            row["container"], row["user"] = None, None
        releases.append((rel.at or dt.datetime.max.replace(tzinfo=dt.timezone.utc), row))
    releases.sort(key=lambda r: r[0])
    want = max(1, int(ob.to_float(details.get("slots_requested") or details.get("count"), 1.0)))
    known = [r for r in releases if r[1]["expected_free_at"]]
    expected = known[want - 1][1]["expected_free_at"] if len(known) >= want else None
    return {"expected_free_at": expected, "free_now": free_now, "holders": [r[1] for r in releases]}


def _started_at(cid: str) -> Optional[str]:
    try:
        client = _docker(DOCKER_TIMEOUT_S)
        try:
            return (client.api.inspect_container(cid).get("State") or {}).get("StartedAt")
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - the Docker edge: the estimate goes without it
        log.info("no start time for %s: %s", cid[:12], exc)
        return None


def _why_text(data: dict) -> str:
    if data["refusal"] is None:
        return data["explanation"]
    out = [f"{data['refusal']['code']}: {data['explanation']}"]
    est = data.get("estimate")
    if est is not None:
        if est["free_now"]:
            out.append(f"A suitable slot is free now ({', '.join(est['free_now'])}): try again.")
        elif est["expected_free_at"]:
            out.append(f"A suitable GPU slot is likely to free up by {est['expected_free_at']}.")
        else:
            out.append("No holder has a runtime cap or is idle, so nobody can say when a slot frees up.")
        rows = [
            (",".join(h["slots"]), h["container"] or "another user's", h["expected_free_at"] or "unknown", h["reason"])
            for h in est["holders"]
        ]
        if rows:
            out.append(table.render(("SLOT", "CONTAINER", "FREE BY", "REASON"), rows, indent="  "))
    if data["remove"]:
        out.append("To make room, remove (`docker rm -f NAME`):")
        rows = [(c["name"], c["state"], f"{c['gpueq']:g}") for c in data["remove"]]
        out.append(table.render(("NAME", "STATE", "GPUEQ"), rows, align="llr", indent="  "))
    return "\n".join(out)


def cmd_alerts_run(ctx: cli.Context) -> int:
    config = ctx.config
    dry = bool(ctx.args.dry_run)
    now = dt.datetime.now(dt.timezone.utc)
    client = None
    try:
        client = docker.client_from_env(DOCKER_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - the Docker edge: the detector's inventory may still answer
        log.warning("cannot reach Docker: %s", exc)
    snap = ob.build_snapshot(config, None, docker_client=client, now=now, persist=not dry)
    report = alert_pass(config, snap, now, dry_run=dry)
    ctx.emit(report, _alerts_text)
    return cli.EXIT_FAULT if report["errors"] or snap.get("containers_source") == "none" else cli.EXIT_OK


def alert_pass(config: Any, snap: dict, now: Any, dry_run: bool = False, client: Any = None) -> dict:
    from .. import notify

    notifier = notify.Notifier(client, spool_dir=notify.spool_dir(config.paths.state_dir))
    return ob.run_alerts(
        config,
        snap,
        now,
        dry_run=dry_run,
        deliver=ob.notifier_delivery(notifier),
        emit=ob.event_writer(config, "alerts"),
    )


def _alerts_text(data: dict) -> str:
    out = []
    for login, entry in sorted(data["users"].items()):
        for a in entry["alerts"]:
            out.append(f"{login}: {a['measure']} at {a['level']}% ({a['used']:g} of {a['limit']:g})")
        for d in entry["delivered"]:
            out.append(f"{'would tell' if data['dry_run'] else 'told'} {login}: {d['sentence']}")
    out.append(f"{len(data['users'])} user(s) with quota alerts" + (" — dry run" if data["dry_run"] else ""))
    out.extend(f"FAILED {e}" for e in data["errors"])
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# The exporter
# --------------------------------------------------------------------------------------------


class _MappingSync:
    """Calls the allocator's job-mapping sync when the GPU holders changed, or every 5 minutes."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.last: Optional[tuple] = None
        self.at = 0.0
        self.__name__ = "job_mapping"

    def __call__(self, snap: dict) -> None:
        key = tuple(sorted((s["slot"], s.get("container") or "") for s in snap["slots"]))
        if key == self.last and time.monotonic() - self.at < MAPPING_RESYNC_S:
            return
        ob.sync_job_mapping(self.config, snap)
        self.last, self.at = key, time.monotonic()


def make_observer(config: Any, docker_client: Any = None, inventory: Any = None) -> ob.Observer:
    def quota_alerts_pass(snap: dict) -> None:
        report = alert_pass(config, snap, dt.datetime.now(dt.timezone.utc), client=observer.docker_client)
        for err in report["errors"]:
            log.warning("quota alerts: %s", err)
            ob.count_error(snap, "alerts")

    observer = ob.Observer(
        config,
        docker_client=docker_client,
        inventory=inventory,
        emit=ob.event_writer(config, "exporter"),
        after=[quota_alerts_pass, _MappingSync(config), greetings.GreetingPass(config), event_views.ViewPass(config)],
    )
    return observer


def refresher(cache: Any, stop: threading.Event) -> threading.Thread:
    """Keeps the snapshot fresh without waiting for scrapes (alerts and OOM events stay timely)."""

    def loop() -> None:
        while not stop.is_set():
            cache.get()
            stop.wait(max(1.0, cache.cache_s))

    thread = threading.Thread(target=loop, name="ds01-exporter-refresh", daemon=True)
    thread.start()
    return thread


def cmd_serve(ctx: cli.Context) -> int:
    from .. import exporter

    if not exporter.HAS_PROMETHEUS:
        raise cli.CommandError("prometheus_client is not installed in this environment", cli.EXIT_FAULT)
    config = ctx.config
    section = config.section("monitoring")
    bind = ctx.args.bind or section.get("exporter_bind") or "127.0.0.1"
    port = ctx.args.port if ctx.args.port is not None else int(section.get("exporter_port") or 9101)
    cache = exporter.SnapshotCache(make_observer(config).build, cache_s=ctx.args.cache_s)
    stop = threading.Event()
    refresher(cache, stop)

    def ready(actual: int) -> None:
        sys.stderr.write(f"ds01 exporter: listening on http://{bind}:{actual}/metrics\n")
        sys.stderr.flush()

    try:
        exporter.serve(cache, bind, port, ready=ready)
    except OSError as exc:
        raise cli.CommandError(f"cannot listen on {bind}:{port}: {exc}", cli.EXIT_FAULT) from exc
    finally:
        stop.set()
    return cli.EXIT_OK
