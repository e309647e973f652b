"""The gateway's decisions, as pure functions: route → what to check; create body → refusal or rewrite.

Nothing here does I/O except through the small callables a caller passes in (``realpath``), so
every rule is table-tested. The server (server.py) gathers the facts (owners, image env,
container counts), asks these functions, and forwards only what they allowed.

Decisions for non-admin callers (admins pass unchanged):

- routes: a fixed table; a route that is not in it is refused (nothing is forwarded unchecked);
  daemon-wide endpoints (plugins, swarm, nodes, services, tasks, secrets, configs, every
  ``POST …/prune``) are admin-only;
- container-scoped routes: the caller must own the container (``ds01.user``); ``ds01.protected``
  and unlabelled containers are admin-only;
- create: host-escape settings refused with ``POLICY_DENIED`` and a sentence naming the setting;
  labels, cgroup parent and per-container limits stamped from the kernel-verified caller;
- ``--network host`` is refused unless ``gateway.allow_host_network`` (it exposes every service
  bound to the host's loopback, e.g. other users' notebooks, to the container).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl, quote, unquote, urlencode

from .. import docker_state, identity

POLICY_DENIED = "POLICY_DENIED"
NOT_OWNER = "NOT_OWNER"
CONTAINER_LIMIT = "CONTAINER_LIMIT"

_VERSION_PREFIX = re.compile(r"/v[0-9]+(?:\.[0-9]+)?")
# Labels only the gateway (or an admin) sets: a caller-supplied value is dropped before the
# gateway writes its own (ownership, protection, GPU holdings, and the legacy owner fallbacks).
GATEWAY_LABELS = identity.SERVER_LABELS
GATEWAY_LABEL_PREFIXES = identity.SERVER_LABEL_PREFIXES


def gateway_label(key: str) -> bool:
    return identity.server_label(key)


SAFE_RUNTIMES = ("", "runc", "io.containerd.runc.v2")
NVIDIA_ENV = docker_state.NVIDIA_ENV
NVIDIA_VOLUME_DIR = docker_state.NVIDIA_VOLUME_DIR
# The oldest API version a user may speak: below 1.24 ``POST /containers/{id}/start`` takes a
# HostConfig body that replaces the one checked at create.
MIN_API_VERSION = (1, 24)
# Capabilities a user's container never gets, whatever the config allows: with them, root in a
# container makes setuid binaries and device nodes that stay on the host through a bind mount.
NEVER_CAPABILITIES = ("MKNOD", "SETUID", "SETGID")
# Log drivers that write on the host only (the others send to addresses the daemon connects to).
LOG_DRIVERS = ("", "json-file", "local", "none")
LOG_OPTIONS = (
    "max-size",
    "max-file",
    "compress",
    "labels",
    "labels-regex",
    "env",
    "env-regex",
    "mode",
    "max-buffer-size",
)
# `tag` is a Go template dockerd expands when the container starts and adds to every line: `{{pad .ID N 0}}`
# made a 250 MB tag and log files past max-size (round-9 attack). Plain tags pass; templates do not.
LOG_TAG_MAX = 128
RESTART_NONE = ("", "no")
MAX_CPU_SHARES = 1024  # Docker's default weight: a user's container never outranks another's
MAX_BLKIO_WEIGHT = 500  # the kernel's default weight
LOG_MAX_SIZE = 100 * 1024 * 1024  # a container's log files: at most LOG_MAX_FILES times LOG_MAX_SIZE on the host
LOG_MAX_FILES = 5
# mode=non-blocking keeps a container's output in dockerd's memory, up to max-buffer-size (round-8 attack: 8 GB).
LOG_MAX_BUFFER = 4 * 1024 * 1024
_SIZE = re.compile(r"([0-9]+)([kmg]?)b?", re.IGNORECASE)


def _smaller_size(value: Any, limit: int) -> str:
    """A log ``max-size`` no larger than ``limit`` (Docker's units: k, m, g)."""
    match = _SIZE.fullmatch(str(value or ""))
    if match:
        size = int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
        if 0 < size <= limit:
            return str(value)
    return f"{limit // (1 << 20)}m"


SOCKET_PATHS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/ds01/dockerd.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
)


@dataclass(frozen=True)
class Refusal:
    code: str
    sentence: str
    status: int = 403
    event_type: str = "gateway.refused"

    @property
    def message(self) -> str:
        return f"{self.code}: {self.sentence}"


def denied(sentence: str) -> Refusal:
    return Refusal(POLICY_DENIED, sentence)


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def identity_refusal(reason: str) -> Refusal:
    return Refusal(
        POLICY_DENIED,
        f"the ds01 gateway could not establish who is calling ({reason}); nothing was forwarded.",
        event_type="auth.denied",
    )


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """What a request is about. ``kind`` picks the check; ``ref`` names the object it is on."""

    kind: str
    path: str  # without the version prefix
    version: str  # e.g. "/v1.41" or ""
    query: tuple  # ((key, value), ...)
    ref: Optional[str] = None  # container / exec / volume / network reference (unquoted)
    action: str = ""

    def query_value(self, key: str) -> Optional[str]:
        for k, v in self.query:
            if k == key:
                return v
        return None


# Container sub-resources and the verb used in sentences.
CONTAINER_ACTIONS = {
    "json": "inspect",
    "logs": "read the logs of",
    "attach": "attach to",
    "attach/ws": "attach to",
    "exec": "exec into",
    "start": "start",
    "stop": "stop",
    "restart": "restart",
    "kill": "kill",
    "pause": "pause",
    "unpause": "unpause",
    "": "remove",
    "rename": "rename",
    "update": "update",
    "archive": "copy files from or to",
    "export": "export",
    "top": "list the processes of",
    "stats": "read the stats of",
    "wait": "wait for",
    "resize": "resize",
    "changes": "list the changes of",
}
EXEC_ACTIONS = {"start": "start an exec in", "resize": "resize an exec in", "json": "inspect an exec in"}
ADMIN_PREFIXES = ("plugins", "swarm", "nodes", "services", "tasks", "secrets", "configs")
OPEN_GET = ("_ping", "version", "info", "images", "distribution", "volumes", "networks")


def split_target(target: str) -> tuple:
    """``/v1.41/containers/x/json?all=1`` → (path, version prefix, query pairs)."""
    raw_path, _sep, raw_query = target.partition("?")
    version = ""
    head, sep, _rest = raw_path[1:].partition("/")
    if sep and _VERSION_PREFIX.fullmatch("/" + head):
        version = "/" + head
        raw_path = raw_path[len(version) :]
    query = tuple(parse_qsl(raw_query, keep_blank_values=True))
    return raw_path, version, query


