"""Bind mounts pinned to the directory that was checked, not to a path the user can swap.

A bind source is a path, and dockerd resolves it again each time it mounts (at create for
``--mount``, at every start and restart, and for ``docker cp`` on a stopped container). The owner
of a home directory can swap ``~/data`` for a symlink to ``/`` between any check and that moment
(``renameat2(RENAME_EXCHANGE)`` in a loop wins within a few starts). So the gateway never hands the
daemon the user's path:

- at create, every bind source of a user's container is replaced by a *pin*,
  ``<run_dir>/gateway/pins/<token>/<n>``, and the original sources are kept in the gateway-owned
  label ``ds01.binds`` (``{"token": …, "sources": [{"source": …, "readonly": …}]}``);
- around every request that makes the daemon mount (create, start, restart, archive), the gateway
  opens each original source itself, one component at a time with ``O_PATH|O_NOFOLLOW`` (a symlink
  anywhere is refused), checks that what it opened is inside the directories the user may mount,
  and bind-mounts *that descriptor* (``/proc/self/fd/<fd>``) onto the pin, an empty mount point in
  a root-only directory. The daemon then mounts the pin: the very directory that was opened,
  whatever happens to its path afterwards. (A symlink to ``/proc/<pid>/fd`` is not enough: runc
  mounts in the container's new mount namespace, where a mount of the gateway's is refused.)
- after the daemon answered, the pins are unmounted (the container keeps its own copy): a start
  the gateway did not see (an admin on the daemon's socket, a restart policy) mounts an empty
  directory instead of a path nobody checked.

This needs the gateway in the host's mount namespace with CAP_SYS_ADMIN (the unit says why).

A source that does not exist yet is created as the user's (dockerd would create it as root).
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import uuid
from typing import Callable, Optional

LABEL = "ds01.binds"
O_PATH = getattr(os, "O_PATH", 0o10000000)
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
_LIBC = ctypes.CDLL(None, use_errno=True)


def _mount_fd(fd: int, target: str) -> None:
    if _LIBC.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise PinError(f"the gateway could not pin a bind source ({os.strerror(err)}); tell the admins.")


def _unmount(target: str) -> None:
    _LIBC.umount2(target.encode(), MNT_DETACH)


class PinError(Exception):
    """A bind source that cannot be pinned; ``sentence`` says why and what to do."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


def pin_root(run_dir: str) -> str:
    return os.path.join(run_dir, "gateway", "pins")


def _split_bind(spec: str) -> tuple:
    source, _sep, rest = spec.partition(":")
    return source, rest


def plan_create(body: dict) -> Optional[dict]:
    """Replace every host-path bind of a create body by a pin; the plan (also stamped as the
    ``ds01.binds`` label), or None when the container mounts no host path."""
    host = body.get("HostConfig") or {}
    token = uuid.uuid4().hex
    sources: list = []
    binds = []
    for spec in host.get("Binds") or []:
        source, rest = _split_bind(str(spec))
        if not source.startswith("/"):
            binds.append(spec)
            continue
        options = rest.split(":", 1)[1] if ":" in rest else ""
        sources.append({"source": source, "readonly": "ro" in options.split(",")})
        binds.append(f"{{pin}}/{len(sources) - 1}:{rest}")
    for mount in host.get("Mounts") or []:
        if isinstance(mount, dict) and mount.get("Type") == "bind":
            sources.append({"source": str(mount.get("Source") or ""), "readonly": bool(mount.get("ReadOnly"))})
            mount["Source"] = f"{{pin}}/{len(sources) - 1}"
    if not sources:
        return None
    if host.get("Binds"):
        host["Binds"] = binds
    plan = {"token": token, "sources": sources}
    body.setdefault("Labels", {})[LABEL] = json.dumps(plan, separators=(",", ":"))
    return plan


def finish_create(body: dict, run_dir: str, plan: Optional[dict]) -> None:
    """Write the pin directory into the rewritten sources (run_dir is known only to the server)."""
    if not plan:
        return
    base = os.path.join(pin_root(run_dir), plan["token"])
    host = body.get("HostConfig") or {}
    if host.get("Binds"):
        host["Binds"] = [str(b).replace("{pin}", base, 1) for b in host["Binds"]]
    for mount in host.get("Mounts") or []:
        if isinstance(mount, dict) and str(mount.get("Source") or "").startswith("{pin}"):
            mount["Source"] = mount["Source"].replace("{pin}", base, 1)


