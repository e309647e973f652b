"""Notices reach the owner's own terminals only, and a file they own; nothing else is written."""

from __future__ import annotations

import os
import pwd
import stat
from types import SimpleNamespace

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import lifecycle as lc
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import notify

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another uid (chown)")
NOTICE = lc.Notice("WARNING", "IDLE CONTAINER WARNING", ("Your GPU container train will be stopped.", "Why: idle."))


def write_utmp(path, records):
    with open(path, "wb") as handle:
        for rec in records:
            handle.write(notify.pack_session(*rec))


def test_utmp_record_is_glibc_x86_64_size():
    assert notify.UTMP_RECORD.size == 384


def test_read_sessions_keeps_user_processes_only(tmp_path):
    utmp = tmp_path / "utmp"
    write_utmp(
        utmp,
        [
            ("alice", "pts/3", 100, "10.0.0.1"),
            ("LOGIN", "tty1", 5, "", 6),  # LOGIN_PROCESS
            ("bob", "tty2", 7),
            ("", "pts/9", 0, "", 8),  # DEAD_PROCESS
        ],
    )
    sessions = notify.read_sessions(str(utmp))
    assert [(s.user, s.line, s.pid, s.host) for s in sessions] == [
        ("alice", "pts/3", 100, "10.0.0.1"),
        ("bob", "tty2", 7, ""),
    ]


def test_missing_utmp_means_nobody_is_logged_in(tmp_path):
    assert notify.read_sessions(str(tmp_path / "nope")) == []


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        ("pts/0", True),
        ("pts/17", True),
        ("tty3", True),
        ("../etc/passwd", False),
        ("pts/../../etc/shadow", False),
        (":0", False),
        ("console", False),
        ("pts/1x", False),
    ],
)
def test_only_pts_and_tty_lines_become_paths(tmp_path, line, accepted):
    utmp = tmp_path / "utmp"
    write_utmp(utmp, [("alice", line, 1)])
    assert notify.terminals_of("alice", str(utmp), "/dev") == ([os.path.join("/dev", line)] if accepted else [])


@pytest.fixture
def pty():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield master, path
    os.close(master)
    os.close(slave)


def _read(master):
    os.set_blocking(master, False)
    try:
        return os.read(master, 65536).decode()
    except BlockingIOError:
        return ""


def test_writes_to_the_users_own_terminal(tmp_path, pty):
    master, path = pty
    owner = os.stat(path).st_uid
    utmp = tmp_path / "utmp"
    line = os.path.relpath(path, "/dev")
    write_utmp(utmp, [("someone", line, 1)])
    entry = SimpleNamespace(pw_uid=owner, pw_gid=0, pw_dir=str(tmp_path / "nohome"))
    notifier = notify.Notifier(
        None, utmp_path=str(utmp), dev_root="/dev", home_roots=(str(tmp_path),), passwd=lambda u: entry
    )
    result = notifier.deliver("someone", None, NOTICE, "GPUs: 1/2 gpueq | Containers: 1/3")
    assert result["terminals"] == [path]
    text = _read(master)
    assert "[WARNING] IDLE CONTAINER WARNING" in text and "GPUs: 1/2 gpueq | Containers: 1/3" in text
    assert "\r\n" in text  # a terminal in raw mode still shows lines


def test_terminal_owned_by_someone_else_is_not_written(tmp_path, pty):
    master, path = pty
    utmp = tmp_path / "utmp"
    write_utmp(utmp, [("mallory", os.path.relpath(path, "/dev"), 1)])
    # utmp claims mallory is on this terminal, but the device belongs to another uid
    entry = SimpleNamespace(pw_uid=os.stat(path).st_uid + 4242, pw_gid=0, pw_dir="/nonexistent")
    notifier = notify.Notifier(None, utmp_path=str(utmp), dev_root="/dev", passwd=lambda u: entry)
    assert notifier.deliver("mallory", None, NOTICE)["terminals"] == []
    assert _read(master) == ""


def test_symlinks_and_regular_files_under_dev_are_refused(tmp_path, pty):
    master, path = pty
    dev = tmp_path / "dev"
    (dev / "pts").mkdir(parents=True)
    os.symlink(path, dev / "pts" / "5")  # a symlink to a real terminal: O_NOFOLLOW refuses it
    (dev / "tty7").write_text("")  # a regular file: not a character device
    os.chown(dev / "tty7", os.getuid(), -1)
    utmp = tmp_path / "utmp"
    write_utmp(utmp, [("root", "pts/5", 1), ("root", "tty7", 2)])
    entry = SimpleNamespace(pw_uid=os.stat(path).st_uid, pw_gid=0, pw_dir="/nonexistent")
    notifier = notify.Notifier(None, utmp_path=str(utmp), dev_root=str(dev), passwd=lambda u: entry)
    assert notifier.deliver("root", None, NOTICE)["terminals"] == []
    assert _read(master) == "" and (dev / "tty7").read_text() == ""