def classify(method: str, target: str) -> Route:
    path, version, query = split_target(target)
    parts = path.split("/")[1:]  # raw segments, still percent-encoded
    first = parts[0] if parts else ""

    def route(kind: str, ref: Optional[str] = None, action: str = "") -> Route:
        return Route(kind, path, version, query, unquote(ref) if ref is not None else None, action)

    if ".." in parts or "." in parts or "" in parts[:-1]:
        return route("unknown")
    if first in ADMIN_PREFIXES:
        return route("admin")
    if len(parts) == 2 and parts[1] == "prune" and method == "POST":
        return route("admin")
    if first == "containers":
        if len(parts) == 2 and parts[1] == "json" and method == "GET":
            return route("containers.list")
        if len(parts) == 2 and parts[1] == "create" and method == "POST":
            return route("containers.create")
        if len(parts) == 2 and method == "DELETE":
            return route("container", parts[1], "")
        if len(parts) >= 3:
            action = "/".join(parts[2:])
            if action in CONTAINER_ACTIONS:
                return route("container", parts[1], action)
        return route("unknown")
    if first == "exec" and len(parts) == 3 and parts[2] in EXEC_ACTIONS:
        return route("exec", parts[1], parts[2])
    if first == "events" and len(parts) == 1:
        return route("events")
    if path == "/system/df":
        return route("system.df")
    if first == "commit" and len(parts) == 1 and method == "POST":
        return route("commit", query_value(query, "container") or "", "commit")
    if first == "build":
        if len(parts) == 1 and method == "POST":
            return route("build")
        return route("open")  # /build/cancel
    if first in ("grpc", "session") and len(parts) == 1:
        return route("grpc")  # BuildKit's control API and sessions: refused for users (objects.GRPC_SENTENCE)
    if first == "auth" and len(parts) == 1:
        return route("open")
    if first == "images":
        # dockerd's router matches the decoded path and image names contain "/": decode first.
        names = unquote(path).split("/")[1:]
        if ".." in names or "." in names or "" in names:
            return route("unknown")
        if method == "GET" and names[-1] == "get" and len(names) >= 2:
            return route("images.save")  # dockerd writes the whole image to its disk before it sends a byte
        if method in ("GET", "HEAD"):
            return route("open")  # list, inspect, history, search
        if method == "POST" and names[1:] in (["create"], ["load"]):
            return route(f"images.{names[1]}")
        if method == "POST" and len(names) >= 3 and names[-1] in ("tag", "push"):
            if names[-1] == "push":
                return route("open")
            return Route("images.tag", path, version, query, "/".join(names[1:-1]), "tag")
        if method == "DELETE" and len(names) >= 2:
            return Route("images.delete", path, version, query, "/".join(names[1:]), "remove")
        return route("unknown")
    if first == "volumes":
        if len(parts) == 2 and parts[1] == "create" and method == "POST":
            return route("volumes.create")
        if len(parts) == 2 and method in ("DELETE", "PUT"):
            return route("volume", parts[1], "remove" if method == "DELETE" else "update")
        if method in ("GET", "HEAD"):
            return route("open")
        return route("unknown")
    if first == "networks":
        if len(parts) == 2 and parts[1] == "create" and method == "POST":
            return route("networks.create")
        if len(parts) == 3 and parts[2] in ("connect", "disconnect") and method == "POST":
            return route("networks.connect", parts[1], parts[2])
        if len(parts) == 2 and method == "DELETE":
            return route("network", parts[1], "remove")
        if method in ("GET", "HEAD"):
            return route("open")
        return route("unknown")
    if first in OPEN_GET and method in ("GET", "HEAD"):
        return route("open")
    return route("unknown")


def query_value(query: tuple, key: str) -> Optional[str]:
    for k, v in query:
        if k == key:
            return v
    return None


def rebuild_target(route: Route, path: Optional[str] = None, query: Optional[tuple] = None) -> str:
    path = route.path if path is None else path
    query = route.query if query is None else query
    text = route.version + path
    return text + ("?" + urlencode(list(query)) if query else "")


def container_path(route: Route, container_id: str) -> str:
    """The route's path with the container reference replaced by the resolved full id."""
    suffix = f"/{route.action}" if route.action else ""
    return f"/containers/{quote(container_id, safe='')}{suffix}"


def add_label_filter(filters_json: Optional[str], label: str) -> str:
    """Merge ``label=<label>`` into a Docker ``filters`` query value (list or map form)."""
    filters: dict = {}
    if filters_json:
        try:
            parsed = json.loads(filters_json)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError("the filters parameter is not a JSON object")
        filters = parsed
    out: dict = {}
    for key, value in filters.items():
        if isinstance(value, list):
            out[key] = {str(v): True for v in value}
        elif isinstance(value, dict):
            out[key] = {str(k): bool(v) for k, v in value.items()}
        else:
            raise ValueError("a filter value is neither a list nor a map")
    out.setdefault("label", {})[label] = True
    return json.dumps(out, separators=(",", ":"))


def owner_filter_query(route: Route, login: str) -> tuple:
    """The route's query with the caller's ownership label added to ``filters``."""
    existing = query_value(route.query, "filters")
    merged = add_label_filter(existing, f"ds01.user={login}")
    return (*((k, v) for k, v in route.query if k != "filters"), ("filters", merged))


# --------------------------------------------------------------------------------------------
# Ownership
# --------------------------------------------------------------------------------------------


def ownership(login: str, name: str, labels: Optional[dict], verb: str) -> Optional[Refusal]:
    """None if ``login`` may ``verb`` the container with these labels and name, else the refusal.

    The owner is ``identity.container_owner``'s (the allocator's and detector's too): ``ds01.user``,
    then the old system's ``aime.mlc.USER`` and ``<name>._.<uid>``, then the devcontainer or compose
    folder's owner.
    """
    labels = labels or {}
    shown = name.lstrip("/")
    if str(labels.get("ds01.protected", "")).lower() == "true":
        return Refusal(
            NOT_OWNER,
            f"container '{shown}' is protected infrastructure (ds01.protected=true); only admins can {verb} it. "
            "Ask an admin if it needs attention.",
            event_type="auth.denied",
        )
    owner, _method = identity.container_owner({"Name": name, "Config": {"Labels": labels}})
    if not owner:
        return Refusal(
            NOT_OWNER,
            f"container '{shown}' has no owner (no ds01.user label); only admins can {verb} it. "
            "Ask an admin to label or remove it.",
            event_type="auth.denied",
        )
    if owner != login:
        return Refusal(
            NOT_OWNER,
            f"container '{shown}' belongs to {owner}; you can only {verb} your own containers "
            "(list them with `docker ps -a`).",
            event_type="auth.denied",
        )
    return None


