"""Reaching a container's owner where they are: their terminals, and a file they will find.

- **Terminals**: every login session of the user that logind knows, read through its public API
  (sd-login: ``sd_uid_get_sessions``, ``sd_session_get_state``, ``sd_session_get_tty``) in
  ``libsystemd.so.0`` with ctypes; no utmp record layout is parsed. Where libsystemd is missing or
  logind is not running (``sd_booted()`` is 0, or no ``/run/systemd/seats``) the user has no
  terminals here, and the notice still reaches the spool and the workspace. A closing session (logged
  out, processes lingering) is skipped, and only a ``pts/N`` or ``ttyN`` TTY becomes a path; each is
  opened with
  ``O_WRONLY | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW`` and written only when ``fstat`` of the open
  descriptor shows a character device owned by that user; a full terminal (EAGAIN) is skipped, not
  waited for. No ``wall``, no ``write(1)``, no subprocess.
- **The spool** (every notice): one JSON line per notice in ``<state_dir>/notices/<login>.jsonl``.
  The directory is root's (``0711``: users open their own file by name, cannot list or plant
  anything); the file is root's, ``0640`` with a POSIX ACL that lets that one user read it
  (``system.posix_acl_access``, written directly: no ``setfacl`` needed). Where the file system
  has no ACLs, a user-private group (named after the login, no other members) is used instead;
  otherwise the file stays root-only and a warning is logged. The services that write it run with
  ``ProtectHome=read-only``: nothing is written in home directories. ``ds01 limits`` lists the
  recent notices and the login greeting (``ds01 limits --brief``) shows the ones not seen yet.
  Capped at ``MAX_FILE_BYTES``: the oldest notices go first.
- **A file in the workspace**: when the container mounts ``/workspace``, the message is also
  appended to ``/workspace/.ds01-alerts`` through the Docker archive API (``put_archive``; the file
  lands in the user's own workspace, owned by them, and survives the container's removal).

The sessions source (``sessions(login) -> TTY names``, logind's by default), the /dev root, the spool
directory and the passwd lookup are constructor arguments so tests run against a temporary tree.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import errno
import fcntl
import grp
import io
import json
import os
import pwd
import re
import stat
import struct
import tarfile
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from . import docker, identity
from .record import record

DEV_ROOT = "/dev"
ALERTS_NAME = ".ds01-alerts"
WORKSPACE_ALERTS = "/workspace/" + ALERTS_NAME
MAX_FILE_BYTES = 64 * 1024
WIDTH = 72

_LINE_RE = re.compile(r"^(pts/\d{1,6}|tty\d{1,3})$")


@record(frozen=True)
class Message:
    """A notice that does not come from the lifecycle (which has its own ``Notice``): same three fields."""

    level: str
    title: str
    lines: tuple


# -- login sessions: logind (sd-login) -------------------------------------------------------------
SD_LOGIN_LIBRARY = "libsystemd.so.0"
LOGIND_SEATS = "/run/systemd/seats"  # logind's own "is it running" test (sd-login's logind_running)


class Logind:
    """A user's terminals as logind knows them, through sd-login in ``libsystemd.so.0`` (ctypes, no new
    dependency). Never raises: where the library is missing, systemd did not boot this host or logind is not
    running, ``ttys`` answers ``[]`` (logged at debug); a negative errno from sd-login is logged and counts as
    no sessions. Every string sd-login returns is freed with libc ``free``."""

    def __init__(self, library: str = SD_LOGIN_LIBRARY, seats_dir: str = LOGIND_SEATS) -> None:
        self.library = library
        self.seats_dir = seats_dir
        self._lib: Any = None
        self._free: Any = None
        self._tried = False

    def _load(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                lib = ctypes.CDLL(self.library)
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.sd_uid_get_sessions, lib.sd_session_get_tty, lib.sd_session_get_state  # noqa: B018
            except (OSError, AttributeError) as exc:
                _log().debug("no %s (%s): no login sessions are read", self.library, exc)
                return None
            pp = ctypes.POINTER(ctypes.c_void_p)
            lib.sd_booted.argtypes, lib.sd_booted.restype = [], ctypes.c_int
            lib.sd_uid_get_sessions.argtypes = [ctypes.c_uint, ctypes.c_int, ctypes.POINTER(pp)]
            lib.sd_uid_get_sessions.restype = ctypes.c_int
            for name in ("sd_session_get_tty", "sd_session_get_state"):
                getattr(lib, name).argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
                getattr(lib, name).restype = ctypes.c_int
            libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None
            self._lib, self._free = lib, libc.free
        return self._lib

    def running(self) -> bool:
        """Whether sd-login can answer here: the library loads, systemd booted the host, logind runs."""
        lib = self._load()
        return lib is not None and lib.sd_booted() > 0 and os.path.isdir(self.seats_dir)

    def sessions(self, uid: int) -> list:
        """The ids of ``uid``'s sessions, active or not (``[]`` on an error, which is logged)."""
        array = ctypes.POINTER(ctypes.c_void_p)()
        count = self._lib.sd_uid_get_sessions(uid, 0, ctypes.byref(array))
        out = []
        if array:
            index = 0
            while array[index]:
                out.append(ctypes.string_at(array[index]).decode("utf-8", errors="replace"))
                self._free(array[index])
                index += 1
            self._free(array)
        if count < 0:
            _log().info("logind: sd_uid_get_sessions(%d): %s", uid, os.strerror(-count))
            return []
        return out

    def _string(self, function: str, session: str) -> Optional[str]:
        """One string property of a session (``sd_session_get_<what>``), or None where it has none."""
        value = ctypes.c_void_p()
        r = getattr(self._lib, function)(session.encode(), ctypes.byref(value))
        try:
            if r < 0 or not value.value:
                if r < 0 and -r not in (errno.ENXIO, errno.ENODATA, errno.ENOENT):
                    _log().info("logind: %s(%s): %s", function, session, os.strerror(-r))
                return None
            return ctypes.string_at(value.value).decode("utf-8", errors="replace")
        finally:
            if value.value is not None:
                self._free(value)

    def ttys(self, login: str) -> list:
        """The TTY names (``pts/3``, ``tty1`` …) of ``login``'s sessions that are not closing."""
        if not self.running():
            _log().debug("logind is not running here (or no %s): no terminals for %s", self.library, login)
            return []
        try:
            uid = pwd.getpwnam(login).pw_uid
        except KeyError:
            return []
        out = []
        for session in self.sessions(uid):
            if self._string("sd_session_get_state", session) == "closing":
                continue  # logged out; processes linger, the terminal may be someone else's now
            tty = self._string("sd_session_get_tty", session)
            if tty and tty not in out:
                out.append(tty)
        return out


