"""Routes (a fixed table: a route not in it is refused) and who may use the object a route names."""

from __future__ import annotations

import json
import re
from typing import Optional
from urllib.parse import parse_qsl, quote, unquote, urlencode

from ... import identity
from ...record import record
from .base import MIN_API_VERSION, NOT_OWNER, Refusal, denied

_VERSION_PREFIX = re.compile(r"/v[0-9]+(?:\.[0-9]+)?")


@record(frozen=True)
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
        if len(parts) == 1 and method in ("GET", "HEAD"):
            return route("volumes.list")
        if len(parts) == 2 and method in ("GET", "HEAD"):
            return route("volume", parts[1], "inspect")
        return route("unknown")
    if first == "networks":
        if len(parts) == 2 and parts[1] == "create" and method == "POST":
            return route("networks.create")
        if len(parts) == 3 and parts[2] in ("connect", "disconnect") and method == "POST":
            return route("networks.connect", parts[1], parts[2])
        if len(parts) == 2 and method == "DELETE":
            return route("network", parts[1], "remove")
        if len(parts) == 1 and method in ("GET", "HEAD"):
            return route("networks.list")
        if len(parts) == 2 and method in ("GET", "HEAD"):
            return route("network", parts[1], "inspect")
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


def volume_inspect_refusal(login: str, name: str, labels: Optional[dict]) -> Optional[Refusal]:
    """Inspecting a volume: refused when it is another user's (its labels and where it lives are theirs); an
    unowned one (anonymous, or an admin's) shows."""
    if labels is None:
        return None  # no such volume: the daemon says so
    return object_ownership(login, "volume", name, labels, "inspect")


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