def object_ownership(login: str, kind: str, name: str, labels: Optional[dict], verb: str) -> Optional[Refusal]:
    """Volumes and networks: refused only when labelled as another user's (unlabelled ones are shared)."""
    owner = (labels or {}).get("ds01.user")
    if owner and owner != login:
        return Refusal(
            NOT_OWNER,
            f"{kind} '{name}' belongs to {owner}; you can only {verb} your own {kind}s.",
            event_type="auth.denied",
        )
    return None


def volume_write_refusal(login: str, name: str, labels: Optional[dict], verb: str) -> Optional[Refusal]:
    """Removing or changing a volume: only its owner's (``ds01.user``). A volume with no owner was made by an
    admin, or is the anonymous volume of a container, kept after it; either way it may hold someone's data
    (round-7 attack: a user deleted both, and re-created an admin's under their own name)."""
    if labels is None:
        return None  # no such volume: the daemon says so
    owner = labels.get("ds01.user")
    if owner == login:
        return None
    if owner:
        return object_ownership(login, "volume", name, labels, verb)
    return Refusal(
        NOT_OWNER,
        f"volume '{name}' has no owner (an admin made it, or a removed container left it behind); only admins can "
        f"{verb} it. Your containers' anonymous volumes go with them when you remove them with `docker rm -v NAME`.",
        event_type="auth.denied",
    )


def admin_only(route: Route, method: str) -> Refusal:
    return denied(
        f"{method} {route.path} acts on the whole Docker daemon and is for admins only; "
        "ask an admin (members of the admin group) to do it."
    )


def unknown_route(route: Route, method: str) -> Refusal:
    return denied(
        f"{method} {route.path} is not available to users through the ds01 gateway; if you need it, ask an admin."
    )


# --------------------------------------------------------------------------------------------
# Create
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuAsk:
    """A GPU request found in a create body. ``count`` -1 means all GPUs."""

    count: int
    device_ids: tuple = ()
    source: str = "device_requests"  # device_requests | env | image_env | runtime

    def describe(self) -> str:
        if self.device_ids:
            return "GPU device(s) " + ",".join(self.device_ids)
        return "all GPUs" if self.count < 0 else f"{self.count} GPU{'s' if self.count != 1 else ''}"


@dataclass
class CreateContext:
    """What the create checks need to know about the caller and the host."""

    login: str
    home: str
    slice_name: str
    group: str
    max_cpus: Optional[float] = None
    memory: Optional[int] = None
    memory_swap: Optional[int] = None
    shm_size: Optional[int] = None
    pids_limit: Optional[int] = None
    allowed_capabilities: tuple = ()
    allowed_devices: tuple = ()
    bind_prefixes: tuple = ("{home}",)
    readonly_bind_prefixes: tuple = ()
    allow_host_network: bool = False
    socket_paths: tuple = SOCKET_PATHS
    image_env: Optional[list] = None  # the image's default Env (None: unknown / not needed)
    container_owners: dict = field(default_factory=dict)  # ref -> labels (None: no such container)
    volume_owners: dict = field(default_factory=dict)  # name -> labels (None: no such volume)
    realpath: Callable[[str], str] = os.path.realpath
    # the first component of a path that is a symlink the caller could have made (None: none)
    unsafe_symlink: Optional[Callable[[str], Optional[str]]] = None  # default: policy.unsafe_symlink
    uid: int = -1  # the caller's uid and primary gid (-1: unknown, nothing is stamped)
    gid: int = -1
    groups: tuple = ()  # every gid the caller is a member of
    now: Optional[dt.datetime] = None
    # dockerd refuses NanoCpus above the host's CPU count, so a limit above it is capped there.
    host_cpus: Optional[int] = field(default_factory=os.cpu_count)

    def cpu_cap(self) -> Optional[float]:
        if self.max_cpus is None:
            return None
        return min(self.max_cpus, float(self.host_cpus)) if self.host_cpus else self.max_cpus


def env_value(env: Optional[list], name: str) -> Optional[str]:
    """The last ``NAME=value`` in a Docker Env list (later entries win), or None."""
    value = None
    for item in env or []:
        if isinstance(item, str):
            key, sep, rest = item.partition("=")
            if key == name:
                value = rest if sep else ""
    return value


def is_gpu_request_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and docker_state.device_request_reaches_gpu(entry)


def gpu_ask(body: dict, image_env: Optional[list], default_runtime: str = "nvidia") -> Optional[GpuAsk]:
    """The GPU request of a create body in any of its forms; None when it asks for none.

    The answer comes from ``docker_state.gpu_reach`` (the detector asks the same function of a
    stored container). ``default_runtime`` is ``nvidia`` unless the daemon is known to use another
    one when ``Runtime`` is empty: an image's ``NVIDIA_VISIBLE_DEVICES`` then counts.
    """
    reach = docker_state.gpu_reach(body, body.get("HostConfig"), image_env, default_runtime)
    if not reach.reaches_gpu:
        return None
    source = reach.sources[0] if reach.sources else "device_requests"
    source = {"device_request": "device_requests", "runtime_env": "runtime"}.get(source, source)
    if str((body.get("HostConfig") or {}).get("Runtime") or "") == "nvidia" and source in ("env", "image_env"):
        source = "runtime"
    if reach.all:
        return GpuAsk(-1, (), source)
    if reach.devices and not reach.count:
        return GpuAsk(len(reach.devices), tuple(reach.devices), source)
    return GpuAsk(len(reach.devices) + reach.count, (), source)


def container_type(labels: dict) -> str:
    if any(k.startswith("devcontainer.") for k in labels):
        return "devcontainer"
    if any(k.startswith("com.docker.compose.") for k in labels):
        return "compose"
    if labels.get("ds01.container_type") == "ds01":
        return "ds01"
    return "docker"


def _expand(prefix: str, home: str) -> str:
    return os.path.normpath(prefix.replace("{home}", home))


def _within(path: str, prefix: str) -> bool:
    if prefix == "/":
        return path.startswith("/")
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _socket_refusal(source: str, socket_paths: tuple) -> Optional[Refusal]:
    for sock in socket_paths:
        sock = os.path.normpath(sock)
        if _within(sock, source):
            return denied(
                f"mounting {source} would put the Docker socket ({sock}) inside the container, which gives "
                "control of every container on the host; use the docker CLI on the host instead."
            )
    return None


def unsafe_symlink(path: str, max_hops: int = 40) -> Optional[str]:
    """The first symlink on ``path`` that a non-root user could have made or swapped, else None.

    Walks the path component by component with ``lstat``. A symlink owned by root in a directory
    only root can write (``/home`` → ``/srv/home``) is followed; any other symlink is reported,
    since its owner can point it elsewhere between a check and the daemon's mount. A component
    that does not exist ends the walk (dockerd creates it, as root, in a directory checked here).
    """
    parts = [p for p in path.split("/") if p]
    current = "/"
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current) or "/"
            continue
        candidate = os.path.join(current, name)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return None
        except OSError:
            return candidate
        if not stat.S_ISLNK(info.st_mode):
            current = candidate
            continue
        try:
            parent = os.stat(current)
            target = os.readlink(candidate)
        except OSError:
            return candidate
        hops += 1
        if info.st_uid != 0 or parent.st_uid != 0 or parent.st_mode & 0o022 or hops > max_hops:
            return candidate
        if target.startswith("/"):
            current = "/"
        parts = [p for p in target.split("/") if p] + parts
    return None