LOGIND = Logind()


def logind_ttys(login: str) -> list:
    """The default sessions source: ``login``'s TTY names according to logind (``Logind.ttys``)."""
    return LOGIND.ttys(login)


def terminal_paths(ttys: Sequence[str], dev_root: str = DEV_ROOT) -> list:
    """``dev_root`` paths of the TTY names that are ``pts/N`` or ``ttyN`` (others are skipped), without duplicates."""
    out: list = []
    for tty in ttys:
        if not isinstance(tty, str) or not _LINE_RE.match(tty):
            continue
        path = os.path.join(dev_root, tty)
        if path not in out:
            out.append(path)
    return out


def write_terminal(path: str, uid: int, text: str) -> bool:
    """Write ``text`` to one terminal if, once opened, it is a character device owned by ``uid``."""
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False  # gone, a symlink (ELOOP), not permitted …
    try:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or st.st_uid != uid:
            return False
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", errors="replace")
        try:
            os.write(fd, data)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EIO):
                return False
            raise
        return True
    finally:
        os.close(fd)


def render(
    level: str, title: str, lines: Sequence[str], quota: Optional[str] = None, when: Optional[str] = None
) -> str:
    """The bordered box every notice uses: ``[LEVEL] title``, the body, the user's quota line."""
    import textwrap

    rule = "=" * WIDTH
    out = ["", rule, f"[{level}] {title}"]
    if when:
        out.append(f"  ({when})")
    out.append("-" * WIDTH)
    for line in lines:
        out.extend(textwrap.wrap(line, WIDTH - 2, initial_indent="  ", subsequent_indent="    ") or [""])
    if quota:
        out.append("-" * WIDTH)
        out.append(f"  Your usage: {quota}")
    out.append(rule)
    return "\n".join(out) + "\n"


def _append_capped(old: bytes, new: bytes, cap: int = MAX_FILE_BYTES) -> bytes:
    data = old + new
    if len(data) <= cap:
        return data
    cut = data[-cap:]
    first = cut.find(b"\n" + b"=" * WIDTH)
    return cut[first + 1 :] if first >= 0 else cut


