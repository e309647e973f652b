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