def check_bind_source(source: str, readonly: bool, ctx: CreateContext, what: str = "bind mount") -> Optional[Refusal]:
    """A host path offered to a container: allowed prefixes only, ``..`` resolved, no user-made symlink.

    Called at create and again at every start: a path is used when the container starts, so a
    directory swapped for a symlink in between is caught there.
    """
    if not source.startswith("/"):
        return denied(f"the {what} source {source!r} is not an absolute path; give the full path of a directory.")
    norm = os.path.normpath(source)
    socks = tuple(os.path.normpath(s) for s in tuple(ctx.socket_paths) + SOCKET_PATHS)
    link = (ctx.unsafe_symlink or unsafe_symlink)(norm)
    if link is not None:
        return denied(
            f"the {what} of {source} goes through the symbolic link {link}, which could point somewhere else by the "
            "time the container starts; mount the real directory instead."
        )
    try:
        real = ctx.realpath(norm)
    except (OSError, ValueError):
        real = norm
    if norm in socks or real in socks:
        return _socket_refusal(norm if norm in socks else real, socks)
    rw = [_expand(p, ctx.home) for p in ctx.bind_prefixes]
    ro = [_expand(p, ctx.home) for p in ctx.readonly_bind_prefixes]

    def inside(prefix: str) -> bool:
        try:
            real_prefix = ctx.realpath(prefix)
        except (OSError, ValueError):
            real_prefix = prefix
        return _within(norm, prefix) and (_within(real, prefix) or _within(real, real_prefix))

    if any(inside(p) for p in rw):
        return _socket_refusal(norm, socks) or _socket_refusal(real, socks)
    if any(inside(p) for p in ro):
        if readonly:
            return _socket_refusal(norm, socks) or _socket_refusal(real, socks)
        return denied(
            f"the {what} of {source} must be read-only (it is shared data); add ':ro' (or readonly in --mount)."
        )
    allowed = ", ".join(rw + [f"{p} (read-only)" for p in ro]) or "none"
    shown = source if real == source else f"{source} (which resolves to {real})"
    return denied(
        f"the {what} of {shown} is outside the directories you may mount ({allowed}); "
        "put the files under your home directory, or use a named volume."
    )


RUNTIME_DIRS = ("/proc", "/sys", "/dev")  # runc's own mounts, and what it masks in them


def _check_target(target: str) -> Optional[Refusal]:
    normal = os.path.normpath(target or "/x")
    if any(_within(normal, top) for top in RUNTIME_DIRS) and not _within(normal, "/dev/shm"):  # noqa: S108 - a mount target, not a temp file
        return denied(
            f"mounting onto {target} is not available: runc sets up /proc, /sys and /dev itself, and a volume or "
            "directory there can replace the files it uses to keep the container in (CVE-2025-31133). Mount it "
            "somewhere else, e.g. under /mnt or /data."
        )
    if _within(normal, NVIDIA_VOLUME_DIR):
        return denied(
            f"mounting into {NVIDIA_VOLUME_DIR} asks the NVIDIA runtime for GPUs behind the allocator's back; "
            "ask for GPUs with --gpus."
        )
    return None


def _check_volume_driver(
    driver: str, options: dict, readonly: bool, ctx: CreateContext, name: str
) -> Optional[Refusal]:
    """Plain local volumes (and tmpfs ones) only: a volume with ``o=bind``/``device=`` mounts a host
    path when the container starts, long after anything here could check it."""
    del readonly, ctx  # kept in the signature: the decision does not depend on them any more
    if driver not in ("", "local"):
        return denied(
            f"volume '{name}' uses the volume driver '{driver}'; only the local driver is available to users."
        )
    options = {str(k): str(v) for k, v in (options or {}).items()}
    if not options:
        return None
    shown = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return denied(
        f"volume '{name}' has driver options ({shown}); a volume that mounts a host path, a device or a network "
        "file system is for admins. Use a plain named volume (`docker volume create NAME`) or a directory under "
        "your home."
    )


def _check_volume_name(name: str, ctx: CreateContext) -> Optional[Refusal]:
    return object_ownership(ctx.login, "volume", name, ctx.volume_owners.get(name), "mount")


def _parse_bind(spec: str) -> tuple:
    parts = spec.split(":")
    source = parts[0]
    target = parts[1] if len(parts) > 1 else ""
    options = set(parts[2].split(",")) if len(parts) > 2 else set()
    return source, target, "ro" in options


def _capability(name: str) -> str:
    name = str(name).upper()
    return name[4:] if name.startswith("CAP_") else name


def _mode_refusal(mode: str, key: str, flag: str, ctx: CreateContext) -> Optional[Refusal]:
    if mode == "host":
        return denied(
            f"{flag}=host ({key}) shares the host's namespace with the container and lets it see or "
            "signal other users' processes; run without it."
        )
    if mode.startswith("container:"):
        ref = mode.split(":", 1)[1]
        return ownership(ctx.login, ref, ctx.container_owners.get(ref), f"share the namespaces of ({flag})")
    return None


SECURITY_OPT_OK = re.compile(r"no-new-privileges([:=]true)?|apparmor[:=]docker-default|seccomp[:=]builtin")


def referenced_containers(body: dict) -> list:
    """Container references in a create body whose owners must be looked up first."""
    host = body.get("HostConfig") or {}
    refs = []
    for key in ("NetworkMode", "PidMode", "IpcMode"):
        value = str(host.get(key) or "")
        if value.startswith("container:"):
            refs.append(value.split(":", 1)[1])
    for item in host.get("VolumesFrom") or []:
        refs.append(str(item).split(":", 1)[0])
    return refs


def referenced_volumes(body: dict) -> list:
    host = body.get("HostConfig") or {}
    names = []
    for spec in host.get("Binds") or []:
        source = str(spec).split(":", 1)[0]
        if source and not source.startswith("/"):
            names.append(source)
    for mount in host.get("Mounts") or []:
        if isinstance(mount, dict) and mount.get("Type") == "volume" and mount.get("Source"):
            names.append(str(mount["Source"]))
    return names


