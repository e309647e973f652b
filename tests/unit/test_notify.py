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
    notifier = notify.Notifier(None, utmp_path=str(utmp), dev_root="/dev", passwd=lambda u: entry)
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


def _spool(tmp_path, uid=4321, gid=4321):
    spool = tmp_path / "state" / "notices"
    (tmp_path / "state").mkdir()
    entry = SimpleNamespace(pw_uid=uid, pw_gid=gid, pw_dir="/nonexistent")
    notifier = notify.Notifier(None, spool_dir=str(spool), utmp_path=str(tmp_path / "none"), passwd=lambda u: entry)
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

    notifier = notify.Notifier(None, utmp_path=str(tmp_path / "none"), passwd=no_user)
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
