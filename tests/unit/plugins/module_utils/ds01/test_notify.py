"""Notices reach the owner's own terminals only, and a file they own; nothing else is written."""

from __future__ import annotations

import errno
import logging
import os
import pwd
import stat
from types import SimpleNamespace

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import lifecycle as lc
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import notify

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another uid (chown)")
TEST_UID = 4321  # a uid that is nobody's on this machine: the "test user" a terminal is given to
NOTICE = lc.Notice("WARNING", "IDLE CONTAINER WARNING", ("Your GPU container train will be stopped.", "Why: idle."))


def sessions_of(table):
    """A sessions source (``login -> TTY names``) from a dict: what logind would answer."""
    return lambda login: list(table.get(login, []))


# -- logind, the real library (no logind runs on this machine) ---------------------------------------


def test_logind_adapter_answers_no_sessions_when_logind_is_not_running(caplog):
    caplog.set_level(logging.DEBUG, logger=notify.__name__)
    logind = notify.Logind()
    assert logind._load() is not None  # the real libsystemd.so.0 loads and has the sd-login calls
    assert logind._lib.sd_booted() == 0 and logind.running() is False
    assert logind.ttys("root") == [] and notify.logind_ttys("root") == []
    assert "logind is not running" in caplog.text


def test_logind_adapter_reads_the_real_library_without_errors():
    logind = notify.Logind()
    logind._load()
    # No /run/systemd/users/<uid> here: sd-login reports zero sessions, which is not an error.
    assert logind.sessions(os.getuid()) == []
    assert logind._string("sd_session_get_tty", "c4242") is None  # no such session


def test_a_negative_errno_from_sd_login_is_logged_and_means_no_sessions(caplog):
    logind = notify.Logind()
    logind._load()
    caplog.set_level(logging.INFO, logger=notify.__name__)
    # An invalid session id: the real library answers -EINVAL.
    assert logind._string("sd_session_get_tty", "../etc") is None
    assert "sd_session_get_tty(../etc)" in caplog.text and os.strerror(errno.EINVAL) in caplog.text


def test_missing_libsystemd_means_no_terminals_but_the_notice_is_still_spooled(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=notify.__name__)
    logind = notify.Logind(library="libsystemd-absent.so.0")
    assert logind.running() is False and logind.ttys("root") == []
    assert "no libsystemd-absent.so.0" in caplog.text
    spool = tmp_path / "notices"
    entry = SimpleNamespace(pw_uid=os.getuid(), pw_gid=os.getgid(), pw_dir="/nonexistent")
    notifier = notify.Notifier(None, spool_dir=str(spool), sessions=logind.ttys, passwd=lambda u: entry)
    result = notifier.deliver("alice", None, NOTICE)
    assert result["terminals"] == [] and result["file"] == str(spool / "alice.jsonl")
    assert [r["title"] for r in notify.read_spool(result["file"])] == [NOTICE.title]


def test_the_notifier_asks_logind_by_default():
    assert notify.Notifier().sessions is notify.logind_ttys


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
        ("", False),
    ],
)
def test_only_pts_and_tty_lines_become_paths(line, accepted):
    assert notify.terminal_paths([line], "/dev") == ([os.path.join("/dev", line)] if accepted else [])


def test_a_terminal_named_twice_is_one_path():
    assert notify.terminal_paths(["pts/3", "tty1", "pts/3"], "/dev") == ["/dev/pts/3", "/dev/tty1"]


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
    os.chown(path, TEST_UID, -1)  # the pty is the test user's, as login gives a terminal to its user
    line = os.path.relpath(path, "/dev")
    entry = SimpleNamespace(pw_uid=TEST_UID, pw_gid=TEST_UID, pw_dir=str(tmp_path / "nohome"))
    sessions = sessions_of({"someone": ["pts/999999x", line, line]})  # a name that is no terminal is skipped
    notifier = notify.Notifier(None, sessions=sessions, dev_root="/dev", passwd=lambda u: entry)
    result = notifier.deliver("someone", None, NOTICE, "GPUs: 1/2 gpueq | Containers: 1/3")
    assert result["terminals"] == [path]
    text = _read(master)
    assert "[WARNING] IDLE CONTAINER WARNING" in text and "GPUs: 1/2 gpueq | Containers: 1/3" in text
    assert "\r\n" in text  # a terminal in raw mode still shows lines


def test_terminal_owned_by_someone_else_is_not_written(tmp_path, pty):
    master, path = pty
    sessions = sessions_of({"mallory": [os.path.relpath(path, "/dev")]})
    # the source claims mallory is on this terminal, but the device belongs to another uid
    entry = SimpleNamespace(pw_uid=os.stat(path).st_uid + 4242, pw_gid=0, pw_dir="/nonexistent")
    notifier = notify.Notifier(None, sessions=sessions, dev_root="/dev", passwd=lambda u: entry)
    assert notifier.deliver("mallory", None, NOTICE)["terminals"] == []
    assert _read(master) == ""


def test_symlinks_and_regular_files_under_dev_are_refused(tmp_path, pty):
    master, path = pty
    dev = tmp_path / "dev"
    (dev / "pts").mkdir(parents=True)
    os.symlink(path, dev / "pts" / "5")  # a symlink to a real terminal: O_NOFOLLOW refuses it
    (dev / "tty7").write_text("")  # a regular file: not a character device
    os.chown(dev / "tty7", os.getuid(), -1)
    sessions = sessions_of({"root": ["pts/5", "tty7"]})
    entry = SimpleNamespace(pw_uid=os.stat(path).st_uid, pw_gid=0, pw_dir="/nonexistent")
    notifier = notify.Notifier(None, sessions=sessions, dev_root=str(dev), passwd=lambda u: entry)
    assert notifier.deliver("root", None, NOTICE)["terminals"] == []
    assert _read(master) == "" and (dev / "tty7").read_text() == ""