def check_user(value: str, ctx: CreateContext, what: str = "--user") -> Optional[Refusal]:
    """Containers (and execs) of users run as the caller's own uid, with one of the caller's groups.

    Root in a container is root on every file it can reach through a bind mount, and another
    uid is another person on the host; a user name is looked up in the image, not on the host.
    """
    if not value or ctx.uid < 0:
        return None
    user, sep, group = value.partition(":")
    allowed_groups = {ctx.gid, *ctx.groups}
    if user == str(ctx.uid) and (not sep or (group.isdigit() and int(group) in allowed_groups)):
        return None
    return denied(
        f"{what} {value} is not available: your containers run as you (uid {ctx.uid}, "
        f"`--user {ctx.uid}:{ctx.gid}`, the default), so files they write in your directories stay yours and root "
        "in a container is never root on the host. Leave it unset."
    )


def explicit_user(value: str, ctx: CreateContext) -> str:
    """``uid:gid`` always: with a bare uid, runc takes the group and supplementary groups from the
    image's /etc/passwd and /etc/group, which the user can write (``docker cp``)."""
    _user, sep, group = value.partition(":")
    return f"{ctx.uid}:{group if sep and group else ctx.gid}"


def _check_group_add(groups: list, ctx: CreateContext) -> Optional[Refusal]:
    allowed = {ctx.gid, *ctx.groups}
    for item in groups:
        text = str(item)
        if not text.isdigit():
            return denied(
                f"--group-add {text}: a group name is looked up inside the image, where it can be any group; "
                "give the numeric id of one of your own groups (`id -G`)."
            )
        if int(text) not in allowed:
            return denied(
                f"--group-add {text} is not one of your groups; containers may only carry groups you are a member "
                "of (`id -G`)."
            )
    return None


def _check_log_config(log_config: dict) -> Optional[Refusal]:
    driver = str(log_config.get("Type") or "")
    if driver not in LOG_DRIVERS:
        return denied(
            f"--log-driver {driver} sends the container's output to an address the Docker daemon connects to; "
            "use the default (json-file) or local."
        )
    for key, value in (log_config.get("Config") or {}).items():
        if key == "tag":
            text = str(value)
            if "{{" in text or "}}" in text or len(text) > LOG_TAG_MAX:
                return denied(
                    f"--log-opt tag={text[:40]}... is a template (or longer than {LOG_TAG_MAX} characters); the daemon "
                    "expands it in its own memory. Use a plain tag such as --log-opt tag=myjob."
                )
            continue
        if key not in LOG_OPTIONS:
            return denied(f"--log-opt {key} is not available; allowed are {', '.join(LOG_OPTIONS)}, tag.")
    return None


def _check_ports(host: dict) -> Optional[Refusal]:
    """Published ports bind on the host: loopback only, unprivileged ports only (an empty host
    address becomes 127.0.0.1 in ``harden``)."""
    if host.get("PublishAllPorts"):
        return denied(
            "-P (publish all ports) opens the container's ports on every interface of the host; publish the ones "
            "you need on loopback, e.g. -p 127.0.0.1:8888:8888, and reach them through an SSH tunnel."
        )
    for container_port, bindings in (host.get("PortBindings") or {}).items():
        for binding in bindings or []:
            address = str((binding or {}).get("HostIp") or "")
            port = str((binding or {}).get("HostPort") or "")
            if address not in ("", "127.0.0.1", "::1"):
                return denied(
                    f"-p {address}:{port}:{container_port} would open the port on {address}; ports are published "
                    "on the host's loopback only (-p 127.0.0.1:PORT:PORT), reach them through an SSH tunnel."
                )
            low = port.split("-", 1)[0]
            if low and (not low.isdigit() or int(low) < 1024):
                return denied(
                    f"host port {port} is a privileged port (below 1024) or not a number; publish on a port from "
                    "1024 up, or leave it empty for a free one."
                )
    return None


def archive_with_host_paths(name: str) -> Refusal:
    """``docker cp`` with a container that mounts host directories: dockerd reads and writes those
    files as root, past the permissions that bind the user on the host (and a path in the container
    can reach them through symlinks the user made there)."""
    shown = name.lstrip("/")
    return denied(
        f"docker cp with container '{shown}' is not available because it mounts directories of the host, which "
        "the Docker daemon would read and write as root. Copy to or from those directories on the host directly, "
        f"or stream through the container as yourself: `docker exec {shown} cat FILE > FILE`, "
        f"`docker exec -i {shown} sh -c 'cat > FILE' < FILE`."
    )


def has_host_paths(host: dict) -> bool:
    """True when the container mounts a host path (a bind), which is checked at every start."""
    if any(str(spec).startswith("/") for spec in host.get("Binds") or []):
        return True
    return any(isinstance(m, dict) and m.get("Type") == "bind" for m in host.get("Mounts") or [])


def _check_restart(policy: dict, host_paths: bool) -> Optional[Refusal]:
    name = str(policy.get("Name") or "")
    if name in RESTART_NONE or not host_paths:
        return None
    return denied(
        f"--restart {name} with a directory of the host mounted would let the Docker daemon start the container "
        "again without the checks the ds01 gateway makes at each start; use --restart no (the default), or a "
        "named volume instead of the bind mount."
    )


def _check_device_requests(requests: list) -> Optional[Refusal]:
    for entry in requests:
        if isinstance(entry, dict) and not docker_state.device_request_reaches_gpu(entry):
            driver = str(entry.get("Driver") or "") or "(any)"
            caps = entry.get("Capabilities") or []
            return denied(
                f"the device request for driver {driver} with capabilities {caps} names no device this server hands "
                "out; ask for GPUs with --gpus 1 (or --gpus device=<id>)."
            )
    return None


def check_start(info: dict, ctx: CreateContext) -> Optional[Refusal]:
    """At start, the container's host paths again: a directory swapped for a symlink is caught here."""
    host = info.get("HostConfig") or {}
    for spec in host.get("Binds") or []:
        source, _target, readonly = _parse_bind(str(spec))
        if source.startswith("/"):
            refusal = check_bind_source(source, readonly, ctx)
            if refusal:
                return refusal
    for mount in host.get("Mounts") or []:
        if isinstance(mount, dict) and mount.get("Type") == "bind":
            refusal = check_bind_source(str(mount.get("Source") or ""), bool(mount.get("ReadOnly")), ctx)
            if refusal:
                return refusal
    return None


def check_start_body(raw: bytes) -> Optional[Refusal]:
    """``POST /containers/{id}/start`` takes no body: an old API version would replace the HostConfig."""
    if raw.strip() in (b"", b"{}", b"null"):
        return None
    return denied(
        "starting a container with a request body would replace the settings checked when it was created; "
        "start it without one (`docker start NAME`)."
    )


def api_version_refusal(route: Route) -> Optional[Refusal]:
    if not route.version:
        return None
    text = route.version[2:]
    major, _sep, minor = text.partition(".")
    version = (int(major), int(minor or 0))
    if version >= MIN_API_VERSION:
        return None
    return denied(
        f"API version {text} is older than 1.24, the oldest the ds01 gateway speaks; use a newer Docker client "
        "(or DOCKER_API_VERSION=1.41)."
    )


