"""Reaching a container's owner where they are: their terminals, and a file they will find.

- **Terminals**: every login session of the user in utmp (``/var/run/utmp``, glibc x86_64 record
  layout, 384 bytes, read with ``struct``). Each ``/dev/pts/N`` or ``/dev/ttyN`` is opened with
  ``O_WRONLY | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW`` and written only when ``fstat`` of the open
  descriptor shows a character device owned by that user; a full terminal (EAGAIN) is skipped, not
  waited for. No ``wall``, no ``write(1)``, no subprocess.
- **A file**: when the container mounts ``/workspace``, the message is appended to
  ``/workspace/.ds01-alerts`` through the Docker archive API (``put_archive``; the file lands in
  the user's own workspace, owned by them, and survives the container's removal). Otherwise it is
  appended to ``~/.ds01-alerts`` on the host, opened relative to the home directory (which must
  lie under ``paths.home_roots`` and belong to the user) with ``O_NOFOLLOW``, and only written
  when it is a regular file owned by the user (a new one is created 0600 and given to them).
  Both files are capped (``MAX_FILE_BYTES``): the oldest messages go first.

The utmp path, the /dev root, the home roots and the passwd lookup are constructor arguments so
tests run against a temporary tree.
"""

from __future__ import annotations

import errno
import io
import os
import pwd
import re
import stat
import struct
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

UTMP_PATH = "/var/run/utmp"
DEV_ROOT = "/dev"
ALERTS_NAME = ".ds01-alerts"
WORKSPACE_ALERTS = "/workspace/" + ALERTS_NAME
MAX_FILE_BYTES = 64 * 1024
WIDTH = 72

# glibc <bits/utmp.h> on x86_64: ut_type (short) + pad, ut_pid, ut_line[32], ut_id[4],
# ut_user[32], ut_host[256], ut_exit {short, short}, ut_session (int32), ut_tv {int32, int32},
# ut_addr_v6[4] (int32), __glibc_reserved[20] — 384 bytes.
UTMP_RECORD = struct.Struct("<h2xi32s4s32s256shhiii4i20s")
USER_PROCESS = 7
_LINE_RE = re.compile(r"^(pts/\d{1,6}|tty\d{1,3})$")


@dataclass(frozen=True)
class Session:
    user: str
    line: str
    pid: int
    host: str
    login_time: float


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def read_sessions(path: str = UTMP_PATH) -> list:
    """The USER_PROCESS records of a utmp file (a missing file means nobody is logged in)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    sessions = []
    size = UTMP_RECORD.size
    for offset in range(0, len(data) - size + 1, size):
        ut_type, pid, line, _id, user, host, _e1, _e2, _sess, tv_sec, _tv_usec, *_rest = UTMP_RECORD.unpack_from(
            data, offset
        )
        if ut_type != USER_PROCESS:
            continue
        sessions.append(Session(_cstr(user), _cstr(line), pid, _cstr(host), float(tv_sec)))
    return sessions


def pack_session(user: str, line: str, pid: int = 1, host: str = "", ut_type: int = USER_PROCESS) -> bytes:
    """One utmp record (for tests and demos)."""
    return UTMP_RECORD.pack(
        ut_type,
        pid,
        line.encode()[:32],
        line[-4:].encode(),
        user.encode()[:32],
        host.encode()[:256],
        0,
        0,
        0,
        int(time.time()),
        0,
        0,
        0,
        0,
        0,
        b"",
    )


def terminals_of(user: str, utmp_path: str = UTMP_PATH, dev_root: str = DEV_ROOT) -> list:
    """Paths of the user's terminals named by utmp (``pts/N`` or ``ttyN`` only), without duplicates."""
    out: list = []
    for session in read_sessions(utmp_path):
        if session.user != user or not _LINE_RE.match(session.line):
            continue
        path = os.path.join(dev_root, session.line)
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
    """Delivers one notice to a user's terminals and to their alerts file (see module docstring)."""

    def __init__(
        self,
        docker_client: Any = None,
        *,
        utmp_path: str = UTMP_PATH,
        dev_root: str = DEV_ROOT,
        home_roots: Iterable[str] = ("/home",),
        passwd: Callable[[str], Any] = pwd.getpwnam,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = docker_client
        self.utmp_path = utmp_path
        self.dev_root = dev_root
        self.home_roots = tuple(os.path.realpath(r) for r in home_roots)
        self.passwd = passwd
        self.clock = clock

    def deliver(self, user: str, facts: Any, notice: Any, quota: Optional[str] = None) -> dict:
        """Returns ``{"terminals": [paths written], "file": where the message was kept or None}``."""
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.clock()))
        name = getattr(facts, "name", None)
        title = f"{notice.title}: {name}" if name else notice.title
        text = render(notice.level, title, notice.lines, quota, when)
        try:
            entry = self.passwd(user)
        except KeyError:
            entry = None
        written = []
        if entry is not None:
            for path in terminals_of(user, self.utmp_path, self.dev_root):
                if write_terminal(path, entry.pw_uid, text):
                    written.append(path)
        kept = None
        if facts is not None and getattr(facts, "workspace_mounted", False) and self.client is not None:
            kept = self._append_in_container(facts.id, text, entry)
        if kept is None and entry is not None:
            kept = self._append_home(entry, text)
        return {"terminals": written, "file": kept}

    # -- in the container ----------------------------------------------------------------------
    def _append_in_container(self, cid: str, text: str, entry: Any) -> Optional[str]:
        from docker.errors import APIError, NotFound

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
        except NotFound:
            old = b""
        except (APIError, tarfile.TarError) as exc:
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
        except (APIError, NotFound) as exc:
            _log().info("could not write %s in %s: %s", WORKSPACE_ALERTS, cid[:12], exc)
            return None
        return f"{cid[:12]}:{WORKSPACE_ALERTS}" if ok else None

    # -- in the home directory on the host ------------------------------------------------------
    def _append_home(self, entry: Any, text: str) -> Optional[str]:
        home = entry.pw_dir
        real = os.path.realpath(home)
        if not any(real == root or real.startswith(root + os.sep) for root in self.home_roots):
            return None
        try:
            dir_fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            if os.fstat(dir_fd).st_uid != entry.pw_uid:
                return None
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(ALERTS_NAME, flags, 0o600, dir_fd=dir_fd)
            except OSError:
                return None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    return None
                if st.st_uid != entry.pw_uid:
                    if st.st_uid == os.geteuid() and st.st_size == 0:
                        os.fchown(fd, entry.pw_uid, entry.pw_gid)  # just created by us: give it to them
                    else:
                        return None
                with os.fdopen(os.dup(fd), "r+b") as handle:
                    old = handle.read()
                    data = _append_capped(old, text.encode("utf-8"))
                    handle.seek(0)
                    handle.write(data)
                    handle.truncate()
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)
        return os.path.join(home, ALERTS_NAME)


def _log() -> Any:
    import logging

    return logging.getLogger(__name__)
