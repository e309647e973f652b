"""The other bodies and queries: top, exec, update, volume and network creates, build limits, and the
listings filtered to the caller's own objects."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

from ... import identity
from .base import (
    MAX_BLKIO_WEIGHT,
    MAX_CPU_SHARES,
    NOT_OWNER,
    POLICY_DENIED,
    CreateContext,
    Refusal,
    denied,
    gateway_label,
)
from .create import check_restart, check_user, explicit_user, own_cgroup_parents
from .mounts import check_volume_driver
from .routes import Route, ownership

MAX_NETWORKS_PER_USER = 4  # each takes a subnet from the daemon's shared address pools
MAX_VOLUMES_PER_USER = 32  # named volumes; each may hold a copy of an image's files

# A container's settings (create, exec, commit, update bodies) fit in far less: dockerd keeps them in memory
# and in image configs that every `docker images` reads (round-7 attack: 8 MiB configs, 16 MiB exec commands).
MAX_SETTINGS_BYTES = 1024 * 1024

# `docker top NAME [ps OPTIONS]`: dockerd runs ps on the host, as root, with these options, and filters its
# output to the container's processes afterwards. `-p PID` and `e` (environment) read any process's
# environment (round-7 attack), so only these ordinary listings are passed.
TOP_PS_ARGS = ("", "-ef", "-eF", "-efl", "-efww", "-ely", "aux", "auxw", "auxww", "-aux")


def check_top(query: tuple) -> tuple:
    """(refusal or None, query to forward) for ``GET /containers/{id}/top``."""
    values = [v for k, v in query if k == "ps_args"]
    others = [k for k, _v in query if k != "ps_args"]
    if others:
        return denied(f"docker top does not take '{others[0]}'; remove it."), query
    if len(values) > 1 or (values and values[0].strip() not in TOP_PS_ARGS):
        shown = " ".join(values)
        return (
            denied(
                f"docker top with ps options '{shown}' is not available: the daemon runs ps on the host as root, "
                "where options such as -p and e read other users' processes. Use one of "
                + ", ".join(a for a in TOP_PS_ARGS if a)
                + ", or `docker exec NAME ps ...` inside the container."
            ),
            query,
        )
    return None, tuple(("ps_args", v.strip()) for v in values if v.strip())


def check_exec_create(body: Any, ctx: Optional[CreateContext] = None) -> Optional[Refusal]:
    """``docker exec``: never privileged, and as the caller (the container's user is already theirs)."""
    if not isinstance(body, dict):
        return Refusal(POLICY_DENIED, "the exec request body is not a JSON object", status=400)
    if body.get("Privileged"):
        return denied("exec --privileged gives the process every capability; run the exec without it.")
    if ctx is not None:
        refusal = check_user(str(body.get("User") or ""), ctx, "exec --user")
        if refusal:
            return refusal
        if ctx.uid >= 0:
            body["User"] = explicit_user(str(body.get("User") or ""), ctx)
    return None


def check_update(body: Any, ctx: CreateContext, host_paths: bool = False) -> tuple:
    """(refusal, body) for ``docker update``: resource values clamped like at create.

    0 and -1 mean "unlimited" to the daemon, so they are clamped to the caller's limit like a value
    above it. ``host_paths``: the container mounts a host path (then no restart policy).
    """
    if not isinstance(body, dict):
        return Refusal(POLICY_DENIED, "the update request body is not a JSON object", status=400), body
    for key in ("Devices", "DeviceRequests", "DeviceCgroupRules"):
        if body.get(key):
            return denied(f"changing {key} with docker update is not available to users."), body
    if "CgroupParent" in body and body["CgroupParent"] not in ("", None, *own_cgroup_parents(ctx)):
        return denied("docker update cannot move a container out of your slice."), body
    refusal = check_restart(body.get("RestartPolicy") or {}, host_paths)
    if refusal:
        return refusal, body
    for key, limit in (("Memory", ctx.memory), ("MemorySwap", ctx.memory_swap), ("PidsLimit", ctx.pids_limit)):
        if key in body and limit is not None:
            value = body[key]
            if value is None or (isinstance(value, int) and (value <= 0 or value > limit)):
                body[key] = int(limit)
    if body.get("Memory") and body.get("MemorySwap") and body["MemorySwap"] < body["Memory"]:
        body["MemorySwap"] = body["Memory"]
    cpus = ctx.cpu_cap()
    if cpus is not None:
        if "NanoCpus" in body:
            value = body["NanoCpus"]
            if value is None or (isinstance(value, int) and (value <= 0 or value > cpus * 1e9)):
                body["NanoCpus"] = int(cpus * 1e9)
        if "CpuQuota" in body or "CpuPeriod" in body:
            period = body.get("CpuPeriod") or 100000
            quota = body.get("CpuQuota")
            if not isinstance(quota, int) or quota <= 0 or quota / period > cpus:
                body["CpuQuota"] = int(cpus * period)
    # weights as at create (harden): above the default is priority over everyone else (round-10 observation)
    if isinstance(body.get("CpuShares"), int) and body["CpuShares"] > MAX_CPU_SHARES:
        body["CpuShares"] = MAX_CPU_SHARES
    if isinstance(body.get("BlkioWeight"), int) and body["BlkioWeight"] > MAX_BLKIO_WEIGHT:
        body["BlkioWeight"] = MAX_BLKIO_WEIGHT
    return None, body


def check_volume_create(body: Any, ctx: CreateContext) -> tuple:
    if not isinstance(body, dict):
        return Refusal(POLICY_DENIED, "the volume request body is not a JSON object", status=400), body
    name = str(body.get("Name") or "(anonymous)")
    refusal = check_volume_driver(str(body.get("Driver") or ""), body.get("DriverOpts") or {}, False, ctx, name)
    if refusal:
        return refusal, body
    labels = {k: v for k, v in (body.get("Labels") or {}).items() if not gateway_label(str(k))}
    labels["ds01.user"] = ctx.login
    body["Labels"] = labels
    return None, body


def volume_refusal_by_users(login: str, name: str, users: list) -> Optional[Refusal]:
    """An unlabelled volume (made before ds01, or anonymous) is the caller's only when every
    container that mounts it is theirs (and one does); otherwise it may hold someone else's files."""
    owners = set(users)
    if owners == {login}:
        return None
    return Refusal(
        NOT_OWNER,
        f"volume '{name}' has no owner label and is "
        + ("used by other users' containers" if owners else "not used by any container of yours")
        + "; you can only mount your own volumes. Create one with `docker volume create NAME`.",
        event_type="auth.denied",
    )


_ID_LIKE = re.compile(r"[0-9a-f]+")


def id_like_name(kind: str, name: str) -> Optional[Refusal]:
    """A refusal for a container or network name made only of hex digits: the daemon finds an exact name before an
    id prefix, so such a name would take another user's id prefix (``docker ps`` prints 12 digits, people type 4)
    away from them (attack rounds 12 and 13)."""
    if not _ID_LIKE.fullmatch(name.lstrip("/")):
        return None
    return denied(
        f"the {kind} name '{name.lstrip('/')}' is made of hex digits like a {kind} id, and would hide the {kind} "
        "whose id starts that way from its owner; choose a name with other letters too."
    )


def check_network_create(body: Any, ctx: CreateContext) -> tuple:
    if not isinstance(body, dict):
        return Refusal(POLICY_DENIED, "the network request body is not a JSON object", status=400), body
    refusal = id_like_name("network", str(body.get("Name") or ""))
    if refusal:
        return refusal, body
    # dockerd 20.10 accepts a second network of a taken name unless CheckDuplicate is true, after
    # which the name no longer resolves for its owner either
    body["CheckDuplicate"] = True
    driver = str(body.get("Driver") or "bridge")
    if driver != "bridge":
        return denied(
            f"networks with the '{driver}' driver reach the host's interfaces; users can create bridge networks only."
        ), body
    if body.get("Options"):
        return denied(
            "driver options on a network (e.g. a host bridge name) are for admins; create it without --opt."
        ), body
    ipam = body.get("IPAM") or {}
    if ipam.get("Config") or ipam.get("Options") or str(ipam.get("Driver") or "default") != "default":
        return denied(
            "a network's subnet, gateway and IP ranges become routes on the host, where they can shadow the "
            "host's own networks; create it without --subnet/--gateway/--ip-range/--ipam-driver and Docker "
            "picks a free range."
        ), body
    labels = {k: v for k, v in (body.get("Labels") or {}).items() if not gateway_label(str(k))}
    labels["ds01.user"] = ctx.login
    body["Labels"] = labels
    return None, body


def check_build(route: Route, ctx: CreateContext) -> tuple:
    """(refusal, query) for ``POST /build``: no host network, the caller's own cgroup parent."""
    network = route.query_value("networkmode") or ""
    if network == "host" and not ctx.allow_host_network:
        return denied(
            "docker build --network host is not available; the build runs without host networking."
        ), route.query
    parent = route.query_value("cgroupparent")
    if parent and parent not in own_cgroup_parents(ctx):
        return denied(f"docker build --cgroup-parent {parent} is not your slice; leave it unset."), route.query
    query = (*((k, v) for k, v in route.query if k != "cgroupparent"), ("cgroupparent", ctx.slice_name))
    return None, query


def build_limits(query: tuple, limits: Any, login: str = "") -> tuple:
    """The classic builder's per-step limits (memory, swap, shm, CPU) set to the caller's, as at create;
    no shared build cache; the image labelled with its maker (``ds01.image.maker``).

    BuildKit ignores them; its steps are bounded by the daemon's builder settings only."""
    forced = {}
    if getattr(limits, "memory", None):
        forced["memory"] = str(int(limits.memory))
    if getattr(limits, "memory_swap", None):
        forced["memswap"] = str(max(int(limits.memory_swap), int(limits.memory or 0)))
    if getattr(limits, "shm_size", None):
        forced["shmsize"] = str(int(limits.shm_size))
    if getattr(limits, "max_cpus", None):
        cpus = min(float(limits.max_cpus), float(os.cpu_count() or limits.max_cpus))
        forced["cpuperiod"], forced["cpuquota"] = "100000", str(int(cpus * 100000))
    asked = dict(query)
    for key in ("memory", "shmsize"):  # a smaller positive value the caller asked for stays
        value = asked.get(key, "")
        if key in forced and value.isdigit() and 0 < int(value) <= int(forced[key]):
            forced[key] = value
    # the classic builder's cache is shared by every user and keyed without the options that shape a
    # step (--add-host, ulimits, ...): a user's build never reuses, nor offers, a cached layer
    forced["nocache"] = "1"
    if login:
        try:
            labels = json.loads(dict(query).get("labels") or "{}")
        except ValueError:
            labels = {}
        labels = {str(k): str(v) for k, v in (labels if isinstance(labels, dict) else {}).items()}
        # who made it, for removing it untagged (objects.delete_verdict); never an owner label, which the
        # step containers of later builds FROM it would inherit (round-6 attack)
        labels[identity.IMAGE_MAKER_LABEL] = login
        forced["labels"] = json.dumps(labels, separators=(",", ":"))
    kept = tuple((k, v) for k, v in query if k not in forced)
    return (*kept, *forced.items())


def filter_owned(body: Any, login: str, limit: Optional[str] = None) -> Any:
    """``GET /containers/json`` for a user: only the containers ``ownership`` lets them see."""
    if not isinstance(body, list):
        return body
    mine = []
    for item in body:
        if not isinstance(item, dict):
            continue
        names = item.get("Names") or [""]
        if ownership(login, str(names[0]), item.get("Labels") or {}, "see") is None:
            mine.append(item)
    if limit is not None and limit.lstrip("-").isdigit() and int(limit) > 0:
        mine = mine[: int(limit)]
    return mine


def filter_volumes(body: Any, login: str) -> Any:
    """``GET /volumes`` for a user: only the volumes labelled as theirs (another user's names, labels and
    mount points are theirs; anonymous volumes go with the containers that made them)."""
    if isinstance(body, dict) and isinstance(body.get("Volumes"), list):
        body["Volumes"] = [
            v for v in body["Volumes"] if isinstance(v, dict) and (v.get("Labels") or {}).get("ds01.user") == login
        ]
    return body


def filter_networks(body: Any, login: str) -> Any:
    """``GET /networks`` for a user: their own networks and the unowned ones (Docker's none/host/bridge, an
    admin's shared network), never another user's; and no network's attached containers but their own."""
    if not isinstance(body, list):
        return body
    out = []
    for item in body:
        if not isinstance(item, dict):
            continue
        owner = (item.get("Labels") or {}).get("ds01.user")
        if owner and owner != login:
            continue
        out.append(filter_network(item, login))
    return out


def filter_network(body: Any, login: str) -> Any:
    """One network as a user sees it: the attached containers only of a network of their own (only their
    containers can join it); on a shared one (``none`` holds every user's containers) the list is emptied."""
    if isinstance(body, dict) and (body.get("Labels") or {}).get("ds01.user") != login and body.get("Containers"):
        body["Containers"] = {}
    return body


def filter_system_df(body: Any, login: str) -> Any:
    """``GET /system/df`` for a user: only their containers and their volumes (as ``GET /containers/json`` and
    ``GET /volumes`` show them), and no build cache (its records name no owner, and describe each build step)."""
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("Containers"), list):
        body["Containers"] = [
            c for c in body["Containers"] if isinstance(c, dict) and (c.get("Labels") or {}).get("ds01.user") == login
        ]
    filter_volumes(body, login)
    if body.get("BuildCache") is not None:
        body["BuildCache"] = []
    return body