def check_create(body: dict, ctx: CreateContext) -> Optional[Refusal]:
    """The first host-escape setting in a create body, as a refusal; None if there is none."""
    if not isinstance(body, dict):
        return Refusal(POLICY_DENIED, "the create request body is not a JSON object", status=400)
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        return Refusal(POLICY_DENIED, "HostConfig is not a JSON object", status=400)

    refusal = (
        check_user(str(body.get("User") or ""), ctx)
        or _check_group_add(host.get("GroupAdd") or [], ctx)
        or _check_log_config(host.get("LogConfig") or {})
        or _check_restart(host.get("RestartPolicy") or {}, has_host_paths(host))
        or _check_device_requests(host.get("DeviceRequests") or [])
    )
    if refusal:
        return refusal
    refusal = _check_ports(host)
    if refusal:
        return refusal
    if str(host.get("CgroupnsMode") or "") == "host":
        return denied("--cgroupns host shows the container the host's whole cgroup tree; run without it.")
    for item in host.get("Links") or []:
        ref = str(item).split(":", 1)[0].lstrip("/")
        refusal = ownership(ctx.login, ref, ctx.container_owners.get(ref), "link to (--link)")
        if refusal:
            return refusal
    if host.get("Privileged"):
        return denied(
            "--privileged gives the container every capability and every host device; it is not available. "
            "Ask for GPUs with --gpus and for single capabilities with --cap-add."
        )
    for cap in list(host.get("CapAdd") or []) + list(host.get("Capabilities") or []):
        name = _capability(cap)
        if name == "ALL":
            return denied("--cap-add ALL is the same as --privileged; add only the capabilities you need.")
        if name in NEVER_CAPABILITIES:
            return denied(
                f"--cap-add {name} would let the container make setuid files or device nodes that keep their power "
                "on the host through a mounted directory; it is not available."
            )
        if name not in {_capability(c) for c in ctx.allowed_capabilities}:
            return denied(
                f"--cap-add {name} reaches into the host kernel and is not allowed; allowed are: "
                + ", ".join(sorted(_capability(c) for c in ctx.allowed_capabilities))
                + "."
            )
    for key, flag in (("PidMode", "--pid"), ("IpcMode", "--ipc"), ("UTSMode", "--uts"), ("UsernsMode", "--userns")):
        refusal = _mode_refusal(str(host.get(key) or ""), key, flag, ctx)
        if refusal:
            return refusal
    network = str(host.get("NetworkMode") or "")
    if network == "host" and not ctx.allow_host_network:
        return denied(
            "--network host exposes every service on the host's loopback (including other users' notebooks) "
            "to the container; publish ports with -p instead, or use --network none."
        )
    if network.startswith("container:"):
        refusal = _mode_refusal(network, "NetworkMode", "--network", ctx)
        if refusal:
            return refusal
    for item in host.get("VolumesFrom") or []:
        ref = str(item).split(":", 1)[0]
        refusal = ownership(ctx.login, ref, ctx.container_owners.get(ref), "mount the volumes of (--volumes-from)")
        if refusal:
            return refusal
    runtime = str(host.get("Runtime") or "")
    if runtime not in SAFE_RUNTIMES and runtime != "nvidia":
        return denied(f"the runtime '{runtime}' is not available to users; leave --runtime unset.")
    if host.get("CgroupParent") and host["CgroupParent"] not in _own_cgroup_parents(ctx):
        return denied(
            f"--cgroup-parent {host['CgroupParent']} is not your slice; your containers always run in "
            f"{ctx.slice_name}. Leave --cgroup-parent unset."
        )
    for opt in host.get("SecurityOpt") or []:
        text = str(opt)
        if re.fullmatch(r"no-new-privileges[:=]false", text):
            return denied(
                "--security-opt no-new-privileges:false would let setuid programs in the container gain privileges; "
                "every container runs with no-new-privileges. Remove the option."
            )
        if SECURITY_OPT_OK.fullmatch(text):
            continue
        key = re.split(r"[:=]", text, maxsplit=1)[0]
        shown = text if len(text) <= 60 else text[:57] + "..."
        return denied(
            f"--security-opt {shown} weakens the container's confinement ({key}) and is not allowed; "
            "remove it (no-new-privileges is fine)."
        )
    if host.get("MaskedPaths") is not None or host.get("ReadonlyPaths") is not None:
        return denied(
            "changing the masked or read-only kernel paths (--security-opt systempaths=unconfined) "
            "exposes host kernel interfaces; remove it."
        )
    if host.get("DeviceCgroupRules"):
        return denied("--device-cgroup-rule opens host devices to the container; it is not available to users.")
    for device in host.get("Devices") or []:
        path = str((device or {}).get("PathOnHost") or "") if isinstance(device, dict) else str(device)
        refusal = _check_device(path, ctx)
        if refusal:
            return refusal
    if host.get("OomKillDisable"):
        return denied("--oom-kill-disable can leave the host out of memory; remove it.")
    if isinstance(host.get("OomScoreAdj"), int) and host["OomScoreAdj"] < 0:
        return denied("a negative --oom-score-adj shields the container from the OOM killer; remove it.")
    driver = str(host.get("VolumeDriver") or "")
    if driver not in ("", "local"):
        return denied(f"--volume-driver {driver} is not available to users; use local named volumes.")

    for target in [*(host.get("Tmpfs") or {}), *(body.get("Volumes") or {})]:
        refusal = _check_target(str(target))
        if refusal:
            return refusal
    for spec in host.get("Binds") or []:
        source, target, readonly = _parse_bind(str(spec))
        refusal = _check_target(target)
        if refusal:
            return refusal
        if source.startswith("/"):
            refusal = check_bind_source(source, readonly, ctx)
        else:
            refusal = _check_volume_name(source, ctx)
        if refusal:
            return refusal
    for mount in host.get("Mounts") or []:
        if not isinstance(mount, dict):
            return Refusal(POLICY_DENIED, "a Mounts entry is not a JSON object", status=400)
        kind = str(mount.get("Type") or "volume")
        refusal = _check_target(str(mount.get("Target") or ""))
        if refusal:
            return refusal
        readonly = bool(mount.get("ReadOnly"))
        if kind == "bind":
            propagation = str((mount.get("BindOptions") or {}).get("Propagation") or "")
            if propagation not in ("", "private", "rprivate"):
                return denied(
                    f"bind propagation '{propagation}' would carry mounts between the container and the host; "
                    "leave bind-propagation unset."
                )
            refusal = check_bind_source(str(mount.get("Source") or ""), readonly, ctx)
        elif kind == "volume":
            options = mount.get("VolumeOptions") or {}
            config = options.get("DriverConfig") or {}
            name = str(mount.get("Source") or "(anonymous)")
            refusal = _check_volume_driver(
                str(config.get("Name") or ""), config.get("Options") or {}, readonly, ctx, name
            )
            if refusal is None and mount.get("Source"):
                refusal = _check_volume_name(name, ctx)
        elif kind == "tmpfs":
            refusal = None
        else:
            refusal = denied(f"mounts of type '{kind}' are not available to users; use bind, volume or tmpfs.")
        if refusal:
            return refusal
    return None


