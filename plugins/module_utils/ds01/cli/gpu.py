"""``ds01 gpu status|plan|users``: the GPU slots, what a request would get, and usage per user.

Docker is found from ``$DOCKER_HOST`` (or the default socket); the GPUs from NVML, or the fake
topology (``$DS01_GPU_TOPOLOGY`` / ``gpu_allocation.backend: fake``). Nothing here changes
anything: ``plan`` runs the allocator's pure decision without its lock and creates nothing.

JSON shapes (schema "1"; keys are stable, new keys may be added):

``ds01 gpu status --json``::

    {"schema_version": "1", "source": "nvml" | "fake:<path>",
     "capacity_gpueq": float, "allocated_gpueq": float, "total_slots": int, "free_slots": int,
     "slots": [{"slot": "2.1", "gpu": 2, "uuid": "MIG-…", "kind": "gpu" | "mig", "profile": str | null,
                "gpueq": float, "free": bool, "container": str | null, "user": str | null,
                "holders": [{"container", "id", "user", "owner_method", "state"}]}],
     "unusable_gpus": [{"index", "uuid", "name", "reason"}],
     "foreign_devices": [{"container", "user", "device_ids"}]}

``container``/``user`` name the first holder (``holders`` has all of them: more than one only
when something bypassed the allocator). ``foreign_devices``: containers naming GPU ids this host
does not have.

``ds01 gpu plan USER [--count N | --device ID … | --all] [--full-gpu] [--profile P] --json``::

    {"schema_version": "1", "user": str, "group": str, "request": {"count", "device_ids", "all_gpus",
     "full_gpu", "mig_profile", "container"}, "granted": bool,
     "grant": {"user", "container", "slots", "uuids", "profiles", "gpueq", "labels"} | null,
     "refusal": {"code", "message", "user", "details"} | null}

Exit status 1 when the request would be refused.

``ds01 gpu users --json``::

    {"schema_version": "1",
     "users": [{"user", "group", "gpueq": float, "slots": [str], "gpu_containers": [str],
                "containers": int, "max_gpu_equivalents": float | null,
                "aggregate_gpu_limit": float | null, "gpu_quota": float | null,
                "max_containers_per_user": int | null, "over_quota": bool}],
     "unknown_owner": [{"container", "slots"}]}

Every owner of a container (any state) is listed, GPU holder or not.
"""

from __future__ import annotations

import argparse
import pwd
from typing import Any

from .. import allocator, cli, docker, gpu, identity
from . import table