def plan_of(labels: Optional[dict]) -> Optional[dict]:
    """The pin plan a container carries, or None (no host paths, or made before pins existed)."""
    text = (labels or {}).get(LABEL)
    if not text:
        return None
    try:
        plan = json.loads(text)
    except ValueError:
        return None
    if not isinstance(plan, dict) or not isinstance(plan.get("token"), str) or not plan["token"].isalnum():
        return None
    sources = plan.get("sources")
    if not isinstance(sources, list) or not all(isinstance(s, dict) and "source" in s for s in sources):
        return None
    return plan


def open_dir_safely(path: str, uid: int, gid: int, create: bool = True) -> int:
    """An ``O_PATH`` descriptor of ``path``, reached without following any symlink.

    Missing trailing components are created as ``uid:gid`` (0755), the way dockerd would create a
    missing bind source, but owned by the user. Raises PinError.
    """
    if not path.startswith("/"):
        raise PinError(f"the bind source {path!r} is not an absolute path; give the full path.")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise PinError(f"the bind source {path} contains '..'; give the real path.")
    fd = os.open("/", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise PinError(f"the bind source {path} does not exist; create it first.") from None
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.chown(f"/proc/self/fd/{nfd}", uid, gid)
            info = os.fstat(nfd)
            if stat.S_ISLNK(info.st_mode):
                os.close(nfd)
                shown = "/" + "/".join(parts[: i + 1])
                raise PinError(
                    f"the bind source {path} goes through the symbolic link {shown}; mount the real directory instead."
                )
            os.close(fd)
            fd = nfd
        return fd
    except PinError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise PinError(f"the bind source {path} cannot be opened ({exc.strerror}); check that it exists.") from None


class Pinned:
    """``with Pinned(plan, run_dir, check, uid, gid):`` the pins point at the checked directories.

    ``check(source, readonly, opened_path)`` returns a refusal sentence or None: it is asked with
    the path the kernel reports for what was opened, so the decision is about the real directory.
    """

    def __init__(
        self,
        plan: Optional[dict],
        run_dir: str,
        check: Callable[[str, bool, str], Optional[str]],
        uid: int,
        gid: int,
    ) -> None:
        self.plan = plan
        self.run_dir = run_dir
        self.check = check
        self.uid = uid
        self.gid = gid
        self.mounted: list = []

    def __enter__(self) -> Pinned:
        if not self.plan or self.mounted:
            return self  # nothing to pin, or already pinned (entered once by the caller)
        base = os.path.join(pin_root(self.run_dir), self.plan["token"])
        try:
            os.makedirs(base, mode=0o700, exist_ok=True)
            for index, item in enumerate(self.plan["sources"]):
                source, readonly = str(item["source"]), bool(item.get("readonly"))
                fd = open_dir_safely(source, self.uid, self.gid)
                try:
                    opened = os.readlink(f"/proc/self/fd/{fd}")
                    sentence = self.check(source, readonly, opened)
                    if sentence:
                        raise PinError(sentence)
                    target = os.path.join(base, str(index))
                    _mount_point(target, stat.S_ISDIR(os.stat(f"/proc/self/fd/{fd}").st_mode))
                    _mount_fd(fd, target)
                    self.mounted.append(target)
                finally:
                    os.close(fd)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for target in self.mounted:
            _unmount(target)
        self.mounted = []

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mount_point(target: str, directory: bool) -> None:
    """An empty, root-owned mount point (a directory, or a file for a file source)."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode) == directory and not stat.S_ISLNK(info.st_mode):
        return
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            os.rmdir(target)
        else:
            os.unlink(target)
    if directory:
        os.mkdir(target, 0o700)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))


def remove(run_dir: str, labels: Optional[dict]) -> None:
    """Drop a removed container's (unmounted) pin directory."""
    plan = plan_of(labels)
    if not plan:
        return
    base = os.path.join(pin_root(run_dir), plan["token"])
    try:
        for name in os.listdir(base):
            path = os.path.join(base, name)
            _unmount(path)
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        os.rmdir(base)
    except OSError:
        pass


def unmount_all(run_dir: str) -> int:
    """Unmount pins a gateway that died mid-request left behind (they still point at checked
    directories, but nothing should hold them between requests); the number found."""
    root = os.path.realpath(pin_root(run_dir)) + "/"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            points = [line.split()[4] for line in handle if len(line.split()) > 4]
    except OSError:
        return 0
    found = 0
    for point in reversed(points):  # the newest first
        path = point.encode().decode("unicode_escape")  # mountinfo escapes spaces as \040
        if path.startswith(root):
            _unmount(path)
            found += 1
    return found