def _own_cgroup_parents(ctx: CreateContext) -> tuple:
    group_slice = f"ds01-{ctx.group}.slice"
    return (ctx.slice_name, f"/ds01.slice/{group_slice}/{ctx.slice_name}")


def _check_device(path: str, ctx: CreateContext) -> Optional[Refusal]:
    if docker_state.is_cdi_name(path):
        return denied(
            f"--device {path} names a CDI device, which reaches hardware behind the GPU allocator's back; "
            "ask for GPUs with --gpus 1 (or --gpus device=<id>) instead."
        )
    norm = os.path.normpath(path)
    try:
        real = ctx.realpath(norm)
    except (OSError, ValueError):
        real = norm
    if any(os.path.basename(p).startswith("nvidia") for p in (norm, real)):
        return denied(
            f"--device {path} hands a GPU device to the container behind the GPU allocator's back; "
            "ask for GPUs with --gpus 1 (or --gpus device=<id>) instead."
        )
    allowed = {os.path.normpath(p) for p in ctx.allowed_devices}
    if norm in allowed and real in allowed | {norm}:
        return None
    return denied(
        f"--device {path} is not on the list of devices users may pass to containers"
        + (f" ({', '.join(sorted(allowed))})" if allowed else "")
        + "; ask an admin if you need it."
    )


def _clamp(value: Any, limit: Optional[float]) -> Any:
    """``value`` unless it is unset (0/None/-1) or above ``limit``; None limit = unlimited."""
    if limit is None:
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or value > limit:
        return int(limit)
    return value


def apply_limits(host: dict, ctx: CreateContext) -> dict:
    """Per-container CPU, memory, swap, shm and pids limits, where the caller asked for more or nothing."""
    cpus = ctx.cpu_cap()
    if cpus is not None:
        max_nano = int(cpus * 1e9)
        period = host.get("CpuPeriod") or 0
        quota = host.get("CpuQuota") or 0
        if isinstance(period, int) and isinstance(quota, int) and period > 0 and quota > 0:
            if quota / period > cpus:
                host["CpuQuota"] = int(cpus * period)
        else:
            # -1 (or any non-positive quota) is "unlimited" to the kernel: the cap comes from NanoCpus
            host.pop("CpuQuota", None)
            host.pop("CpuPeriod", None)
            host["NanoCpus"] = _clamp(host.get("NanoCpus"), max_nano)
    if ctx.memory is not None:
        host["Memory"] = _clamp(host.get("Memory"), ctx.memory)
    if ctx.memory_swap is not None:
        swap = _clamp(host.get("MemorySwap"), ctx.memory_swap)
        memory = host.get("Memory") or 0
        host["MemorySwap"] = max(swap, memory) if memory else swap
    if ctx.shm_size is not None:
        host["ShmSize"] = _clamp(host.get("ShmSize"), ctx.shm_size)
    if ctx.pids_limit is not None:
        host["PidsLimit"] = _clamp(host.get("PidsLimit"), ctx.pids_limit)
    return host


def image_label_refusal(image: str, labels: Optional[dict]) -> Optional[Refusal]:
    """A build may not start from an image whose labels would give its step containers an owner, a GPU,
    protection or an exemption: the daemon makes those containers itself, and they inherit the labels."""
    hazards = sorted(str(k) for k, v in (labels or {}).items() if identity.inherited_label_hazard(str(k), v))
    if not hazards:
        return None
    return denied(
        f"the image {image} carries the label {hazards[0]}={labels[hazards[0]]}, which only the server sets; the "
        "containers this build would make from it would inherit it. Build from an image without it (rebuild "
        "yours from its own base: images built through ds01 no longer carry it)."
    )


def commit_labels(body: dict, container_labels: Optional[dict], login: str) -> dict:
    """``docker commit`` copies the container's labels into the image: every label only the server sets
    is given an empty value in the commit (the daemon keeps the commit's value over the container's),
    and the image is labelled with its maker."""
    labels = body.get("Labels") if isinstance(body.get("Labels"), dict) else {}
    labels = {str(k): str(v) for k, v in labels.items() if not identity.reserved_label(str(k))}
    for key in container_labels or {}:
        if identity.reserved_label(str(key)):
            labels[str(key)] = ""
    labels[identity.IMAGE_MAKER_LABEL] = login
    body["Labels"] = labels
    return body


MIN_HEALTH_INTERVAL_S = 5.0


def healthcheck_refusal(body: dict, image_config: Optional[dict]) -> Optional[Refusal]:
    """Each health check is a ``runc exec`` that dockerd and containerd pay for outside the user's slice:
    a check more often than every MIN_HEALTH_INTERVAL_S seconds is refused, whether the create asks
    for it or the image brings it."""
    own = body.get("Healthcheck") if isinstance(body.get("Healthcheck"), dict) else {}
    inherited = (image_config or {}).get("Healthcheck") or {}
    # the daemon fills each unset (zero, empty) field of the create's check from the image's
    check = {**inherited, **{k: v for k, v in own.items() if v not in (None, 0, "", [])}}
    test = check.get("Test") or []
    if not test or test == ["NONE"]:
        return None
    for key, flag in (("Interval", "interval"), ("StartInterval", "start-interval")):
        name = f"--health-{flag}" if own.get(key) else f"the image's HEALTHCHECK --{flag}"
        value = check.get(key) or 0
        if isinstance(value, (int, float)) and 0 < value < MIN_HEALTH_INTERVAL_S * 1e9:
            return denied(
                f"{name} of {value / 1e9:g}s is too often: every check is a process the Docker daemon starts "
                f"outside your share of the machine. Use {MIN_HEALTH_INTERVAL_S:g}s or more "
                f"(`--health-interval {MIN_HEALTH_INTERVAL_S:g}s`), or --no-healthcheck."
            )
    return None