SCHEMA = "1"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("gpu", help="GPU slots, allocation plans and per-user GPU usage")
    actions = parser.add_subparsers(dest="gpu_action", metavar="ACTION")

    status = actions.add_parser("status", help="every GPU and MIG slot: weight, holder, free or not")
    cli.add_json_flag(status)
    status.set_defaults(func=cmd_status)

    plan = actions.add_parser("plan", help="the grant or refusal a request of USER would get now (changes nothing)")
    plan.add_argument("user", metavar="USER", help="login name")
    how = plan.add_mutually_exclusive_group()
    how.add_argument("--count", type=int, default=1, metavar="N", help="number of GPU slots (default 1)")
    how.add_argument("--device", action="append", dest="devices", metavar="ID", help="a specific GPU/MIG (repeatable)")
    how.add_argument("--all", action="store_true", dest="all_gpus", help="every free slot (admins only)")
    plan.add_argument("--full-gpu", action="store_true", help="whole GPUs only")
    plan.add_argument("--profile", metavar="PROFILE", help="preferred MIG profile, e.g. 1g.10gb")
    plan.add_argument("--container", metavar="NAME", help="the name the container would get")
    cli.add_json_flag(plan)
    plan.set_defaults(func=cmd_plan)

    users = actions.add_parser("users", help="GPU-equivalents and containers per user, against their quota")
    cli.add_json_flag(users)
    users.set_defaults(func=cmd_users)

    parser.set_defaults(func=lambda ctx: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return cli.EXIT_USAGE


# -- shared reads ------------------------------------------------------------------------------


def _read(ctx: cli.Context) -> tuple:
    config = ctx.config
    try:
        inventory = gpu.inventory_from_config(config)
    except gpu.GpuInventoryError as exc:
        raise cli.CommandError(str(exc), cli.EXIT_FAULT) from exc
    try:  # one list call; only containers never seen before are inspected (the facts cache)
        client = docker.reader_from_env(docker.DECISION_TIMEOUT_S)
        try:
            cache = docker.InspectCache(docker.facts_cache_path(config))
            holdings = docker.list_containers(client, inventory, cache, managed_by_labels=True)  # as the allocator
        finally:
            client.close()
    except docker.DockerStateError as exc:
        raise cli.CommandError(f"{exc}; nothing was changed", cli.EXIT_FAULT) from exc
    return config, inventory, holdings


def _fmt(value: Any) -> str:
    return "unlimited" if value is None else allocator.format_gpueq(float(value))


# -- status ------------------------------------------------------------------------------------


def status_document(inventory: gpu.Inventory, holdings: list) -> dict:
    occupied = allocator.occupied_slots(holdings)
    slots = []
    allocated = 0.0
    for slot in inventory.slots():
        holders = list(occupied.get(slot.slot_id, []))
        if slot.kind == gpu.KIND_MIG:
            holders += occupied.get(str(slot.gpu_index), [])
        free = not holders
        if not free:
            allocated += slot.gpueq
        slots.append(
            {
                "slot": slot.slot_id,
                "gpu": slot.gpu_index,
                "uuid": slot.uuid,
                "kind": slot.kind,
                "profile": slot.profile,
                "gpueq": round(slot.gpueq, 6),
                "free": free,
                "container": holders[0].name if holders else None,
                "user": holders[0].owner if holders else None,
                "holders": [
                    {"container": c.name, "id": c.id, "user": c.owner, "owner_method": c.owner_method, "state": c.state}
                    for c in holders
                ],
            }
        )
    return {
        "schema_version": SCHEMA,
        "source": inventory.source,
        "capacity_gpueq": round(inventory.capacity_gpueq(), 6),
        "allocated_gpueq": round(allocated, 6),
        "total_slots": len(slots),
        "free_slots": sum(1 for s in slots if s["free"]),
        "slots": slots,
        "unusable_gpus": [
            {"index": g.index, "uuid": g.uuid, "name": g.name, "reason": "MIG mode with no MIG instances"}
            for g in inventory.unusable_gpus()
        ],
        "foreign_devices": [
            {"container": c.name, "user": c.owner, "device_ids": list(c.unknown_ids)} for c in holdings if c.unknown_ids
        ],
    }


def _status_text(doc: dict) -> str:
    rows = [
        (
            s["slot"],
            s["kind"],
            s["profile"] or "-",
            _fmt(s["gpueq"]),
            s["user"] or ("-" if s["free"] else "unknown"),
            s["container"] or "free",
        )
        for s in doc["slots"]
    ]
    laid = table.lines(("SLOT", "KIND", "PROFILE", "GPUEQ", "USER", "CONTAINER"), rows, align="lllr")
    lines = [
        f"GPU slots: {doc['total_slots'] - doc['free_slots']}/{doc['total_slots']} held, "
        f"{_fmt(doc['allocated_gpueq'])}/{_fmt(doc['capacity_gpueq'])} GPU-equivalents ({doc['source']})",
        laid[0],
    ]
    for s, line in zip(doc["slots"], laid[1:]):
        lines.append(line)
        if len(s.get("holders") or []) > 1:
            others = ", ".join(f"{h['container']} ({h['user'] or 'unknown'})" for h in s["holders"][1:])
            lines.append(f"  DOUBLE-BOOKED: also held by {others}; a slot is for one container: stop all but one")
    for g in doc["unusable_gpus"]:
        lines.append(f"GPU {g['index']} ({g['uuid']}): {g['reason']}; nothing on it can be allocated")
    for f in doc["foreign_devices"]:
        lines.append(f"container {f['container']} names GPUs this host does not have: {', '.join(f['device_ids'])}")
    return "\n".join(lines)


def cmd_status(ctx: cli.Context) -> int:
    _config, inventory, holdings = _read(ctx)
    ctx.emit(status_document(inventory, holdings), _status_text)
    return cli.EXIT_OK


# -- plan --------------------------------------------------------------------------------------


def _is_admin(config: Any, login: str) -> bool:
    try:
        uid = pwd.getpwnam(login).pw_uid
    except KeyError:
        uid = -1
    return identity.is_admin(login, uid, config.admin_group, config.admin_users)


def cmd_plan(ctx: cli.Context) -> int:
    args = ctx.args
    if not identity.valid_login(args.user):
        raise cli.CommandError(f"{args.user!r} is not a login name", cli.EXIT_USAGE)
    config, inventory, holdings = _read(ctx)
    limits = config.resolve(args.user)
    request = allocator.Request(
        count=args.count,
        device_ids=tuple(args.devices or ()),
        all_gpus=args.all_gpus,
        full_gpu=args.full_gpu,
        mig_profile=args.profile,
        container=args.container,
        admin=_is_admin(config, args.user),
    )
    outcome = allocator.decide(inventory, holdings, limits, request)
    granted = isinstance(outcome, allocator.Grant)
    doc = {
        "schema_version": SCHEMA,
        "user": args.user,
        "group": limits.group,
        "request": request.as_dict(),
        "granted": granted,
        "grant": outcome.as_dict() if granted else None,
        "refusal": None if granted else outcome.as_dict(),
    }
    ctx.emit(doc, _plan_text)
    return cli.EXIT_OK if granted else cli.EXIT_NO


def _plan_text(doc: dict) -> str:
    if doc["granted"]:
        g = doc["grant"]
        what = ", ".join(f"{s} ({p or 'whole GPU'})" for s, p in zip(g["slots"], g["profiles"]))
        return f"{doc['user']} would get {what}: {_fmt(g['gpueq'])} GPU-equivalents. UUIDs: {', '.join(g['uuids'])}"
    r = doc["refusal"]
    return f"{r['code']}: {r['message']}"


# -- users -------------------------------------------------------------------------------------


def users_document(config: Any, inventory: gpu.Inventory, holdings: list) -> dict:
    owners = sorted({c.owner for c in holdings if c.owner})
    users = []
    for login in owners:
        limits = config.resolve(login)
        usage = allocator.user_usage(inventory, holdings, login)
        aggregate = limits.aggregate.gpu_limit if limits.aggregate else None
        quota = limits.gpu_quota
        over = quota is not None and usage.gpueq > quota + allocator.EPS
        cap = limits.max_containers_per_user
        users.append(
            {
                "user": login,
                "group": limits.group,
                "gpueq": round(usage.gpueq, 6),
                "slots": list(usage.slots),
                "gpu_containers": usage.holder_names,
                "containers": len(usage.containers),
                "max_gpu_equivalents": limits.max_gpu_equivalents,
                "aggregate_gpu_limit": aggregate,
                "gpu_quota": quota,
                "max_containers_per_user": cap,
                "over_quota": bool(over or (cap is not None and len(usage.containers) > cap)),
            }
        )
    unknown = [{"container": c.name, "slots": list(c.slots)} for c in holdings if not c.owner and c.slots]
    return {"schema_version": SCHEMA, "users": users, "unknown_owner": unknown}


def _users_text(doc: dict) -> str:
    rows = []
    for u in doc["users"]:
        cap = "-" if u["max_containers_per_user"] is None else u["max_containers_per_user"]
        flag = "  OVER QUOTA" if u["over_quota"] else ""
        rows.append(
            (
                u["user"],
                u["group"],
                f"{_fmt(u['gpueq'])}/{_fmt(u['gpu_quota'])}",
                f"{u['containers']}/{cap}",
                (", ".join(u["gpu_containers"]) or "-") + flag,
            )
        )
    lines = table.lines(("USER", "GROUP", "GPUEQ", "CONTAINERS", "GPU CONTAINERS"), rows, align="llrr")
    for c in doc["unknown_owner"]:
        lines.append(f"(owner unknown) container {c['container']} holds {', '.join(c['slots'])}")
    return "\n".join(lines)


def cmd_users(ctx: cli.Context) -> int:
    config, inventory, holdings = _read(ctx)
    ctx.emit(users_document(config, inventory, holdings), _users_text)
    return cli.EXIT_OK
