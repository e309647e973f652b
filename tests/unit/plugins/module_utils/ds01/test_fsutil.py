"""The one atomic-replace helper: readers see the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import fsutil


def test_replace_mode_and_no_leftovers(tmp_path):
    target = tmp_path / "deep" / "state.json"
    fsutil.atomic_write_json(str(target), {"b": 1, "a": [1, 2]}, mode=0o600, fsync=True)
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert target.read_text().endswith("\n")
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    inode = target.stat().st_ino
    fsutil.atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new" and target.stat().st_ino != inode  # replaced, not rewritten in place
    assert sorted(os.listdir(target.parent)) == ["state.json"]


def test_failure_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    (tmp_path / "blocker").mkdir()
    with pytest.raises(IsADirectoryError):
        fsutil.atomic_write(str(tmp_path / "blocker"), "x")  # rename over a directory fails
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["blocker", "state.json"]


def test_owner_is_set_when_root(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("make test runs as root; chown needs it")
    target = tmp_path / "mine.json"
    fsutil.atomic_write(str(target), "{}", uid=65534)
    assert target.stat().st_uid == 65534


# The one lock-file helper. The holder is another process (flock is per open file description, and a lock
# held in this process would be shared by a second open of the same file only across processes).


def _hold_in_child(path, ready_w, release_r, parent_ends):
    """Fork a child that takes the lock, says so on ``ready_w`` and keeps it until ``release_r`` closes."""
    pid = os.fork()
    if pid == 0:  # the child: hold the lock, never return into pytest
        code = 1
        try:
            for fd in parent_ends:  # else the child's own copy of the write end keeps the pipe open
                os.close(fd)
            lock = fsutil.FileLock(path)
            lock.acquire(None, note="child")
            os.write(ready_w, b"x")
            os.read(release_r, 1)  # EOF when the parent closes its end
            code = 0
        finally:
            os._exit(code)
    return pid


@pytest.fixture
def held(tmp_path):
    """(path, release) with the lock held by a child process until ``release()``."""
    path = str(tmp_path / "run" / "x.lock")
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = _hold_in_child(path, ready_w, release_r, (ready_r, release_w))
    os.close(ready_w)
    os.close(release_r)
    assert os.read(ready_r, 1) == b"x"
    state = {"open": True}

    def release():
        if state["open"]:
            os.close(release_w)
            state["open"] = False
            os.waitpid(pid, 0)

    yield path, release
    release()
    os.close(ready_r)


def test_lock_is_exclusive_across_processes_and_free_once_the_holder_is_gone(held):
    path, release = held
    lock = fsutil.FileLock(path)
    assert lock.acquire(0) is False and not lock.held and not lock.acquired
    assert lock.acquire(0.05, poll_s=0.01) is False  # polled, then gave up
    assert lock.holder() == "child"
    release()  # the child exits: the kernel drops its lock with its descriptor
    assert lock.acquire(0) is True and lock.held
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    lock.release()
    assert not lock.held


def test_lock_as_context_manager_reports_acquired(held, tmp_path):
    path, release = held
    with fsutil.FileLock(path, wait_s=0) as busy:
        assert busy.acquired is False
    release()
    with fsutil.FileLock(path, wait_s=0) as lock:
        assert lock.acquired is True
        with fsutil.FileLock(path, wait_s=0) as second:  # another open file description: refused
            assert second.acquired is False
    with fsutil.FileLock(str(tmp_path / "free.lock"), mode=0o644) as blocking:  # wait_s None: blocks until held
        assert blocking.acquired
    assert oct(os.stat(tmp_path / "free.lock").st_mode & 0o777) == "0o644"


def test_lock_error_other_than_busy_is_raised(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):  # its directory is a plain file
        fsutil.FileLock(str(tmp_path / "file" / "x.lock")).acquire(0)
