"""The login greeting, pre-rendered by root so that a login runs no Python.

Who writes: the exporter (``ds01 exporter serve``, the ``ds01-exporter`` service) calls ``GreetingPass`` after each
snapshot refresh (every ``--cache-s`` seconds); at most every ``REFRESH_S`` it writes one file per user:

``<state_dir>/greetings/<login>``
    root's, in a root-owned ``0711`` directory (users open their own file by name, cannot list or plant
    anything), readable by that user alone through a POSIX ACL (``notify.share_with``, the same sharing as the
    notice spool). Lines:

    - the greeting to print as is (``observe.brief_line``: group, GPU and container usage against quota,
      memory, quota alerts);
    - ``@<ISO time>`` for each spooled notice of the last ``NOTICE_DAYS`` days (at most ``NOTICE_MAX``).

Who reads: ``/etc/profile.d/ds01-greeting.sh`` (``profile.render_greeting_script``), with ``find`` and ``awk``
only. It prints nothing when the file is missing, not root's, or older than ``STALE_MIN`` minutes (the exporter
is down), and says "N new notices: run `ds01 limits`" for the ``@`` times after the user's seen marker
``~/.local/state/ds01/notices-seen`` (written by ``ds01 limits``, which shows the notices).

Every login the snapshot knows (config members, container owners) and every ordinary account in passwd
(uid ``UID_MIN`` and up) gets a file; files of logins that are gone are removed.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import pwd
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from . import identity, logs, notify, quota_alerts
from . import observe as ob

log = logs.get(__name__)

GREETINGS_DIR = "greetings"
REFRESH_S = 60.0
STALE_MIN = 15
NOTICE_DAYS = 7
NOTICE_MAX = 10
UID_MIN = 1000  # Debian's login.defs: ordinary accounts
NOBODY_UID = 65534
SEEN_MARKER = ".local/state/ds01/notices-seen"  # under the user's home; written by `ds01 limits`


def greeting_dir(state_dir: str) -> str:
    return os.path.join(state_dir, GREETINGS_DIR)


def render(line: str, notice_times: Sequence[str]) -> str:
    """A greeting file's text: the line(s) to print, then one ``@<time>`` per recent notice."""
    lines = [x for x in line.splitlines() if x and not x.startswith("@")]
    return "".join(f"{x}\n" for x in lines) + "".join(f"@{t}\n" for t in notice_times)


def notice_times(state_dir: str, login: str, now: dt.datetime) -> list:
    """The times of ``login``'s spooled notices of the last ``NOTICE_DAYS`` days (at most ``NOTICE_MAX``)."""
    path = notify.spool_path(notify.spool_dir(state_dir), login)
    since = ob.iso(now - dt.timedelta(days=NOTICE_DAYS))
    return [n["at"] for n in notify.read_spool(path, since)[-NOTICE_MAX:]]


def greeting_for(config: Any, login: str, snap: Mapping[str, Any], now: dt.datetime) -> str:
    """``login``'s greeting file text from the exporter's snapshot (its holdings and slice usage)."""
    limits = (snap.get("_limits") or {}).get(login) or config.resolve(login)
    mine = [h for h in snap.get("_holdings") or [] if h.owner == login]
    report = ob.limits_report(
        limits,
        mine=mine,
        weights=ob.slot_weights(snap.get("_slot_table") or []),
        slice_usage=(snap.get("slices") or {}).get(login),
        alerts=quota_alerts.load_state(config.paths.state_dir, login),
        grant=None,
        exempt_bare_metal=False,
        now=now,
        source=str(snap.get("containers_source") or "none"),
    )
    return render(ob.brief_line(report), notice_times(config.paths.state_dir, login, now))


def logins(snap: Mapping[str, Any], accounts: Iterable[Any]) -> dict:
    """login → passwd entry for everyone who gets a greeting: the snapshot's users that have an account, and
    every ordinary account (uid ``UID_MIN`` and up, not nobody)."""
    by_name = {a.pw_name: a for a in accounts if identity.valid_login(a.pw_name)}
    wanted = {name for name, a in by_name.items() if UID_MIN <= a.pw_uid != NOBODY_UID}
    wanted |= {name for name in (snap.get("users") or {}) if name in by_name}
    return {name: by_name[name] for name in sorted(wanted)}


def _same(dir_fd: int, name: str, data: bytes) -> bool:
    """True (and the file's time renewed) when ``name`` is already root's plain file holding ``data``."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            return False
        if os.read(fd, len(data) + 1) != data:
            return False
        os.utime(fd)
        return True
    finally:
        os.close(fd)


def _write(dir_fd: int, directory: str, login: str, entry: Any, data: bytes) -> None:
    tmp = f".{login}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.write(fd, data)
            notify.share_with(fd, login, entry, directory)
        finally:
            os.close(fd)
        os.replace(tmp, login, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def write_all(
    config: Any,
    snap: Mapping[str, Any],
    now: dt.datetime,
    accounts: Callable[[], Iterable[Any]] = pwd.getpwall,
) -> dict:
    """Writes every user's greeting file. ``{"written": [login], "renewed": [login], "removed": [login],
    "errors": [str]}``; a failure for one user is logged and counted, the others go on."""
    directory = greeting_dir(config.paths.state_dir)
    out: dict = {"written": [], "renewed": [], "removed": [], "errors": []}
    dir_fd = notify.open_root_dir(directory)
    try:
        wanted = logins(snap, accounts())
        for login, entry in wanted.items():
            try:
                data = greeting_for(config, login, snap, now).encode("utf-8")
                if _same(dir_fd, login, data):
                    out["renewed"].append(login)
                else:
                    _write(dir_fd, directory, login, entry, data)
                    out["written"].append(login)
            except Exception as exc:  # noqa: BLE001 - one user's greeting must not stop the others'
                log.warning("cannot write the login greeting of %s: %s", login, exc)
                out["errors"].append(f"{login}: {type(exc).__name__}: {exc}")
        for name in os.listdir(dir_fd):
            if name in wanted or not identity.valid_login(name):
                continue
            try:
                os.unlink(name, dir_fd=dir_fd)
                out["removed"].append(name)
            except OSError as exc:
                out["errors"].append(f"{name}: {exc}")
    finally:
        os.close(dir_fd)
    return out


class GreetingPass:
    """The exporter's hook: ``write_all`` after a snapshot refresh, at most every ``REFRESH_S`` seconds."""

    __name__ = "greetings"

    def __init__(self, config: Any, refresh_s: float = REFRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.refresh_s = refresh_s
        self.clock = clock
        self.at: Optional[float] = None

    def __call__(self, snap: dict) -> None:
        if self.at is not None and self.clock() - self.at < self.refresh_s:
            return
        self.at = self.clock()
        report = write_all(self.config, snap, dt.datetime.now(dt.timezone.utc))
        if report["errors"]:
            ob.count_error(snap, "greetings")