class Notifier:
    """Delivers one notice to a user's terminals, their spool, and their workspace (module docstring)."""

    def __init__(
        self,
        docker_client: Any = None,
        *,
        spool_dir: Optional[str] = None,
        sessions: Callable[[str], Sequence[str]] = logind_ttys,
        dev_root: str = DEV_ROOT,
        passwd: Callable[[str], Any] = pwd.getpwnam,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = docker_client
        self.spool = Spool(spool_dir) if spool_dir else None
        self.sessions = sessions
        self.dev_root = dev_root
        self.passwd = passwd
        self.clock = clock

    def deliver(self, user: str, facts: Any, notice: Any, quota: Optional[str] = None) -> dict:
        """``{"terminals": [paths written], "file": the spool file or None, "workspace": where or None}``."""
        now = self.clock()
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now))
        name = getattr(facts, "name", None)
        title = f"{notice.title}: {name}" if name else notice.title
        text = render(notice.level, title, notice.lines, quota, when)
        try:
            entry = self.passwd(user)
        except KeyError:
            entry = None
        written = []
        if entry is not None:
            for path in terminal_paths(self.sessions(user), self.dev_root):
                if write_terminal(path, entry.pw_uid, text):
                    written.append(path)
        kept = None
        if self.spool is not None:
            record = {
                "at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat().replace("+00:00", "Z"),
                "level": notice.level,
                "title": title,
                "lines": list(notice.lines),
                "quota": quota,
                "container": name,
            }
            kept = self.spool.append(user, entry, record)
        workspace = None
        if facts is not None and getattr(facts, "workspace_mounted", False) and self.client is not None:
            workspace = self._append_in_container(facts.id, text, entry)
        return {"terminals": written, "file": kept, "workspace": workspace}

    # -- in the container ----------------------------------------------------------------------
    def _append_in_container(self, cid: str, text: str, entry: Any) -> Optional[str]:
        api = self.client.api
        old = b""
        try:
            stream, _stat = api.get_archive(cid, WORKSPACE_ALERTS)
            raw = b"".join(stream)
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                member = tar.next()
                if member is not None and member.isfile():
                    handle = tar.extractfile(member)
                    old = handle.read() if handle else b""
        except docker.NotFound:
            old = b""
        except (docker.APIError, tarfile.TarError) as exc:
            _log().info("no %s in %s: %s", WORKSPACE_ALERTS, cid[:12], exc)
            return None
        data = _append_capped(old, text.encode("utf-8"))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(ALERTS_NAME)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(self.clock())
            if entry is not None:
                info.uid, info.gid = entry.pw_uid, entry.pw_gid
            tar.addfile(info, io.BytesIO(data))
        try:
            ok = api.put_archive(cid, "/workspace", buf.getvalue())
        except (docker.APIError, docker.NotFound) as exc:
            _log().info("could not write %s in %s: %s", WORKSPACE_ALERTS, cid[:12], exc)
            return None
        return f"{cid[:12]}:{WORKSPACE_ALERTS}" if ok else None


# -- the spool ---------------------------------------------------------------------------------
NOTICES_DIR = "notices"
SPOOL_SUFFIX = ".jsonl"
# system.posix_acl_access, version 2: (tag, perm, id) entries; ACL_UNDEFINED_ID for the owner/group/mask/other.
_ACL_XATTR = "system.posix_acl_access"
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_UNDEFINED = 0xFFFFFFFF
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def reader_acl(uid: int) -> bytes:
    """The ACL ``u::rw-,u:<uid>:r--,g::---,m::r--,o::---`` in the kernel's xattr format."""
    entries = (
        (_ACL_USER_OBJ, 6, _ACL_UNDEFINED),
        (_ACL_USER, 4, uid),
        (_ACL_GROUP_OBJ, 0, _ACL_UNDEFINED),
        (_ACL_MASK, 4, _ACL_UNDEFINED),
        (_ACL_OTHER, 0, _ACL_UNDEFINED),
    )
    return struct.pack("<I", 2) + b"".join(_ACL_ENTRY.pack(*e) for e in entries)


def spool_dir(state_dir: str) -> str:
    return os.path.join(state_dir, NOTICES_DIR)


def spool_path(spool_dir: str, login: str) -> str:
    return os.path.join(spool_dir, login + SPOOL_SUFFIX)