def no_copy_anonymous_volumes(body: dict, image_volumes: Optional[dict]) -> dict:
    """Anonymous volumes (``-v /PATH``, an image's ``VOLUME``, ``--mount type=volume`` without a source) start
    empty: dockerd would otherwise copy the image's files at that path into each new one at create time, before
    anything runs, and a plain `docker rm` leaves them behind, owned by nobody (round-8 attack: `-v /usr` three
    times left 1.24 GB). Named volumes are the user's own, counted and removable, and keep Docker's copy."""
    host = body.setdefault("HostConfig", {})
    mounts = [m for m in host.get("Mounts") or [] if isinstance(m, dict)]
    for mount in mounts:
        if str(mount.get("Type") or "volume") == "volume" and not mount.get("Source"):
            options = dict(mount.get("VolumeOptions") or {})
            options["NoCopy"] = True
            mount["VolumeOptions"] = options
    taken = {str(m.get("Target") or "").rstrip("/") for m in mounts}
    for bind in host.get("Binds") or []:
        parts = str(bind).split(":")
        if len(parts) >= 2:
            taken.add(parts[1].rstrip("/"))
    paths = list((body.get("Volumes") or {}).keys()) + list((image_volumes or {}).keys())
    for path in dict.fromkeys(str(p) for p in paths):
        if path.rstrip("/") not in taken:
            mounts.append({"Type": "volume", "Target": path, "VolumeOptions": {"NoCopy": True}})
            taken.add(path.rstrip("/"))
    if mounts:
        host["Mounts"] = mounts
    return body


def neutralise_image_labels(body: dict, image_labels: Optional[dict]) -> dict:
    """Gateway labels an image carries (``LABEL ds01.gpu.uuids=…``) are inherited by its containers;
    each one the gateway did not stamp is overwritten with an empty value, which readers ignore."""
    labels = body.setdefault("Labels", {})
    for key in image_labels or {}:
        if gateway_label(str(key)) and str(key) not in labels:
            labels[str(key)] = ""
    return body


def rewrite_create(body: dict, ctx: CreateContext) -> dict:
    """Stamp ownership, slice and limits on a create body already passed by ``check_create``."""
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict):
        labels = {}
    kind = container_type(labels)
    labels = {k: str(v) for k, v in labels.items() if not gateway_label(k)}
    now = ctx.now or dt.datetime.now(dt.timezone.utc)
    labels.update(
        {
            "ds01.user": ctx.login,
            "ds01.managed": "true",
            "ds01.container_type": kind,
            "ds01.created_at": now.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        }
    )
    body["Labels"] = labels
    host = body.get("HostConfig") or {}
    host["CgroupParent"] = host.get("CgroupParent") or ctx.slice_name
    harden(body, host, ctx)
    body["HostConfig"] = apply_limits(host, ctx)
    return body


def harden(body: dict, host: dict, ctx: CreateContext) -> None:
    """Root in the container is never root on the host: the caller's uid, no-new-privileges, and
    no capability that makes setuid files or device nodes (checked requests only)."""
    if ctx.uid >= 0:
        body["User"] = explicit_user(str(body.get("User") or ""), ctx)
    options = [str(o) for o in host.get("SecurityOpt") or []]
    if not any(re.fullmatch(r"no-new-privileges([:=]true)?", o) for o in options):
        options.append("no-new-privileges")
    host["SecurityOpt"] = options
    for bindings in (host.get("PortBindings") or {}).values():
        for binding in bindings or []:
            if isinstance(binding, dict) and not binding.get("HostIp"):
                binding["HostIp"] = "127.0.0.1"  # never every interface of the host
    if isinstance(host.get("CpuShares"), int) and host["CpuShares"] > MAX_CPU_SHARES:
        host["CpuShares"] = MAX_CPU_SHARES  # above the default is priority over everyone else
    if isinstance(host.get("BlkioWeight"), int) and host["BlkioWeight"] > MAX_BLKIO_WEIGHT:
        host["BlkioWeight"] = MAX_BLKIO_WEIGHT
    log_config = host.get("LogConfig") or {}
    if str(log_config.get("Type") or "") in ("", "json-file", "local"):
        options = dict(log_config.get("Config") or {})
        options["max-size"] = _smaller_size(options.get("max-size"), LOG_MAX_SIZE)
        files = str(options.get("max-file") or "")
        options["max-file"] = files if files.isdigit() and 0 < int(files) <= LOG_MAX_FILES else str(LOG_MAX_FILES)
        if "mode" in options or "max-buffer-size" in options:
            options["max-buffer-size"] = _smaller_size(options.get("max-buffer-size"), LOG_MAX_BUFFER)
        host["LogConfig"] = {"Type": str(log_config.get("Type") or ""), "Config": options}
    drop = [str(c) for c in host.get("CapDrop") or []]
    have = {_capability(c) for c in drop}
    if "ALL" not in have:
        drop.extend(c for c in NEVER_CAPABILITIES if c not in have)
    host["CapDrop"] = drop


def set_env(body: dict, name: str, value: str) -> None:
    env = [e for e in (body.get("Env") or []) if not (isinstance(e, str) and e.partition("=")[0] == name)]
    env.append(f"{name}={value}")
    body["Env"] = env


def apply_gpu_grant(body: dict, uuids: list, labels: dict) -> dict:
    """Replace every GPU request form by exactly the granted devices."""
    host = body.setdefault("HostConfig", {})
    others = [e for e in host.get("DeviceRequests") or [] if not is_gpu_request_entry(e)]
    host["DeviceRequests"] = [
        *others,
        {"Driver": "", "Count": 0, "DeviceIDs": list(uuids), "Capabilities": [["gpu"]], "Options": {}},
    ]
    if host.get("Runtime") == "nvidia":
        host["Runtime"] = ""
    set_env(body, NVIDIA_ENV, ",".join(uuids))
    body.setdefault("Labels", {}).update({k: str(v) for k, v in labels.items()})
    return body


def strip_gpu(body: dict) -> dict:
    """A container that asked for no GPU: hide every GPU from the NVIDIA runtime, whatever its image says."""
    set_env(body, NVIDIA_ENV, "void")
    return body


# --------------------------------------------------------------------------------------------
# Other bodies
# --------------------------------------------------------------------------------------------


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
    if "CgroupParent" in body and body["CgroupParent"] not in ("", None, *_own_cgroup_parents(ctx)):
        return denied("docker update cannot move a container out of your slice."), body
    refusal = _check_restart(body.get("RestartPolicy") or {}, host_paths)
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
    refusal = _check_volume_driver(str(body.get("Driver") or ""), body.get("DriverOpts") or {}, False, ctx, name)
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


def check_network_create(body: Any, ctx: CreateContext) -> tuple:
    if not isinstance(body, dict):
        return Refusal(POLICY_DENIED, "the network request body is not a JSON object", status=400), body
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
    if parent and parent not in _own_cgroup_parents(ctx):
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


def filter_system_df(body: Any, login: str) -> Any:
    """``GET /system/df`` for a user: only their containers."""
    if isinstance(body, dict) and isinstance(body.get("Containers"), list):
        body["Containers"] = [
            c for c in body["Containers"] if isinstance(c, dict) and (c.get("Labels") or {}).get("ds01.user") == login
        ]
    return body