def test_other_users_sessions_are_ignored(tmp_path, pty):
    master, path = pty
    utmp = tmp_path / "utmp"
    write_utmp(utmp, [("bob", os.path.relpath(path, "/dev"), 1)])
    entry = SimpleNamespace(pw_uid=os.stat(path).st_uid, pw_gid=0, pw_dir="/nonexistent")
    notifier = notify.Notifier(None, utmp_path=str(utmp), dev_root="/dev", passwd=lambda u: entry)
    assert notifier.deliver("alice", None, NOTICE)["terminals"] == []
    assert _read(master) == ""


def _home(tmp_path, uid=None):
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    uid = os.getuid() if uid is None else uid
    os.chown(home, uid, -1)
    return home, SimpleNamespace(pw_uid=uid, pw_gid=os.getgid(), pw_dir=str(home))


@pytest.mark.root
@needs_root
def test_home_file_is_appended_and_owned_by_the_user(tmp_path):
    home, entry = _home(tmp_path, uid=4321)
    notifier = notify.Notifier(
        None, utmp_path=str(tmp_path / "none"), home_roots=(str(tmp_path / "home"),), passwd=lambda u: entry
    )
    first = notifier.deliver("alice", None, NOTICE, "GPUs: 0/2 gpueq")
    notifier.deliver("alice", None, NOTICE)
    path = home / ".ds01-alerts"
    assert first["file"] == str(path)
    st = os.stat(path)
    assert st.st_uid == 4321 and stat.S_IMODE(st.st_mode) == 0o600
    assert path.read_text().count("IDLE CONTAINER WARNING") == 2


def test_home_file_symlink_is_not_followed(tmp_path):
    home, entry = _home(tmp_path)
    target = tmp_path / "victim"
    target.write_text("precious\n")
    os.symlink(target, home / ".ds01-alerts")
    notifier = notify.Notifier(
        None, utmp_path=str(tmp_path / "none"), home_roots=(str(tmp_path / "home"),), passwd=lambda u: entry
    )
    assert notifier.deliver("alice", None, NOTICE)["file"] is None
    assert target.read_text() == "precious\n"


def test_home_file_hard_link_is_refused(tmp_path):
    home, entry = _home(tmp_path)
    target = tmp_path / "home" / "victim"
    target.write_text("precious\n")
    os.link(target, home / ".ds01-alerts")
    notifier = notify.Notifier(
        None, utmp_path=str(tmp_path / "none"), home_roots=(str(tmp_path / "home"),), passwd=lambda u: entry
    )
    assert notifier.deliver("alice", None, NOTICE)["file"] is None
    assert target.read_text() == "precious\n"


@pytest.mark.root
@needs_root
def test_home_outside_the_home_roots_or_not_theirs_gets_nothing(tmp_path):
    home, entry = _home(tmp_path, uid=4321)
    outside = notify.Notifier(
        None, utmp_path=str(tmp_path / "none"), home_roots=("/srv/homes",), passwd=lambda u: entry
    )
    assert outside.deliver("alice", None, NOTICE)["file"] is None
    not_theirs = SimpleNamespace(pw_uid=9999, pw_gid=0, pw_dir=str(home))
    wrong = notify.Notifier(
        None, utmp_path=str(tmp_path / "none"), home_roots=(str(tmp_path / "home"),), passwd=lambda u: not_theirs
    )
    assert wrong.deliver("alice", None, NOTICE)["file"] is None
    assert not (home / ".ds01-alerts").exists()


def test_unknown_user_gets_no_terminal_and_no_home_file(tmp_path):
    def no_user(name):
        raise KeyError(name)

    notifier = notify.Notifier(None, utmp_path=str(tmp_path / "none"), passwd=no_user)
    assert notifier.deliver("ghost", None, NOTICE) == {"terminals": [], "file": None}


def test_alerts_file_is_capped_keeping_the_newest_messages():
    box = notify.render("NOTICE", "x", ["y" * 50]).encode()
    data = b""
    for _i in range(3000):
        data = notify._append_capped(data, box)
    assert len(data) <= notify.MAX_FILE_BYTES and data.startswith(b"=" * notify.WIDTH) and data.endswith(box)


def test_render_has_title_body_and_quota():
    text = notify.render("ALERT", "FINAL IDLE WARNING", ["Your container x will be stopped at 10:00."], "GPUs: 1/2")
    assert "[ALERT] FINAL IDLE WARNING" in text and "will be stopped at 10:00." in text
    assert "Your usage: GPUs: 1/2" in text


def test_real_passwd_lookup_is_the_default():
    assert notify.Notifier().passwd is pwd.getpwnam
