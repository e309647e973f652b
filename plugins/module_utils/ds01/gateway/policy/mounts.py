"""Host paths a container may reach: bind sources (opened and checked by descriptor), mount targets,
volume drivers and names, and the containers and volumes a create refers to."""

from __future__ import annotations

import os
import stat
from typing import Optional

from .base import NVIDIA_VOLUME_DIR, SOCKET_PATHS, CreateContext, Refusal, denied
from .routes import object_ownership


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


def check_target(target: str) -> Optional[Refusal]:
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


def check_volume_driver(driver: str, options: dict, readonly: bool, ctx: CreateContext, name: str) -> Optional[Refusal]:
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


def check_volume_name(name: str, ctx: CreateContext) -> Optional[Refusal]:
    return object_ownership(ctx.login, "volume", name, ctx.volume_owners.get(name), "mount")


def parse_bind(spec: str) -> tuple:
    parts = spec.split(":")
    source = parts[0]
    target = parts[1] if len(parts) > 1 else ""
    options = set(parts[2].split(",")) if len(parts) > 2 else set()
    return source, target, "ro" in options


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


def pin_container_refs(body: dict, pinned: dict) -> dict:
    """``body`` with each container reference of ``referenced_containers`` replaced by the full id it named when
    the gateway checked it (``pinned``: ref -> id). A full id is the daemon's first match, so it cannot be
    shadowed by a name or read as a prefix of another container's id."""
    host = body.get("HostConfig")
    if not isinstance(host, dict):
        return body
    for key in ("NetworkMode", "PidMode", "IpcMode"):
        value = str(host.get(key) or "")
        if value.startswith("container:") and value.split(":", 1)[1] in pinned:
            host[key] = "container:" + pinned[value.split(":", 1)[1]]
    if host.get("VolumesFrom"):
        out = []
        for item in host["VolumesFrom"]:
            ref, sep, mode = str(item).partition(":")
            out.append(pinned.get(ref, ref) + sep + mode)
        host["VolumesFrom"] = out
    return body


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