def test_other_users_sessions_are_ignored(tmp_path, pty):
    master, path = pty
    sessions = sessions_of({"bob": [os.path.relpath(path, "/dev")]})
    entry = SimpleNamespace(pw_uid=os.stat(path).st_uid, pw_gid=0, pw_dir="/nonexistent")
    notifier = notify.Notifier(None, sessions=sessions, dev_root="/dev", passwd=lambda u: entry)
    assert notifier.deliver("alice", None, NOTICE)["terminals"] == []
    assert _read(master) == ""


def _spool(tmp_path, uid=4321, gid=4321):
    spool = tmp_path / "state" / "notices"
    (tmp_path / "state").mkdir()
    entry = SimpleNamespace(pw_uid=uid, pw_gid=gid, pw_dir="/nonexistent")
    notifier = notify.Notifier(None, spool_dir=str(spool), sessions=sessions_of({}), passwd=lambda u: entry)
    return spool, notifier


def _acl_readers(path) -> set:
    """The uids a file's ACL names (ACL_USER entries), read back from the kernel's xattr."""
    raw = os.getxattr(path, "system.posix_acl_access")
    entries = [notify._ACL_ENTRY.unpack_from(raw, off) for off in range(4, len(raw), notify._ACL_ENTRY.size)]
    return {(ident, perm) for tag, perm, ident in entries if tag == 0x02}


@pytest.mark.root
@needs_root
def test_every_notice_is_spooled_root_owned_and_readable_by_its_user_only(tmp_path):
    spool, notifier = _spool(tmp_path)
    first = notifier.deliver("alice", None, NOTICE, "GPUs: 0/2 gpueq")
    notifier.deliver("alice", None, NOTICE)
    path = spool / "alice.jsonl"
    assert first["file"] == str(path)
    st, dst = os.stat(path), os.stat(spool)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o640)  # group bits: the ACL mask
    assert (dst.st_uid, stat.S_IMODE(dst.st_mode)) == (0, 0o711)
    assert _acl_readers(path) == {(4321, 4)}  # r-- for alice's uid, nobody else
    records = notify.read_spool(str(path))
    assert [r["title"] for r in records] == [NOTICE.title] * 2
    assert records[0]["quota"] == "GPUs: 0/2 gpueq" and records[0]["lines"] == list(NOTICE.lines)
    assert "IDLE CONTAINER WARNING" in notify.render_record(records[0])


@pytest.mark.root
@needs_root
def test_a_planted_spool_file_or_directory_is_not_used(tmp_path):
    spool, notifier = _spool(tmp_path)
    spool.mkdir(mode=0o711)
    target = tmp_path / "victim"
    target.write_text("precious\n")
    os.symlink(target, spool / "alice.jsonl")
    assert notifier.deliver("alice", None, NOTICE)["file"] is None
    os.unlink(spool / "alice.jsonl")
    os.link(target, spool / "alice.jsonl")  # a hard link to another file
    assert notifier.deliver("alice", None, NOTICE)["file"] is None
    assert target.read_text() == "precious\n"
    os.unlink(spool / "alice.jsonl")
    os.chmod(spool, 0o777)  # a directory others could write into is not trusted
    assert notifier.deliver("alice", None, NOTICE)["file"] is None
    assert not (spool / "alice.jsonl").exists()


def test_a_login_that_is_not_a_name_gets_no_spool_file(tmp_path):
    spool, notifier = _spool(tmp_path, uid=os.getuid(), gid=os.getgid())
    assert notifier.deliver("../etc/passwd", None, NOTICE)["file"] is None
    assert not spool.exists() or os.listdir(spool) == []


def test_reading_skips_damaged_lines_and_older_notices(tmp_path):
    path = tmp_path / "alice.jsonl"
    path.write_text(
        '{"at": "2026-11-01T10:00:00Z", "level": "NOTICE", "title": "old", "lines": []}\n'
        "not json\n"
        '["a list"]\n'
        '{"at": "2026-11-02T10:00:00Z", "level": "ALERT", "title": "new", "lines": ["x"]}\n'
    )
    assert [r["title"] for r in notify.read_spool(str(path))] == ["old", "new"]
    assert [r["title"] for r in notify.read_spool(str(path), since="2026-11-01T10:00:00Z")] == ["new"]
    assert notify.read_spool(str(tmp_path / "missing.jsonl")) == []


def test_spool_is_capped_keeping_the_newest_notices(tmp_path):
    spool, notifier = _spool(tmp_path, uid=os.getuid(), gid=os.getgid())
    for _i in range(400):
        notifier.deliver("alice", None, NOTICE)
    path = spool / "alice.jsonl"
    assert os.path.getsize(path) <= notify.MAX_FILE_BYTES
    records = notify.read_spool(str(path))
    assert len(records) > 10 and all(r["title"] == NOTICE.title for r in records)


def test_unknown_user_gets_no_terminal_and_no_spool_file(tmp_path):
    def no_user(name):
        raise KeyError(name)

    notifier = notify.Notifier(None, sessions=sessions_of({"ghost": ["pts/0"]}), passwd=no_user)
    assert notifier.deliver("ghost", None, NOTICE) == {"terminals": [], "file": None, "workspace": None}


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
