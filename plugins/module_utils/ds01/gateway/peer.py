"""Who is calling: the kernel's answer (SO_PEERCRED), turned into a login, a group and limits.

A process inside a container is its container's owner (the ``ds01.user`` label), never its
in-container uid: root inside a container is not root on the host. The container is found from
``/proc/<pid>/cgroup`` (cgroupfs driver: ``…/docker/<id>`` or ``…/<parent>/<id>``; systemd
driver: ``…/docker-<id>.scope``) and then *proved*: the caller must share the container's PID
namespace, which a host process cannot enter without CAP_SYS_ADMIN. A cgroup path alone proves
nothing (a user with a delegated systemd subtree can name a directory after any id).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import struct
from typing import Optional

from ..record import record

_CONTAINER_COMPONENT = re.compile(r"(?:docker-)?([0-9a-f]{64})(?:\.scope)?")
# Subtrees that belong to users (systemd delegation): ids found there are never trusted.
_USER_SUBTREES = ("user.slice",)


@record(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peercred(sock: socket.socket) -> PeerCred:
    """pid/uid/gid of the process that connected to this Unix socket (as of connect())."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def container_id_from_cgroup(text: str) -> Optional[str]:
    """The outermost Docker container id named by a ``/proc/<pid>/cgroup`` text, or None.

    Every hierarchy line is looked at (cgroup v1 lists one per controller, v2 one ``0::`` line);
    the first container id on the path from the root wins, so a nested engine's container inside
    ours is attributed to ours. Paths under ``user.slice`` are ignored (user-delegated).
    """
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2]
        components = [c for c in path.split("/") if c]
        if components and components[0] in _USER_SUBTREES:
            continue
        for component in components:
            match = _CONTAINER_COMPONENT.fullmatch(component)
            if match:
                return match.group(1)
    return None


def read_cgroup(pid: int, proc_root: str = "/proc") -> Optional[str]:
    try:
        with open(os.path.join(proc_root, str(pid), "cgroup"), encoding="utf-8") as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None


def pid_namespace(pid: int, proc_root: str = "/proc") -> Optional[int]:
    """The PID namespace of ``pid``; None when it is gone or cannot be read (no CAP_SYS_PTRACE)."""
    try:
        return os.stat(os.path.join(proc_root, str(pid), "ns", "pid")).st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


@record(frozen=True)
class Account:
    login: str
    uid: int
    gid: int
    home: str


def account_of_uid(uid: int) -> Optional[Account]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def account_of_login(login: str) -> Optional[Account]:
    try:
        entry = pwd.getpwnam(login)
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def is_admin(account: Account, admin_group: str, admin_users: tuple, peer_gid: Optional[int] = None) -> bool:
    """uid 0, a login in ``admin_users``, or a member (primary or supplementary) of ``admin_group``."""
    if account.uid == 0 or account.login in admin_users:
        return True
    try:
        admin_gid = grp.getgrnam(admin_group).gr_gid
    except KeyError:
        return False
    if peer_gid is not None and peer_gid == admin_gid:
        return True
    try:
        return admin_gid in os.getgrouplist(account.login, account.gid)
    except OSError:
        return False


@record(frozen=True)
class Caller:
    """The established caller of one connection."""

    login: str
    uid: int
    home: str
    admin: bool
    pid: int
    container: Optional[str] = None  # the container the calling process lives in, if any

    def describe(self) -> str:
        where = f" (from inside container {self.container[:12]})" if self.container else ""
        return f"{self.login}{where}"