class Spool:
    """Root-owned per-user notice files that only their user (and root) can read (module docstring). Each file
    keeps its last ``cap`` bytes (whole lines); ``event_views`` keeps its per-user event views the same way."""

    def __init__(self, directory: str, cap: int = MAX_FILE_BYTES) -> None:
        self.directory = directory
        self.cap = cap

    def append(self, login: str, entry: Any, record: dict) -> Optional[str]:
        """Appends ``record`` to ``login``'s spool; returns the file's path, or None (logged) when it cannot."""
        return self.append_many(login, entry, [record])

    def append_many(self, login: str, entry: Any, records: Sequence[dict]) -> Optional[str]:
        """Appends ``records`` (one JSON line each) to ``login``'s file in one rewrite; the file's path, or None
        (logged) when it cannot."""
        if not identity.valid_login(login) or login in (".", ".."):
            return None
        try:
            dir_fd = self._open_dir()
        except OSError as exc:
            _log().warning("notice spool %s cannot be used: %s", self.directory, exc)
            return None
        try:
            return self._append(dir_fd, login, entry, records)
        except OSError as exc:
            _log().warning("cannot keep a notice for %s in %s: %s", login, self.directory, exc)
            return None
        finally:
            os.close(dir_fd)

    def _open_dir(self) -> int:
        return open_root_dir(self.directory)

    def _append(self, dir_fd: int, login: str, entry: Any, records: Sequence[dict]) -> str:
        name = login + SPOOL_SUFFIX
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
                raise OSError(errno.EPERM, f"{name} is not a plain file of root's")
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "r+b") as handle:
                old = handle.read()
                lines = b"".join(
                    json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n" for record in records
                )
                data = _keep_last_lines(old, lines, self.cap)
                handle.seek(0)
                handle.write(data)
                handle.truncate()
            if entry is not None:
                self._share(fd, login, entry)
        finally:
            os.close(fd)
        return os.path.join(self.directory, name)

    def _share(self, fd: int, login: str, entry: Any) -> None:
        share_with(fd, login, entry, self.directory)


def open_root_dir(directory: str) -> int:
    """An ``O_DIRECTORY`` descriptor of ``directory`` (made ``0711`` when missing): it must be this process's
    (root's) and writable by it alone, so users can open their own file in it by name but not list or plant."""
    try:
        os.mkdir(directory, 0o711)
    except FileExistsError:
        pass
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise OSError(errno.EPERM, "the directory must be root's and writable by root only")
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.fchmod(fd, 0o711)
    return fd


def share_with(fd: int, login: str, entry: Any, where: str) -> None:
    """Let ``entry``'s user (``login``), and no one else but root, read the open file ``fd``: a POSIX ACL
    (``u:<uid>:r``), else the user's private group, else root-only with a warning naming ``where``."""
    try:
        os.fchmod(fd, 0o640)
        os.setxattr(fd, _ACL_XATTR, reader_acl(entry.pw_uid))
        if os.fstat(fd).st_gid != 0:
            os.fchown(fd, -1, 0)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENODATA):
            raise
    try:
        group = grp.getgrgid(entry.pw_gid)
    except KeyError:
        group = None
    if group is not None and group.gr_name == login and set(group.gr_mem) <= {login}:
        os.fchown(fd, -1, entry.pw_gid)
        os.fchmod(fd, 0o640)
        return
    os.fchmod(fd, 0o600)
    _log().warning(
        "the file system of %s has no POSIX ACLs and %s has no private group: their files there are kept "
        "root-only (mount it with ACLs, or give each user their own group)",
        where,
        login,
    )


def _keep_last_lines(old: bytes, new: bytes, cap: int) -> bytes:
    """``old + new`` less whole lines from the front until at most ``cap`` bytes are left (the last line stays
    even when it alone is longer)."""
    data = old + new
    if len(data) <= cap:
        return data
    start = len(data) - max(cap, 1)
    if data[start - 1 : start] != b"\n":
        cut = data.find(b"\n", start, len(data) - 1)
        start = cut + 1 if cut >= 0 else data.rfind(b"\n", 0, len(data) - 1) + 1
    return data[start:]


def read_spool(path: str, since: Optional[str] = None) -> list:
    """The notices in a spool file (oldest first), those after ``since`` (an ISO time) when given.
    A missing or unreadable file holds none; a damaged line is skipped."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("at"), str):
            continue
        if since is not None and record["at"] <= since:
            continue
        out.append(record)
    return out


def render_record(record: dict) -> str:
    """A spooled notice as its box (``render``), with the time it was sent."""
    lines = [str(x) for x in record.get("lines") or []]
    return render(str(record.get("level", "")), str(record.get("title", "")), lines, record.get("quota"), record["at"])


def _log() -> Any:
    import logging

    return logging.getLogger(__name__)
